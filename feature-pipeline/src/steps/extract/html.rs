//! HTML to a document: the page's main content as clean markdown, plus its title and language.
//!
//! Crawled pages and local HTML files both come through here. The main content is found by
//! `dom_smoothie` (a port of Mozilla's Readability, the algorithm behind Firefox's reader view),
//! which drops navigation, cookie banners, sidebars and footers; `htmd` (a turndown-style
//! converter over html5ever) turns what is left into markdown. When Readability finds no article
//! (a page of links, an app shell) the whole body is converted instead, and the quality score
//! judges the result. A page nested deeper than any person writes is read as plain text
//! ([`super::html_nesting`]): the recursive readers would overflow their stack on it.

use dom_smoothie::{Config, Readability};
use htmd::HtmlToMarkdown;
use htmd::options::{BulletListMarker, Options};

use super::{html_nesting, markdown};

/// What was extracted from one HTML page.
#[derive(Debug, Clone, PartialEq)]
pub struct HtmlPage {
    /// The page's title (`<title>`, or what Readability chose from its metadata).
    pub title: String,
    /// The main content as markdown.
    pub markdown: String,
    /// The language the page declares, if any.
    pub lang: Option<String>,
    /// The author line, if any.
    pub byline: Option<String>,
    /// The site's name, if the page says.
    pub site_name: Option<String>,
    /// `readability` when the main content was found, `full-page` when the whole body was used,
    /// `text-only …` when the page nests too deep to read as HTML.
    pub extraction: &'static str,
}

fn converter() -> HtmlToMarkdown {
    let options = Options {
        bullet_list_marker: BulletListMarker::Dash,
        ul_bullet_spacing: 1,
        ol_number_spacing: 1,
        ..Options::default()
    };
    HtmlToMarkdown::builder()
        .options(options)
        .skip_tags(vec![
            "script", "style", "noscript", "iframe", "form", "button", "svg", "img", "picture", "video", "audio",
            "canvas", "nav", "footer",
        ])
        .build()
}

/// Stack for the recursive readers: the nesting limit counts only elements a page must close, and
/// the HTML parser nests more (a table's implied rows and cells), so they run on a thread with room
/// to spare (reserved, not used, until needed).
const READER_STACK: usize = 256 << 20;

/// Extracts the main content of `html`, fetched from `url` (used to resolve relative links).
pub fn extract(html: &str, url: &str) -> HtmlPage {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("html-reader".into())
            .stack_size(READER_STACK)
            .spawn_scoped(scope, || read(html, url))
            .ok()
            .and_then(|reader| reader.join().ok())
    })
    .unwrap_or_else(|| text_only(html, "text-only (the HTML reader failed)"))
}

/// The page as plain text, for pages the HTML readers cannot take.
fn text_only(html: &str, extraction: &'static str) -> HtmlPage {
    let (text, title) = html_nesting::text_and_title(html);
    HtmlPage {
        title,
        markdown: markdown::clean(&text),
        lang: None,
        byline: None,
        site_name: None,
        extraction,
    }
}

fn read(html: &str, url: &str) -> HtmlPage {
    if html_nesting::depth(html) > html_nesting::MAX_DEPTH {
        return text_only(html, "text-only (nested too deep for HTML)");
    }
    let config = Config {
        // Keep short articles: notes and small pages are what people save.
        char_threshold: 200,
        ..Config::default()
    };
    let article = Readability::new(html, Some(url), Some(config)).and_then(|mut r| r.parse());
    let converter = converter();
    match article {
        Ok(article) if !article.text_content.trim().is_empty() => {
            let body = converter.convert(&article.content).unwrap_or_default();
            HtmlPage {
                title: article.title.trim().to_string(),
                markdown: markdown::clean(&body),
                lang: article.lang,
                byline: article.byline,
                site_name: article.site_name,
                extraction: "readability",
            }
        }
        _ => {
            let body = converter.convert(html).unwrap_or_default();
            HtmlPage {
                title: fallback_title(html, url),
                markdown: markdown::clean(&body),
                lang: None,
                byline: None,
                site_name: None,
                extraction: "full-page",
            }
        }
    }
}

/// The `<title>` of a page Readability could not parse.
fn fallback_title(html: &str, url: &str) -> String {
    Readability::new(html, Some(url), None)
        .map(|r| r.get_article_title().trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"<!doctype html><html lang="en"><head><title>Brine ratios | Kitchen Notes</title></head>
<body><header><nav><a href="/">Home</a> <a href="/about">About</a> <a href="/shop">Shop</a></nav></header>
<div class="cookie-banner">We use cookies. <button>Accept all</button></div>
<main><article><h1>Brine ratios</h1>
<p>A wet brine for pork chops is 5 percent salt by weight of the water: 50 grams of salt per litre. Chops
need four to six hours; a whole chicken needs twelve. Longer than that and the texture turns ham-like.</p>
<h2>Sugar</h2><p>Sugar is optional. Half the salt's weight in brown sugar helps browning, and the chops
caramelise faster in the pan, so lower the heat a little when you sear them after brining.</p>
<ul><li>Rinse after brining</li><li>Pat dry before searing</li></ul>
<pre><code>salt_g = water_ml * 0.05</code></pre></article></main>
<aside><h3>Related</h3><a href="/a">Dry brining</a></aside>
<footer>© 2026 Kitchen Notes. All rights reserved. <form>Subscribe <input name=email></form></footer>
</body></html>"#;

    #[test]
    fn keeps_the_article_and_drops_the_chrome() {
        let page = extract(PAGE, "http://kitchen.test/brine");
        assert_eq!(page.extraction, "readability");
        assert!(page.title.contains("Brine ratios"), "{}", page.title);
        assert!(
            page.markdown.contains("50 grams of salt per litre"),
            "{}",
            page.markdown
        );
        assert!(page.markdown.contains("- Rinse after brining"), "{}", page.markdown);
        assert!(page.markdown.contains("```"), "{}", page.markdown);
        for chrome in ["Accept all", "All rights reserved", "Subscribe", "About"] {
            assert!(
                !page.markdown.contains(chrome),
                "{chrome:?} left in:\n{}",
                page.markdown
            );
        }
        assert_eq!(page.lang.as_deref(), Some("en"));
    }

    #[test]
    fn a_page_without_an_article_falls_back_to_its_body() {
        let page = extract(
            "<html><head><title>Links</title></head><body><p><a href='/x'>x</a></p></body></html>",
            "http://t.test/",
        );
        assert_eq!(page.title, "Links");
        assert!(page.markdown.contains("[x]"), "{}", page.markdown);
    }
}
