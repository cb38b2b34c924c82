//! Notion's "Markdown & CSV" export, as a folder or as the zip Notion hands out.
//!
//! What Notion writes: every page is `Title <32 hex id>.md`; a page with sub-pages has a folder of
//! the same name beside it holding them; a database is `Name <id>.csv` (and `Name <id>_all.csv`)
//! plus a folder of one page per row, each row page opening with `Property: value` lines;
//! attachments sit in the page's folder; links between pages are relative, percent-encoded paths.
//! Large exports arrive as a zip of zips (`…-Part-1.zip`), which is read too.
//!
//! Output: one `NewDocument` per page, source `notion`, url `https://www.notion.so/<id>` (the
//! page's real address, so the same page read through the API is the same document), the body as
//! clean markdown (links to other pages rewritten to their notion.so urls, attachments to their
//! names), and in metadata the Notion id, the parent, the breadcrumb of ancestor titles, the
//! children, database and properties, attachments and the web links the crawl step follows.
//!
//! An export is input from outside, so a zip is read within [`ZipLimits`]: total bytes
//! uncompressed, entries, nesting depth and compression ratio, each counted while reading (a size an
//! entry declares is never trusted for an allocation). A folder is walked by [`super::walk`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Cursor, Read, Seek};
use std::path::Path;

use engram_shared::documents::{NewDocument, Source};
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};

use super::{Problem, markdown, too_large, utf8, walk};

/// How much a Notion zip may unpack to. Real exports sit far inside these; a zip bomb does not.
#[derive(Debug, Clone, Copy)]
pub struct ZipLimits {
    /// Bytes decompressed in all, pages and nested parts together.
    pub total_bytes: u64,
    /// Entries in all zips together.
    pub entries: usize,
    /// Zips inside zips: Notion nests one level (`…-Part-1.zip`).
    pub depth: usize,
    /// Largest ratio of decompressed to compressed size, for entries over [`RATIO_FLOOR`].
    pub ratio: u64,
}

/// Entries this small are never judged by their compression ratio.
const RATIO_FLOOR: u64 = 1024 * 1024;

impl Default for ZipLimits {
    fn default() -> Self {
        ZipLimits {
            total_bytes: 4 * 1024 * 1024 * 1024,
            entries: 500_000,
            depth: 3,
            ratio: 200,
        }
    }
}

/// What is left of the limits while an export is read.
struct Budget {
    limits: ZipLimits,
    bytes_left: u64,
    entries_left: usize,
}

/// One file of the export, its path relative to the export's root with `/` separators.
#[derive(Debug, Clone)]
struct ExportFile {
    path: String,
    bytes: Vec<u8>,
}

/// Everything read from one export.
#[derive(Debug, Default)]
pub struct Export {
    /// Its pages, as documents.
    pub documents: Vec<NewDocument>,
    /// Files that could not be read.
    pub problems: Vec<Problem>,
    /// Attachments found (not documents, listed on their page).
    pub attachments: usize,
}

/// Reads the export at `path`: a folder or a zip file. Fails only when `path` itself cannot be
/// read; a bad file inside becomes a [`Problem`].
pub fn read(path: &Path, max_bytes: u64) -> Result<Export, Problem> {
    let shown = path.display().to_string();
    let metadata = std::fs::metadata(path).map_err(|err| {
        Problem::new(
            &shown,
            format!("cannot read it ({err}): give the folder or .zip of a Notion \"Markdown & CSV\" export"),
        )
    })?;
    let mut files = Vec::new();
    let mut attachments = Vec::new();
    let mut problems = Vec::new();
    if metadata.is_dir() {
        walk_dir(path, max_bytes, &mut files, &mut attachments, &mut problems);
    } else {
        let file = std::fs::File::open(path).map_err(|err| Problem::new(&shown, format!("cannot open it: {err}")))?;
        let limits = ZipLimits::default();
        let mut budget = Budget {
            limits,
            bytes_left: limits.total_bytes,
            entries_left: limits.entries,
        };
        let mut sink = Sink {
            files: &mut files,
            attachments: &mut attachments,
            problems: &mut problems,
        };
        read_zip(file, "", &shown, 0, max_bytes, &mut budget, &mut sink)?;
    }
    let mut export = build(files, &attachments, &mut problems);
    export.problems.append(&mut problems);
    export.attachments = attachments.len();
    Ok(export)
}

fn is_page_or_table(path: &str) -> bool {
    path.ends_with(".md") || path.ends_with(".csv")
}

fn walk_dir(
    root: &Path,
    max_bytes: u64,
    files: &mut Vec<ExportFile>,
    attachments: &mut Vec<String>,
    problems: &mut Vec<Problem>,
) {
    let found = match walk::walk(root, false) {
        Ok(found) => found,
        Err(problem) => {
            problems.push(problem);
            return;
        }
    };
    problems.extend(found.problems);
    for path in found.files {
        let relative = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        if is_page_or_table(&relative) {
            match walk::read_limited(&path, max_bytes) {
                Ok(bytes) => files.push(ExportFile { path: relative, bytes }),
                Err(problem) => problems.push(problem),
            }
        } else {
            attachments.push(relative);
        }
    }
}

/// Where a zip's contents go.
struct Sink<'a> {
    files: &'a mut Vec<ExportFile>,
    attachments: &'a mut Vec<String>,
    problems: &'a mut Vec<Problem>,
}

fn read_zip<R: Read + Seek>(
    reader: R,
    prefix: &str,
    shown: &str,
    depth: usize,
    max_bytes: u64,
    budget: &mut Budget,
    sink: &mut Sink,
) -> Result<(), Problem> {
    let limits = budget.limits;
    if depth >= limits.depth {
        return Err(Problem::new(
            shown,
            format!(
                "zips nested more than {} deep: not read (Notion nests one level; this looks like a zip bomb)",
                limits.depth
            ),
        ));
    }
    let mut archive = zip::ZipArchive::new(reader).map_err(|err| {
        Problem::new(
            shown,
            format!("not a readable zip file ({err}): download the export from Notion again, or unzip it and give the folder"),
        )
    })?;
    if archive.len() > budget.entries_left {
        return Err(Problem::new(
            shown,
            format!(
                "holds {} entries, over the {} an export may hold in all: not read (unzip it and give the folder to read it anyway)",
                archive.len(),
                limits.entries
            ),
        ));
    }
    budget.entries_left -= archive.len();
    for index in 0..archive.len() {
        let mut entry = match archive.by_index(index) {
            Ok(entry) => entry,
            Err(err) => {
                sink.problems.push(Problem::new(
                    format!("{shown} entry {index}"),
                    format!("unreadable: {err}"),
                ));
                continue;
            }
        };
        if entry.is_dir() {
            continue;
        }
        let name = match entry.name() {
            Ok(name) => format!("{prefix}{name}"),
            Err(err) => {
                sink.problems.push(Problem::new(
                    format!("{shown} entry {index}"),
                    format!("unreadable name: {err}"),
                ));
                continue;
            }
        };
        let item = format!("{shown}:{name}");
        let nested = name.ends_with(".zip");
        if !is_page_or_table(&name) && !nested {
            sink.attachments.push(name);
            continue;
        }
        // Nested zips hold whole parts of the export: only the export's total limits them.
        let limit = if nested {
            budget.bytes_left
        } else {
            max_bytes.min(budget.bytes_left)
        };
        let over_total = || {
            format!(
                "the export unpacks to more than {:.1} GiB: the rest is not read (a zip bomb? unzip it and give the folder to read it anyway)",
                limits.total_bytes as f64 / (1u64 << 30) as f64
            )
        };
        let over = |size: u64| {
            if limit < max_bytes || nested {
                over_total()
            } else {
                too_large(size, max_bytes)
            }
        };
        if entry.size() > limit {
            sink.problems.push(Problem::new(item, over(entry.size())));
            continue;
        }
        let by_ratio = entry.compressed_size().saturating_mul(limits.ratio).max(RATIO_FLOOR);
        let cap = limit.min(by_ratio);
        let mut bytes = Vec::with_capacity(entry.size().min(cap).min(RATIO_FLOOR) as usize);
        if let Err(err) = (&mut entry).take(cap.saturating_add(1)).read_to_end(&mut bytes) {
            sink.problems.push(Problem::new(
                item,
                format!("cannot decompress it ({err}): the zip is damaged"),
            ));
            continue;
        }
        if bytes.len() as u64 > cap {
            let reason = if cap == by_ratio && by_ratio < limit {
                format!(
                    "decompresses more than {}:1 (declared {} bytes): not read, it looks like a zip bomb",
                    limits.ratio,
                    entry.size()
                )
            } else {
                over(bytes.len() as u64)
            };
            sink.problems.push(Problem::new(item, reason));
            continue;
        }
        budget.bytes_left -= bytes.len() as u64;
        if nested {
            let nested_prefix = format!("{}/", name.trim_end_matches(".zip"));
            if let Err(problem) = read_zip(
                Cursor::new(bytes),
                &nested_prefix,
                &item,
                depth + 1,
                max_bytes,
                budget,
                sink,
            ) {
                sink.problems.push(problem);
            }
        } else {
            sink.files.push(ExportFile { path: name, bytes });
        }
    }
    Ok(())
}

/// Splits Notion's `Title <32 hex>` into the title and the id.
pub fn split_name(stem: &str) -> (String, Option<String>) {
    if let Some((title, id)) = stem.rsplit_once(' ')
        && id.len() == 32
        && id.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return (title.to_string(), Some(id.to_ascii_lowercase()));
    }
    (stem.to_string(), None)
}

/// The notion.so address of a page id.
pub fn page_url(id: &str) -> String {
    format!("https://www.notion.so/{}", id.replace('-', "").to_ascii_lowercase())
}

/// The links of `markdown` worth crawling: web pages, not other Notion pages (which need a login
/// and are read from the export or the API instead).
pub fn web_links(markdown: &str) -> Vec<String> {
    let mut links = markdown::web_links(markdown);
    links.retain(|url| !url.starts_with("https://www.notion.so/") && !url.starts_with("https://notion.so/"));
    links
}

/// A database found in the export.
struct Database {
    id: Option<String>,
    name: String,
    /// Row title -> properties, from the CSV.
    rows: HashMap<String, serde_json::Map<String, Value>>,
}

/// A page before it becomes a document.
struct Page {
    path: String,
    title: String,
    id: Option<String>,
    body: String,
    parent: Option<String>,
    breadcrumb: Vec<String>,
    database: Option<(Option<String>, String)>,
    properties: serde_json::Map<String, Value>,
}

fn stem(path: &str) -> &str {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.rsplit_once('.').map_or(name, |(stem, _)| stem)
}

fn parent_dir(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

fn build(files: Vec<ExportFile>, attachments: &[String], problems: &mut Vec<Problem>) -> Export {
    // Databases first: their folders' pages are rows with properties.
    let mut databases: HashMap<String, Database> = HashMap::new();
    for file in files.iter().filter(|f| f.path.ends_with(".csv")) {
        let folder = file.path.trim_end_matches(".csv").trim_end_matches("_all").to_string();
        if file.path.ends_with("_all.csv") || !databases.contains_key(&folder) {
            let (name, id) = split_name(stem(&folder));
            match read_csv(&file.bytes) {
                Ok(rows) => {
                    databases.insert(folder, Database { id, name, rows });
                }
                Err(reason) => problems.push(Problem::new(&file.path, reason)),
            }
        }
    }

    let mut pages = Vec::new();
    for file in files.into_iter().filter(|f| f.path.ends_with(".md")) {
        let text = match utf8(file.bytes, &file.path) {
            Ok(text) => text,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        pages.push(parse_page(&file.path, &text, &databases));
    }

    // Ids by path, to resolve links between pages.
    let ids_by_path: HashMap<String, String> = pages
        .iter()
        .filter_map(|p| p.id.clone().map(|id| (p.path.clone(), id)))
        .collect();
    let mut children: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for page in &pages {
        if let (Some(parent), Some(id)) = (&page.parent, &page.id) {
            children.entry(parent.clone()).or_default().insert(id.clone());
        }
    }

    let documents = pages
        .into_iter()
        .map(|page| to_document(page, &ids_by_path, &children, attachments))
        .collect();
    Export {
        documents,
        problems: Vec::new(),
        attachments: 0,
    }
}

fn read_csv(bytes: &[u8]) -> Result<HashMap<String, serde_json::Map<String, Value>>, String> {
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(bytes);
    let headers = reader
        .headers()
        .map_err(|err| format!("not a readable CSV ({err}): export the database again"))?
        .clone();
    let mut rows = HashMap::new();
    for record in reader.records() {
        let record = record.map_err(|err| format!("not a readable CSV ({err}): export the database again"))?;
        let Some(title) = record.get(0) else { continue };
        let properties = headers
            .iter()
            .zip(record.iter())
            .skip(1)
            .filter(|(_, value)| !value.is_empty())
            .map(|(key, value)| (key.to_string(), Value::String(value.to_string())))
            .collect();
        rows.insert(title.to_string(), properties);
    }
    Ok(rows)
}

fn parse_page(path: &str, text: &str, databases: &HashMap<String, Database>) -> Page {
    let (file_title, id) = split_name(stem(path));
    let cleaned = markdown::clean(text);
    let (heading, body) = markdown::split_title(&cleaned);
    let title = heading.unwrap_or(file_title);

    // The folder a page sits in is its parent page's (or its database's) folder.
    let folder = parent_dir(path);
    let database = databases.get(folder);
    let parent = if let Some(db) = database {
        db.id.clone()
    } else {
        split_name(stem(folder)).1
    };
    let breadcrumb = folder
        .split('/')
        .filter(|segment| !segment.is_empty())
        .filter_map(|segment| match split_name(segment) {
            (title, Some(_)) => Some(title),
            _ => None,
        })
        .collect();

    let mut properties = serde_json::Map::new();
    let mut body = body.to_string();
    if let Some(db) = database {
        let (lines, rest) = property_lines(&body);
        properties.extend(lines);
        body = rest;
        if let Some(row) = db.rows.get(&title) {
            for (key, value) in row {
                properties.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
    }
    Page {
        path: path.to_string(),
        title,
        id,
        body,
        parent,
        breadcrumb,
        database: database.map(|db| (db.id.clone(), db.name.clone())),
        properties,
    }
}

/// A database row page opens with `Property: value` lines, then a blank line.
fn property_lines(body: &str) -> (Vec<(String, Value)>, String) {
    let mut properties = Vec::new();
    let mut consumed = 0;
    for line in body.lines() {
        let Some((key, value)) = line.split_once(": ") else {
            break;
        };
        if key.is_empty() || key.len() > 60 || key.starts_with(['#', '-', '*', '>', '|', '`']) {
            break;
        }
        properties.push((key.trim().to_string(), Value::String(value.trim().to_string())));
        consumed += line.len() + 1;
    }
    let rest = body
        .get(consumed.min(body.len())..)
        .unwrap_or("")
        .trim_start_matches('\n');
    (properties, rest.to_string())
}

/// Resolves a relative, percent-encoded link of the page at `page_path`.
fn resolve(page_path: &str, destination: &str) -> String {
    let decoded = percent_decode_str(destination).decode_utf8_lossy();
    let mut parts: Vec<&str> = parent_dir(page_path).split('/').filter(|s| !s.is_empty()).collect();
    for segment in decoded.split('/') {
        match segment {
            "." | "" => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

fn to_document(
    page: Page,
    ids_by_path: &HashMap<String, String>,
    children: &BTreeMap<String, BTreeSet<String>>,
    attachments: &[String],
) -> NewDocument {
    let mut linked_pages = BTreeSet::new();
    let mut used_attachments = BTreeSet::new();
    let content = markdown::rewrite_links(&page.body, |link| {
        if link.is_web() || link.destination.starts_with("mailto:") || link.destination.starts_with('#') {
            return None;
        }
        let target = resolve(&page.path, &link.destination);
        if let Some(id) = ids_by_path.get(&target) {
            linked_pages.insert(id.clone());
            return Some(format!("[{}]({})", link.text, page_url(id)));
        }
        let name = target.rsplit('/').next().unwrap_or(&target).to_string();
        if attachments.iter().any(|a| a.ends_with(&target)) || link.image {
            used_attachments.insert(name.clone());
        }
        // An attachment or a page missing from the export: keep its name, drop the dead path.
        Some(if link.image {
            format!("[image: {}]", if link.text.is_empty() { &name } else { &link.text })
        } else {
            format!("{} ({name})", link.text)
        })
    });
    let web = web_links(&content);
    let url = match &page.id {
        Some(id) => page_url(id),
        // Pages exported without ids (older exports) are known by their path.
        None => format!("notion-export:///{}", page.path),
    };
    let mut metadata = json!({
        "notion_id": page.id,
        "parent_id": page.parent,
        "breadcrumb": page.breadcrumb,
        "children": page.id.as_ref().and_then(|id| children.get(id)).cloned().unwrap_or_default(),
        "links": { "pages": linked_pages, "web": web },
        "attachments": used_attachments,
        "export_path": page.path,
    });
    if let Some((id, name)) = page.database {
        metadata["database"] = json!({ "id": id, "name": name });
        metadata["properties"] = Value::Object(page.properties);
    }
    NewDocument {
        source: Source::Notion,
        url,
        title: page.title,
        content: markdown::clean(&content),
        metadata,
        quality: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, text: &str) -> ExportFile {
        ExportFile {
            path: path.into(),
            bytes: text.as_bytes().to_vec(),
        }
    }

    const ROOT: &str = "0123456789abcdef0123456789abcdef";
    const CHILD: &str = "fedcba9876543210fedcba9876543210";
    const DB: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const ROW: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn export() -> Export {
        let files = vec![
            file(
                &format!("Notes {ROOT}.md"),
                &format!(
                    "# Notes\n\nSee [Bread](Notes%20{ROOT}/Bread%20{CHILD}.md) and [a site](http://web.test/a#x).\n\n![chart](Notes%20{ROOT}/chart.png)\n"
                ),
            ),
            file(
                &format!("Notes {ROOT}/Bread {CHILD}.md"),
                "# Bread\n\nFlour, water, salt.\n",
            ),
            file(
                &format!("Notes {ROOT}/Books {DB}.csv"),
                "Name,Author,Rating\nDune,Frank Herbert,5\n",
            ),
            file(
                &format!("Notes {ROOT}/Books {DB}/Dune {ROW}.md"),
                "# Dune\n\nAuthor: Frank Herbert\nStatus: Read\n\nSpice and sand.\n",
            ),
        ];
        let mut problems = Vec::new();
        let export = build(files, &[format!("Notes {ROOT}/chart.png")], &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        export
    }

    /// A zip of `entries` (name, bytes), deflated.
    fn zipped(entries: &[(&str, &[u8])]) -> Vec<u8> {
        use std::io::Write;
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, bytes) in entries {
            let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
            zip.start_file(*name, options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    /// Reads zip `bytes` within `limits`; what was read and the problems.
    fn read_within(bytes: Vec<u8>, limits: ZipLimits) -> (Vec<String>, Vec<String>) {
        let mut budget = Budget {
            limits,
            bytes_left: limits.total_bytes,
            entries_left: limits.entries,
        };
        let (mut files, mut attachments, mut problems) = (Vec::new(), Vec::new(), Vec::new());
        let mut sink = Sink {
            files: &mut files,
            attachments: &mut attachments,
            problems: &mut problems,
        };
        if let Err(problem) = read_zip(
            Cursor::new(bytes),
            "",
            "export.zip",
            0,
            u64::MAX,
            &mut budget,
            &mut sink,
        ) {
            problems.push(problem);
        }
        (
            files.into_iter().map(|f| f.path).collect(),
            problems
                .into_iter()
                .map(|p| format!("{}: {}", p.item, p.reason))
                .collect(),
        )
    }

    #[test]
    fn zip_bombs_deep_nesting_and_oversized_exports_are_refused() {
        let limits = ZipLimits::default();
        // 8 MiB of zeros deflates to a few KiB: far over 200:1.
        let zeros = vec![0u8; 8 << 20];
        let (read, problems) = read_within(zipped(&[("Bomb.md", &zeros), ("Fine.md", b"# Fine\n")]), limits);
        assert_eq!(read, vec!["Fine.md"]);
        assert!(problems.len() == 1 && problems[0].contains("zip bomb"), "{problems:?}");

        // A zip in a zip in a zip in a zip.
        let mut nested = zipped(&[("Deep.md", b"# Deep\n")]);
        for level in 0..3 {
            nested = zipped(&[(&format!("part-{level}.zip"), &nested)]);
        }
        let (read, problems) = read_within(nested, limits);
        assert!(read.is_empty(), "{read:?}");
        assert!(
            problems.len() == 1 && problems[0].contains("nested more than 3 deep"),
            "{problems:?}"
        );

        // Over the total, and over the entry count.
        let page = vec![b'a'; 600];
        let small = ZipLimits {
            total_bytes: 1000,
            ..limits
        };
        let (read, problems) = read_within(zipped(&[("A.md", &page), ("B.md", &page)]), small);
        assert_eq!(read, vec!["A.md"]);
        assert!(
            problems.len() == 1 && problems[0].contains("unpacks to more than"),
            "{problems:?}"
        );
        let few = ZipLimits { entries: 2, ..limits };
        let (read, problems) = read_within(zipped(&[("A.md", b"a"), ("B.md", b"b"), ("C.md", b"c")]), few);
        assert!(read.is_empty());
        assert!(problems.len() == 1 && problems[0].contains("3 entries"), "{problems:?}");
    }

    fn by_title<'a>(export: &'a Export, title: &str) -> &'a NewDocument {
        export.documents.iter().find(|d| d.title == title).expect(title)
    }

    #[test]
    fn names_split_into_title_and_id() {
        assert_eq!(
            split_name(&format!("My page {ROOT}")),
            ("My page".into(), Some(ROOT.into()))
        );
        assert_eq!(split_name("Plain"), ("Plain".into(), None));
        assert_eq!(
            page_url("3b1c9d6e-2f4a-4e8b-9c1d-7a5e6f8b2c10"),
            "https://www.notion.so/3b1c9d6e2f4a4e8b9c1d7a5e6f8b2c10"
        );
    }

    #[test]
    fn pages_keep_hierarchy_links_and_attachments() {
        let export = export();
        assert_eq!(export.documents.len(), 3);
        let notes = by_title(&export, "Notes");
        assert_eq!(notes.url, page_url(ROOT));
        assert!(
            notes.content.contains(&format!("[Bread]({})", page_url(CHILD))),
            "{}",
            notes.content
        );
        assert!(notes.content.contains("[image: chart]"), "{}", notes.content);
        assert!(!notes.content.starts_with("# Notes"));
        assert_eq!(notes.metadata["links"]["web"], json!(["http://web.test/a"]));
        assert_eq!(notes.metadata["links"]["pages"], json!([CHILD]));
        assert_eq!(notes.metadata["children"], json!([CHILD]));
        assert_eq!(notes.metadata["attachments"], json!(["chart.png"]));
        let bread = by_title(&export, "Bread");
        assert_eq!(bread.metadata["parent_id"], json!(ROOT));
        assert_eq!(bread.metadata["breadcrumb"], json!(["Notes"]));
    }

    #[test]
    fn database_rows_carry_their_properties() {
        let export = export();
        let dune = by_title(&export, "Dune");
        assert_eq!(dune.content, "Spice and sand.");
        assert_eq!(dune.metadata["database"]["name"], "Books");
        assert_eq!(dune.metadata["parent_id"], json!(DB));
        assert_eq!(dune.metadata["properties"]["Author"], "Frank Herbert");
        assert_eq!(dune.metadata["properties"]["Status"], "Read");
        assert_eq!(dune.metadata["properties"]["Rating"], "5", "from the CSV");
    }
}
