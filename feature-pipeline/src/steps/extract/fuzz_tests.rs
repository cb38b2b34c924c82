//! Fuzz targets for extract's readers of outside input (see `engram_tests::fuzz`): a Notion export
//! zip and HTML pages, mutated from the samples; each case must end in documents or problems,
//! never a panic or a hang.

use std::io::Write;
use std::path::{Path, PathBuf};

use engram_tests::fuzz::Fuzz;
use rand::Rng;

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples")
}

/// `dir` zipped as Notion does, in memory.
fn zip_dir(dir: &Path) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut stack = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(item) = stack.pop() {
        for entry in std::fs::read_dir(&item).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    for path in files {
        let name = path.strip_prefix(dir).unwrap().to_string_lossy().replace('\\', "/");
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        zip.start_file(name, options).unwrap();
        zip.write_all(&std::fs::read(&path).unwrap()).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

#[test]
fn fuzz_the_notion_export_zip_reader() {
    let valid = zip_dir(&samples().join("notion-export"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.zip");
    std::fs::write(&path, &valid).unwrap();
    let mut documents = Vec::new();
    let export = super::notion_export::read(&path, 5 << 20, &mut |d| documents.push(d)).unwrap();
    assert!(
        export.documents > 0 && export.documents == documents.len(),
        "the sample export reads"
    );
    let case = dir.path().join("case.zip");
    let cases = Fuzz::from_env("notion-zip").run(
        move |fuzz| {
            let len = valid.len();
            fuzz.mutate(&valid, len)
        },
        move |bytes| {
            std::fs::write(&case, bytes).unwrap();
            let _ = super::notion_export::read(&case, 5 << 20, &mut |_| ());
        },
    );
    assert!(cases > 0);
}

#[test]
fn fuzz_html_to_markdown() {
    let pages: Vec<Vec<u8>> = std::fs::read_dir(samples().join("site/articles"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    // Regression cases: nesting far deeper than any page (the recursive readers overflowed their
    // stack: the process died), nesting right at the limit read as HTML on a 2 MiB thread stack
    // (the default of spawned and runtime threads), and an unclosed comment and tag at the end.
    let deep = format!(
        "<html><body>{}text{}</body></html>",
        "<div>".repeat(50_000),
        "</div>".repeat(50_000)
    );
    let page = super::html::extract(&deep, "http://x.test/");
    assert_eq!(page.markdown, "text");
    let limit = super::html_nesting::MAX_DEPTH - 2;
    let at_limit = format!(
        "<html><body>{}<p>Words enough to be an article, repeated. Words enough to be an article, repeated.</p>{}</body></html>",
        "<div>".repeat(limit),
        "</div>".repeat(limit)
    );
    let read = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || super::html::extract(&at_limit, "http://x.test/"))
        .unwrap()
        .join()
        .expect("read on a 2 MiB stack");
    assert!(!read.extraction.starts_with("text-only"), "{}", read.extraction);
    for hostile in ["<p>a<!-- b", "<p><a href=\"x", "<", "<div"] {
        let _ = super::html::extract(hostile, "http://x.test/");
    }
    let cases = Fuzz::from_env("html").run(
        move |fuzz| {
            let pick = fuzz.rng().random_range(0..pages.len());
            let len = pages[pick].len();
            fuzz.mutate(&pages[pick], len)
        },
        |bytes| {
            let _ = super::html::extract(&String::from_utf8_lossy(bytes), "http://docs.engram.test/a.html");
        },
    );
    assert!(cases > 0);
}
