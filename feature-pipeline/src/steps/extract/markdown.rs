//! Clean markdown: the one form every extractor's content ends in.
//!
//! Notion exports, local markdown files and HTML converted by `html.rs` all pass through here:
//! line endings and blank lines are normalised, and links are found (and, for Notion's relative
//! links between pages, rewritten) with a real CommonMark parser, `pulldown-cmark`, rather than
//! patterns that break on nested brackets or code spans.

use std::ops::Range;

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

/// A link or image found in markdown.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    /// Where it points, as written (still percent-encoded).
    pub destination: String,
    /// Its text (an image's alt text).
    pub text: String,
    /// Whether it is an image.
    pub image: bool,
    /// Its byte range in the source.
    pub range: Range<usize>,
}

impl Link {
    /// Whether it points to the web (http or https).
    pub fn is_web(&self) -> bool {
        let lower = self.destination.to_ascii_lowercase();
        lower.starts_with("http://") || lower.starts_with("https://")
    }
}

fn parser_options() -> Options {
    Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS
}

/// Every link and image in `markdown`, in order.
pub fn links(markdown: &str) -> Vec<Link> {
    let mut found = Vec::new();
    // Open links: their index in `found`; text events append to the innermost.
    let mut open: Vec<usize> = Vec::new();
    for (event, range) in Parser::new_ext(markdown, parser_options()).into_offset_iter() {
        match event {
            Event::Start(Tag::Link { dest_url, .. }) | Event::Start(Tag::Image { dest_url, .. }) => {
                let image = markdown[range.clone()].starts_with('!');
                found.push(Link {
                    destination: dest_url.to_string(),
                    text: String::new(),
                    image,
                    range,
                });
                open.push(found.len() - 1);
            }
            Event::End(TagEnd::Link) | Event::End(TagEnd::Image) => {
                open.pop();
            }
            Event::Text(text) | Event::Code(text) => {
                if let Some(&index) = open.last() {
                    found[index].text.push_str(&text);
                }
            }
            _ => {}
        }
    }
    found
}

/// The distinct web links of `markdown`, without fragments, in order of first appearance.
pub fn web_links(markdown: &str) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for link in links(markdown).into_iter().filter(|l| l.is_web() && !l.image) {
        let Ok(mut url) = url::Url::parse(&link.destination) else {
            continue;
        };
        url.set_fragment(None);
        let url = url.to_string();
        if seen.insert(url.clone()) {
            out.push(url);
        }
    }
    out
}

/// Replaces every link or image for which `rewrite` returns `Some(text)` with that text (the whole
/// `[text](destination)` span). Nested links (an image inside a link) are rewritten outermost first.
pub fn rewrite_links(markdown: &str, mut rewrite: impl FnMut(&Link) -> Option<String>) -> String {
    let mut out = String::with_capacity(markdown.len());
    let mut at = 0;
    for link in links(markdown) {
        if link.range.start < at {
            continue; // inside a link already rewritten
        }
        if let Some(replacement) = rewrite(&link) {
            out.push_str(&markdown[at..link.range.start]);
            out.push_str(&replacement);
            at = link.range.end;
        }
    }
    out.push_str(&markdown[at..]);
    out
}

/// Normalises text to clean markdown: `\n` line endings, no byte-order mark, no trailing spaces,
/// at most one blank line in a row (outside code blocks), no leading or trailing blank lines.
pub fn clean(text: &str) -> String {
    let text = text
        .trim_start_matches('\u{feff}')
        .replace("\r\n", "\n")
        .replace('\r', "\n");
    let mut out = String::with_capacity(text.len());
    let mut blank_run = 0;
    let mut in_fence = false;
    for line in text.lines() {
        let trimmed_end = line.trim_end();
        if trimmed_end.trim_start().starts_with("```") || trimmed_end.trim_start().starts_with("~~~") {
            in_fence = !in_fence;
        }
        if trimmed_end.is_empty() && !in_fence {
            blank_run += 1;
            if blank_run > 1 {
                continue;
            }
        } else {
            blank_run = 0;
        }
        // Inside code, keep the line as written (trailing spaces can matter).
        out.push_str(if in_fence { line } else { trimmed_end });
        out.push('\n');
    }
    out.trim_matches('\n').to_string()
}

/// Removes a leading `# Title` line (the title is stored apart from the content). Returns the body
/// and the heading's text, if there was one.
pub fn split_title(markdown: &str) -> (Option<String>, &str) {
    let trimmed = markdown.trim_start_matches(['\n', '\u{feff}']);
    let first = trimmed.lines().next().unwrap_or("");
    match first.strip_prefix("# ") {
        Some(title) => {
            let rest = &trimmed[first.len()..];
            (Some(title.trim().to_string()), rest.trim_start_matches('\n'))
        }
        None => (None, trimmed),
    }
}

/// Counts words: runs of alphanumeric characters.
pub fn word_count(text: &str) -> usize {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_links_images_and_their_text() {
        let md = "See [the *guide*](http://a.test/g#top) and ![chart](img%20one.png).\n\n`[not](a link)`";
        let found = links(md);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].destination, "http://a.test/g#top");
        assert_eq!(found[0].text, "the guide");
        assert!(!found[0].image && found[1].image);
        assert_eq!(found[1].destination, "img%20one.png");
        assert_eq!(web_links(md), ["http://a.test/g"]);
    }

    #[test]
    fn rewrites_only_what_is_asked() {
        let md = "[a](x.md) and [b](http://web.test) and ![i](p.png)";
        let out = rewrite_links(md, |l| match (l.image, l.is_web()) {
            (true, _) => Some(format!("[image: {}]", l.text)),
            (false, false) => Some(format!("[{}](notion://{})", l.text, l.destination)),
            _ => None,
        });
        assert_eq!(out, "[a](notion://x.md) and [b](http://web.test) and [image: i]");
    }

    #[test]
    fn clean_normalises_blank_lines_but_not_code() {
        let text = "\u{feff}# T  \r\n\r\n\r\n\r\npara \n```\ncode  \n\n\n```\n\n\n";
        assert_eq!(clean(text), "# T\n\npara\n```\ncode  \n\n\n```");
    }

    #[test]
    fn split_title_takes_the_first_heading() {
        assert_eq!(split_title("# Hello\n\nbody"), (Some("Hello".into()), "body"));
        assert_eq!(split_title("body"), (None, "body"));
        assert_eq!(word_count("Don't stop — 3 times"), 5);
    }
}
