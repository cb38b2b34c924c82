//! How deeply a page's elements nest, found without building its tree, and its bare text.
//!
//! Readability and the markdown converter walk the element tree recursively, so a page nested
//! tens of thousands of levels deep (`<div>` repeated: a few hundred kilobytes) overflows the
//! thread's stack and kills the process. No page a person wrote nests like that (real pages stay
//! under a hundred levels), so a page deeper than [`MAX_DEPTH`] is read as plain text instead:
//! its words are kept, its structure is not. The scan is one linear pass: comments, `<!…>`
//! declarations, and the contents of `script`, `style` and `textarea` are skipped; void elements
//! and those whose end tag HTML lets a page leave out (`p`, `li`, `td`…) do not count as nesting.

/// Deepest nesting read as HTML; deeper pages are read as text. Chosen so that the recursive
/// readers stay well inside a 2 MiB thread stack (the test extracts a page this deep on one).
pub const MAX_DEPTH: usize = 256;

/// Elements that never have content.
const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr",
];

/// Elements whose end tag may be left out: an unclosed one does not nest what follows.
const IMPLIED_END: &[&str] = &[
    "p", "li", "dt", "dd", "tr", "td", "th", "option", "optgroup", "thead", "tbody", "tfoot", "colgroup", "rb", "rt",
    "rtc", "rp", "caption",
];

/// Elements whose content is not markup.
const RAW_TEXT: &[&str] = &["script", "style", "textarea", "title", "xmp", "noscript"];

/// One pass over `html`: the deepest nesting, and the text outside tags.
struct Scan {
    depth: usize,
    text: String,
    title: Option<String>,
}

fn scan(html: &str) -> Scan {
    let lower = html.to_ascii_lowercase();
    let mut out = Scan {
        depth: 0,
        text: String::new(),
        title: None,
    };
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(offset) = html[at..].find('<') {
        let start = at + offset;
        out.text.push_str(&html[at..start]);
        let rest = &lower[start..];
        if rest.starts_with("<!--") {
            at = start + rest.find("-->").map_or(rest.len(), |end| end + 3);
            continue;
        }
        if rest.starts_with("<!") || rest.starts_with("<?") {
            at = start + rest.find('>').map_or(rest.len(), |end| end + 1);
            continue;
        }
        let closing = rest.starts_with("</");
        let name_from = if closing { 2 } else { 1 };
        // A tag name starts with a letter: `a < b` and `<3` are text.
        let starts_tag = rest[name_from..]
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic());
        let name_len = rest[name_from..]
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'-')
            .count();
        if !starts_tag || name_len == 0 {
            out.text.push('<');
            at = start + 1;
            continue;
        }
        let name = &rest[name_from..name_from + name_len];
        let end = tag_end(rest);
        let self_closing = rest[..end].trim_end_matches('>').ends_with('/');
        at = start + end;
        if closing {
            if nests(name) {
                depth = depth.saturating_sub(1);
            }
            continue;
        }
        if RAW_TEXT.contains(&name) {
            let close = format!("</{name}");
            let content_end = lower[at..].find(&close).map_or(html.len(), |i| at + i);
            if name == "title" && out.title.is_none() {
                out.title = Some(html[at..content_end].trim().to_string());
            }
            at = content_end;
            continue;
        }
        if nests(name) && !self_closing {
            depth += 1;
            out.depth = out.depth.max(depth);
        }
    }
    out.text.push_str(&html[at..]);
    out
}

fn nests(name: &str) -> bool {
    !VOID.contains(&name) && !IMPLIED_END.contains(&name)
}

/// Where the tag starting `rest` ends (after its `>`, outside quoted attribute values).
fn tag_end(rest: &str) -> usize {
    let mut quote = None;
    for (i, byte) in rest.bytes().enumerate().skip(1) {
        match (quote, byte) {
            (None, b'"' | b'\'') => quote = Some(byte),
            (Some(q), b) if b == q => quote = None,
            (None, b'>') => return i + 1,
            _ => {}
        }
    }
    rest.len()
}

/// The deepest element nesting of `html`, approximately (see the module's notes).
pub fn depth(html: &str) -> usize {
    scan(html).depth
}

/// The page as plain text, and its `<title>`: for pages too deep to read as HTML.
pub fn text_and_title(html: &str) -> (String, String) {
    let scanned = scan(html);
    let text = decode(&scanned.text);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    (lines.join("\n\n"), decode(&scanned.title.unwrap_or_default()))
}

/// The common character references, decoded.
fn decode(text: &str) -> String {
    text.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_counted_as_a_person_would() {
        assert_eq!(depth("<html><body><div><p>a<p>b<br><img src=x></div></body></html>"), 3);
        assert_eq!(depth("<ul><li>a<li>b<li>c</ul>"), 1, "list items close themselves");
        assert_eq!(
            depth("<div a='>' b=\"<div>\"><!-- <div><div> --><script>if (a<b) '<div>'</script></div>"),
            1
        );
        assert_eq!(depth(&"<div>".repeat(10_000)), 10_000);
        assert_eq!(depth("a < b and <3"), 0);
    }

    #[test]
    fn a_page_too_deep_keeps_its_words() {
        let page = format!(
            "<html><head><title>Deep &amp; odd</title><style>p{{}}</style></head><body>{}Tickets cost &lt;14 EUR&gt;.{}</body></html>",
            "<div>".repeat(1000),
            "</div>".repeat(1000)
        );
        let (text, title) = text_and_title(&page);
        assert_eq!(title, "Deep & odd");
        assert_eq!(text, "Tickets cost <14 EUR>.");
    }
}
