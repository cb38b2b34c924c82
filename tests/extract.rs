//! The pipeline's input stage end to end: the real `feature-pipeline` binary extracts the sample
//! Notion export (folder and zip), the recorded Notion API and the sample site crawled on
//! 127.0.0.1, into SQLite and into MongoDB; then explore and filter run over what it stored.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

mod common;

use common::Stores;
use engram_shared::documents::{Document, Source};
use engram_tests::backend_url;
use engram_tests::servers::{NOTION_TOKEN, NotionApi, SampleSite, samples};
use serde_json::Value;

fn export_dir() -> PathBuf {
    samples().join("notion-export")
}

fn markdown_files(dir: &Path) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            count += markdown_files(&path);
        } else if path.extension().is_some_and(|e| e == "md") {
            count += 1;
        }
    }
    count
}

/// Zips `dir` as Notion does (paths relative to the export's root).
fn zip_dir(dir: &Path, target: &Path) {
    fn add(zip: &mut zip::ZipWriter<std::fs::File>, root: &Path, dir: &Path) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path
                .strip_prefix(root)
                .expect("prefix")
                .to_string_lossy()
                .replace('\\', "/");
            if path.is_dir() {
                add(zip, root, &path);
            } else {
                zip.start_file(name, zip::write::SimpleFileOptions::default())
                    .expect("zip entry");
                zip.write_all(&std::fs::read(&path).expect("read")).expect("zip write");
            }
        }
    }
    let mut zip = zip::ZipWriter::new(std::fs::File::create(target).expect("zip file"));
    add(&mut zip, dir, dir);
    zip.finish().expect("zip finish");
}

fn counts(out: &str) -> (u64, u64, u64) {
    // "…: N documents read: A new, B changed, C unchanged"
    let numbers: Vec<u64> = out
        .lines()
        .find(|l| l.contains("documents read"))
        .unwrap_or_else(|| panic!("no summary line in:\n{out}"))
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    (numbers[1], numbers[2], numbers[3])
}

async fn extract_explore_filter(stores: Stores) {
    let pages = markdown_files(&export_dir());
    let export = export_dir().display().to_string();

    // The export: every page, once; a rerun writes nothing; the zip is the same export.
    let out = stores.ok(&["extract", "notion", &export]).await;
    assert_eq!(counts(&out), (pages as u64, 0, 0), "{out}");
    let out = stores.ok(&["extract", "notion", &export]).await;
    assert_eq!(counts(&out), (0, 0, pages as u64), "rerun must write nothing:\n{out}");
    let zip = stores.home.path().join("export.zip");
    zip_dir(&export_dir(), &zip);
    let out = stores.ok(&["extract", "notion", &zip.display().to_string()]).await;
    assert_eq!(
        counts(&out),
        (0, 0, pages as u64),
        "the zip holds the same pages:\n{out}"
    );

    let documents = stores.documents().await;
    assert_eq!(documents.len(), pages);
    let with_children = documents
        .iter()
        .filter(|d| d.metadata["children"].as_array().is_some_and(|c| !c.is_empty()));
    assert!(with_children.count() >= 3, "the hierarchy is kept");
    let rows: Vec<_> = documents
        .iter()
        .filter(|d| d.metadata["database"].is_object())
        .collect();
    assert!(rows.len() >= 4, "database rows are found");
    assert!(
        rows.iter()
            .all(|r| r.metadata["properties"].as_object().is_some_and(|p| !p.is_empty()))
    );
    for document in &documents {
        assert!(document.url.starts_with("https://www.notion.so/"), "{}", document.url);
        assert!(
            !document.content.contains(".md)"),
            "relative page links are rewritten: {}",
            document.title
        );
        assert!(document.quality.is_some(), "scored at extract time");
    }

    // The crawl follows the pages' web links through the sample site.
    let site = SampleSite::start().await;
    let proxy = site.proxy();
    let huge = "http://docs.engram.test/huge.html";
    let out = stores
        .ok(&[
            "extract",
            "crawl",
            "--from-documents",
            "--url",
            huge,
            "--proxy",
            &proxy,
            "--timeout-secs",
            "1.5",
            "--retries",
            "1",
            "--host-delay-ms",
            "20",
            "--max-bytes",
            "2000000",
        ])
        .await;
    assert!(
        !site.requested().iter().any(|p| p.starts_with("/private/")),
        "robots.txt-disallowed paths are never requested: {:?}",
        site.requested()
    );
    let crawled: BTreeMap<String, Document> = stores
        .documents()
        .await
        .into_iter()
        .filter(|d| d.source == Source::Crawl)
        .map(|d| (d.url.clone(), d))
        .collect();
    assert!(
        crawled.len() >= 8,
        "articles and the redirected page are stored:\n{out}"
    );
    let lifetimes = &crawled["http://docs.engram.test/articles/rust-lifetimes.html"];
    assert!(!lifetimes.title.is_empty());
    assert!(
        !lifetimes.content.to_lowercase().contains("subscribe"),
        "chrome stripped:\n{}",
        lifetimes.content
    );
    let moved = &crawled["http://docs.engram.test/old/composting-guide"];
    assert_eq!(
        moved.metadata["final_url"],
        "http://docs.engram.test/composting-guide.html"
    );

    // Explore reads the crawl report: each failure with its reason.
    let out = stores.ok(&["explore", "--json"]).await;
    let summary: Value = serde_json::from_str(&out).expect("explore --json");
    assert_eq!(summary["documents"].as_u64(), Some((pages + crawled.len()) as u64));
    let report = PathBuf::from(summary["report"].as_str().expect("report path"));
    let html = std::fs::read_to_string(&report).expect("report html");
    assert_eq!(html.matches("<img").count(), 2, "both histograms are in the report");
    let failures = [
        ("/missing-page.html", "404"),
        ("/slow/boiler.html", "timed out"),
        ("/files/bike-torque.pdf", "application/pdf"),
        ("/private/salary-notes.html", "robots.txt"),
        ("/huge.html", "limit"),
    ];
    assert_eq!(
        summary["crawl"]["failed"].as_u64(),
        Some(failures.len() as u64),
        "{html}"
    );
    for (path, reason) in failures {
        let row = html
            .split("<tr>")
            .find(|row| row.contains(&format!("http://docs.engram.test{path}")))
            .unwrap_or_else(|| panic!("{path} missing from the failed crawls"));
        assert!(row.contains(reason), "{path}: expected {reason:?} in {row}");
    }

    // Filter drops the junk pages, each for its reason, and keeps the rest.
    let (ok, out, err) = stores.pipeline(&["filter", "--json"]).await;
    assert!(ok, "filter failed:\n{err}");
    let dropped: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let reason_of = |title: &str| {
        dropped
            .iter()
            .find(|d| d["title"].as_str().is_some_and(|t| t.contains(title)))
            .map(|d| d["reason"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(reason_of("Untitled").as_deref(), Some("too_short"), "{err}");
    assert_eq!(reason_of("Bookmarks").as_deref(), Some("low_quality"), "{err}");
    let duplicates = dropped.iter().filter(|d| d["reason"] == "exact_duplicate").count();
    let near = dropped.iter().filter(|d| d["reason"] == "near_duplicate").count();
    assert!(duplicates >= 1 && near >= 1, "duplicates found:\n{err}");
    assert!(dropped.len() < pages / 2, "most pages are kept:\n{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sample_corpus_into_sqlite() {
    extract_explore_filter(Stores::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sample_corpus_into_mongodb() {
    let Some(uri) = backend_url("mongodb", "ENGRAM_TEST_MONGODB_URI") else {
        return;
    };
    extract_explore_filter(Stores::mongodb(uri)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn notion_api_pages_blocks_and_sub_pages() {
    let api = NotionApi::start().await;
    let stores = Stores::sqlite();
    let url = api.url();
    let database = "3b1c9d6e-2f4a-4e8b-9c1d-7a5e6f8b2c10";

    let (ok, _, err) = stores
        .pipeline(&["extract", "notion", "--api", "--database", database, "--api-url", &url])
        .await;
    assert!(
        !ok && err.contains("ENGRAM_NOTION_TOKEN"),
        "a missing token is named:\n{err}"
    );

    let args = [
        "extract",
        "notion",
        "--api",
        "--database",
        database,
        "--api-url",
        &url,
        "--api-interval-ms",
        "0",
        "--token",
        NOTION_TOKEN,
    ];
    let out = stores.ok(&args).await;
    assert_eq!(*api.rate_limited.lock().unwrap(), 1, "the 429 was met and waited out");
    let documents = stores.documents().await;
    // Six database pages (two query pages) and one sub-page.
    assert_eq!(documents.len(), 7, "{out}");
    let by_title = |title: &str| {
        documents
            .iter()
            .find(|d| d.title == title)
            .unwrap_or_else(|| panic!("{title}"))
    };
    let rollback = by_title("Rollback steps");
    let checklist = by_title("Deploy checklist");
    assert_eq!(rollback.metadata["parent_id"], checklist.metadata["notion_id"]);
    assert!(checklist.content.contains(&rollback.url), "the sub-page is linked");
    assert_eq!(checklist.metadata["properties"]["Status"], "Published");
    let review = by_title("Code review guidelines");
    assert!(
        review.content.len() > 1200,
        "both pages of its blocks are read:\n{}",
        review.content
    );
    let web: Vec<&str> = documents
        .iter()
        .flat_map(|d| d.metadata["links"]["web"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    assert!(
        web.contains(&"http://docs.engram.test/articles/postgres-btree.html"),
        "{web:?}"
    );

    let out = stores.ok(&args).await;
    assert_eq!(counts(&out), (0, 0, 7), "rerun writes nothing:\n{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_named_and_the_rest_is_stored() {
    let stores = Stores::sqlite();
    let work = tempfile::tempdir().unwrap();
    let notes = work.path().join("notes");
    std::fs::create_dir(&notes).unwrap();
    std::fs::write(
        notes.join("good.md"),
        "# Good\n\nA note about sharpening knives on a 1000 grit stone.",
    )
    .unwrap();
    std::fs::write(notes.join("latin1.txt"), b"Caf\xe9 cr\xe8me, not UTF-8").unwrap();
    let big = std::fs::File::create(notes.join("huge.html")).unwrap();
    big.set_len(50 * 1024 * 1024).unwrap();
    let missing = work.path().join("no-such-folder");

    let (ok, out, err) = stores
        .pipeline(&[
            "extract",
            "files",
            &missing.display().to_string(),
            &notes.display().to_string(),
        ])
        .await;
    assert!(!ok, "an unreadable input fails the command");
    assert!(
        err.contains("no-such-folder") && err.contains("everything else was stored"),
        "{err}"
    );
    assert!(out.contains("latin1.txt") && out.contains("UTF-8"), "{out}");
    assert!(out.contains("huge.html") && out.contains("--max-bytes"), "{out}");
    let stored = stores.documents().await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].title, "Good");

    let corrupt = work.path().join("export.zip");
    std::fs::write(&corrupt, b"PK\x03\x04 this is not really a zip").unwrap();
    let (ok, _, err) = stores
        .pipeline(&["extract", "notion", &corrupt.display().to_string()])
        .await;
    assert!(!ok);
    assert!(err.contains("not a readable zip file"), "{err}");
    assert_eq!(stores.documents().await, stored, "nothing stored was touched");
}
