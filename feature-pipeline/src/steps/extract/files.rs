//! Local files as documents: markdown, HTML and plain text, from folders or one by one.
//!
//! For sites mirrored to disk (`wget --mirror`, a static site's build output), notes kept as
//! markdown, and tests. A file's document url is its absolute `file://` URL; its title is the HTML
//! `<title>`, the markdown's first `# heading`, or the file name. Other file types are skipped and
//! counted; a file that is too large or not UTF-8 is a problem, and the rest goes on.

use std::path::{Path, PathBuf};

use engram_shared::documents::{NewDocument, Source};
use serde_json::json;
use url::Url;

use super::{Problem, html, markdown, too_large, utf8};

/// The kinds of file read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Markdown,
    Html,
    Text,
}

fn kind(path: &Path) -> Option<Kind> {
    let extension = path.extension()?.to_str()?.to_ascii_lowercase();
    match extension.as_str() {
        "md" | "markdown" => Some(Kind::Markdown),
        "html" | "htm" | "xhtml" => Some(Kind::Html),
        "txt" | "text" => Some(Kind::Text),
        _ => None,
    }
}

/// The files under `path` (itself, if it is a file), sorted, and how many were skipped as
/// unsupported. Fails when `path` cannot be read at all.
pub fn list(path: &Path) -> Result<(Vec<PathBuf>, u64), Problem> {
    let metadata = std::fs::metadata(path).map_err(|err| {
        Problem::new(
            path.display().to_string(),
            format!("cannot read it ({err}): give an existing folder or file"),
        )
    })?;
    if metadata.is_file() {
        return match kind(path) {
            Some(_) => Ok((vec![path.to_path_buf()], 0)),
            None => Err(Problem::new(
                path.display().to_string(),
                "not a markdown (.md), HTML (.html, .htm) or text (.txt) file",
            )),
        };
    }
    let mut files = Vec::new();
    let mut skipped = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|err| Problem::new(dir.display().to_string(), format!("cannot list it: {err}")))?;
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if kind(&path).is_some() {
                files.push(path);
            } else {
                skipped += 1;
            }
        }
    }
    files.sort();
    Ok((files, skipped))
}

/// Reads one file as a document.
pub fn read(path: &Path, max_bytes: u64) -> Result<NewDocument, Problem> {
    let shown = path.display().to_string();
    let absolute = path
        .canonicalize()
        .map_err(|err| Problem::new(&shown, format!("cannot resolve it: {err}")))?;
    let size = absolute.metadata().map(|m| m.len()).unwrap_or(0);
    if size > max_bytes {
        return Err(Problem::new(&shown, too_large(size, max_bytes)));
    }
    let bytes = std::fs::read(&absolute).map_err(|err| Problem::new(&shown, format!("cannot read it: {err}")))?;
    let text = utf8(bytes, &shown)?;
    let url = Url::from_file_path(&absolute)
        .map_err(|_| Problem::new(&shown, "cannot make a file:// URL of it"))?
        .to_string();
    let stem = absolute
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("untitled")
        .to_string();
    let kind = kind(&absolute).unwrap_or(Kind::Text);
    let mut metadata = json!({ "path": absolute.display().to_string(), "format": format!("{kind:?}").to_lowercase() });
    let (title, content) = match kind {
        Kind::Markdown => {
            let cleaned = markdown::clean(&text);
            let (heading, body) = markdown::split_title(&cleaned);
            (heading.unwrap_or(stem), body.to_string())
        }
        Kind::Html => {
            let page = html::extract(&text, &url);
            metadata["extraction"] = json!(page.extraction);
            let title = if page.title.is_empty() { stem } else { page.title };
            (title, page.markdown)
        }
        Kind::Text => (stem, markdown::clean(&text)),
    };
    metadata["links"] = json!({ "web": markdown::web_links(&content) });
    Ok(NewDocument {
        source: Source::File,
        url,
        title,
        content,
        metadata,
        quality: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_markdown_html_and_text_and_skips_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.md"), "# Alpha\n\nSee [x](http://x.test/p).\n").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(
            dir.path().join("sub/b.html"),
            "<html><head><title>Beta page</title></head><body><p>Hello</p></body></html>",
        )
        .unwrap();
        std::fs::write(dir.path().join("c.txt"), "plain words").unwrap();
        std::fs::write(dir.path().join("d.png"), [0u8, 1, 2]).unwrap();
        let (files, skipped) = list(dir.path()).unwrap();
        assert_eq!(files.len(), 3);
        assert_eq!(skipped, 1);
        let docs: Vec<_> = files.iter().map(|f| read(f, 1 << 20).unwrap()).collect();
        assert_eq!(docs[0].title, "Alpha");
        assert_eq!(docs[0].metadata["links"]["web"], json!(["http://x.test/p"]));
        assert!(docs[0].url.starts_with("file:///"));
        assert_eq!(docs[1].title, "c");
        assert_eq!(docs[2].title, "Beta page");
    }

    #[test]
    fn non_utf8_and_oversized_files_are_problems() {
        let dir = tempfile::tempdir().unwrap();
        let latin1 = dir.path().join("latin1.txt");
        std::fs::write(&latin1, b"caf\xe9").unwrap();
        assert!(read(&latin1, 1 << 20).unwrap_err().reason.contains("UTF-8"));
        let big = dir.path().join("big.md");
        std::fs::write(&big, "x".repeat(2000)).unwrap();
        assert!(read(&big, 1000).unwrap_err().reason.contains("--max-bytes"));
        assert!(list(&dir.path().join("missing")).is_err());
    }
}
