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

use super::{Problem, html, markdown, utf8, walk};

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

/// The files under `path` (itself, if it is a file), sorted; how many were skipped as
/// unsupported; and what could not be walked (links that loop, FIFOs, devices: [`walk`]). Fails
/// when `path` cannot be read at all.
pub fn list(path: &Path) -> Result<(Vec<PathBuf>, u64, Vec<Problem>), Problem> {
    let found = walk::walk(path, true)?;
    if found.files.len() == 1 && found.files[0] == path {
        return match kind(path) {
            Some(_) => Ok((found.files, 0, found.problems)),
            None => Err(Problem::new(
                path.display().to_string(),
                "not a markdown (.md), HTML (.html, .htm) or text (.txt) file",
            )),
        };
    }
    let (files, skipped): (Vec<PathBuf>, Vec<PathBuf>) = found.files.into_iter().partition(|p| kind(p).is_some());
    Ok((files, skipped.len() as u64, found.problems))
}

/// Reads one file as a document.
pub fn read(path: &Path, max_bytes: u64) -> Result<NewDocument, Problem> {
    let shown = path.display().to_string();
    let absolute = path
        .canonicalize()
        .map_err(|err| Problem::new(&shown, format!("cannot resolve it: {err}")))?;
    let bytes = walk::read_limited(&absolute, max_bytes).map_err(|problem| Problem::new(&shown, problem.reason))?;
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
        let (files, skipped, _) = list(dir.path()).unwrap();
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
