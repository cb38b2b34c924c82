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
//!
//! Memory is bounded by the largest page, not the export: a first pass lists the pages (checking
//! every limit while decompressing, keeping only the databases' CSVs, which row pages need, and
//! spilling nested zips to temporary files) and works out the structure from the paths — ids,
//! parents, children; a second pass reads one page at a time and hands its document on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Seek};
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

/// Where a page's bytes are read in the second pass.
#[derive(Debug)]
enum Location {
    /// A file of an export folder.
    File(std::path::PathBuf),
    /// Entry `index` of archive `archive` of [`Listing::archives`], at most `cap` bytes.
    Entry { archive: usize, index: usize, cap: u64 },
}

/// A page found by the first pass.
#[derive(Debug)]
struct Listed {
    path: String,
    location: Location,
}

/// A zip to read pages from: the export itself, or a nested part spilled to a temporary file.
#[derive(Debug)]
enum Archive {
    Path(std::path::PathBuf),
    Spilled(std::fs::File),
}

impl Archive {
    fn open(&self) -> std::io::Result<std::fs::File> {
        match self {
            Archive::Path(path) => std::fs::File::open(path),
            Archive::Spilled(file) => file.try_clone(),
        }
    }
}

/// What the first pass found.
#[derive(Debug, Default)]
struct Listing {
    pages: Vec<Listed>,
    tables: Vec<ExportFile>,
    attachments: Vec<String>,
    archives: Vec<Archive>,
    problems: Vec<Problem>,
}

/// What reading one export did (its documents were handed on as they were read).
#[derive(Debug, Default)]
pub struct Export {
    /// Pages read as documents.
    pub documents: usize,
    /// Files that could not be read.
    pub problems: Vec<Problem>,
    /// Attachments found (not documents, listed on their page).
    pub attachments: usize,
}

/// Reads the export at `path`, a folder or a zip file, handing each page's document to `emit` as
/// it is read. Fails only when `path` itself cannot be read; a bad file inside becomes a
/// [`Problem`].
pub fn read(path: &Path, max_bytes: u64, emit: &mut dyn FnMut(NewDocument)) -> Result<Export, Problem> {
    let shown = path.display().to_string();
    let metadata = std::fs::metadata(path).map_err(|err| {
        Problem::new(
            &shown,
            format!("cannot read it ({err}): give the folder or .zip of a Notion \"Markdown & CSV\" export"),
        )
    })?;
    let mut listing = Listing::default();
    if metadata.is_dir() {
        walk_dir(path, max_bytes, &mut listing);
    } else {
        let file = std::fs::File::open(path).map_err(|err| Problem::new(&shown, format!("cannot open it: {err}")))?;
        let limits = ZipLimits::default();
        let mut budget = Budget {
            limits,
            bytes_left: limits.total_bytes,
            entries_left: limits.entries,
        };
        listing.archives.push(Archive::Path(path.to_path_buf()));
        read_zip(file, 0, "", &shown, 0, max_bytes, &mut budget, &mut listing)?;
    }
    let Listing {
        pages,
        tables,
        attachments,
        archives,
        mut problems,
    } = listing;
    let structure = Structure::new(&tables, pages.iter().map(|p| p.path.as_str()), &mut problems);
    let mut documents = 0;
    // Pages in the order listed, each archive opened once for all its pages in turn.
    let mut open: Option<(usize, zip::ZipArchive<std::fs::File>)> = None;
    for page in pages {
        let bytes = match page.location {
            Location::File(file) => walk::read_limited(&file, max_bytes),
            Location::Entry { archive, index, cap } => {
                if open.as_ref().is_none_or(|(which, _)| *which != archive) {
                    open = archives[archive]
                        .open()
                        .ok()
                        .and_then(|file| zip::ZipArchive::new(file).ok())
                        .map(|zip| (archive, zip));
                }
                read_entry(
                    open.as_mut().map(|(_, zip)| zip),
                    index,
                    cap,
                    &format!("{shown}:{}", page.path),
                )
            }
        };
        let text = match bytes.and_then(|bytes| utf8(bytes, &page.path)) {
            Ok(text) => text,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        emit(structure.document(&page.path, &text, &attachments));
        documents += 1;
    }
    Ok(Export {
        documents,
        problems,
        attachments: attachments.len(),
    })
}

/// Entry `index` of `zip` again (the first pass checked it against the limits), within `cap`.
fn read_entry(
    zip: Option<&mut zip::ZipArchive<std::fs::File>>,
    index: usize,
    cap: u64,
    item: &str,
) -> Result<Vec<u8>, Problem> {
    let changed = || Problem::new(item, "the zip changed while it was read: extract it again");
    let zip = zip.ok_or_else(changed)?;
    let entry = zip.by_index(index).map_err(|_| changed())?;
    let mut bytes = Vec::new();
    entry
        .take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|err| Problem::new(item, format!("cannot decompress it ({err}): the zip is damaged")))?;
    if bytes.len() as u64 > cap {
        return Err(changed());
    }
    Ok(bytes)
}

fn is_page_or_table(path: &str) -> bool {
    path.ends_with(".md") || path.ends_with(".csv")
}

fn walk_dir(root: &Path, max_bytes: u64, listing: &mut Listing) {
    let found = match walk::walk(root, false) {
        Ok(found) => found,
        Err(problem) => {
            listing.problems.push(problem);
            return;
        }
    };
    listing.problems.extend(found.problems);
    for path in found.files {
        let relative = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        if relative.ends_with(".csv") {
            match walk::read_limited(&path, max_bytes) {
                Ok(bytes) => listing.tables.push(ExportFile { path: relative, bytes }),
                Err(problem) => listing.problems.push(problem),
            }
        } else if relative.ends_with(".md") {
            listing.pages.push(Listed {
                path: relative,
                location: Location::File(path),
            });
        } else {
            listing.attachments.push(relative);
        }
    }
}

/// Lists the pages, tables and attachments of the zip `reader` (archive `archive_id` of `sink`),
/// decompressing every entry to count it against the limits; nested zips are spilled to temporary
/// files and listed too.
#[allow(clippy::too_many_arguments)] // the zip, where it sits, and the state of the whole read
fn read_zip<R: Read + Seek>(
    reader: R,
    archive_id: usize,
    prefix: &str,
    shown: &str,
    depth: usize,
    max_bytes: u64,
    budget: &mut Budget,
    sink: &mut Listing,
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
        // Kept: tables (row pages need them) and nested zips (spilled to a file). Pages are only
        // counted here and read again, one at a time, by the second pass.
        let mut kept = if nested {
            match tempfile::tempfile() {
                Ok(file) => Kept::Spilled(file),
                Err(err) => {
                    sink.problems.push(Problem::new(
                        item,
                        format!("cannot spill it to a temporary file: {err}"),
                    ));
                    continue;
                }
            }
        } else if name.ends_with(".csv") {
            Kept::Bytes(Vec::with_capacity(entry.size().min(cap).min(RATIO_FLOOR) as usize))
        } else {
            Kept::Counted
        };
        let read = match &mut kept {
            Kept::Spilled(file) => std::io::copy(&mut (&mut entry).take(cap.saturating_add(1)), file),
            Kept::Bytes(bytes) => (&mut entry)
                .take(cap.saturating_add(1))
                .read_to_end(bytes)
                .map(|n| n as u64),
            Kept::Counted => std::io::copy(&mut (&mut entry).take(cap.saturating_add(1)), &mut std::io::sink()),
        };
        let size = match read {
            Ok(size) => size,
            Err(err) => {
                sink.problems.push(Problem::new(
                    item,
                    format!("cannot decompress it ({err}): the zip is damaged"),
                ));
                continue;
            }
        };
        if size > cap {
            let reason = if cap == by_ratio && by_ratio < limit {
                format!(
                    "decompresses more than {}:1 (declared {} bytes): not read, it looks like a zip bomb",
                    limits.ratio,
                    entry.size()
                )
            } else {
                over(size)
            };
            sink.problems.push(Problem::new(item, reason));
            continue;
        }
        budget.bytes_left -= size;
        match kept {
            Kept::Spilled(mut file) => {
                let nested_prefix = format!("{}/", name.trim_end_matches(".zip"));
                let reader = match file.rewind().and_then(|()| file.try_clone()) {
                    Ok(reader) => reader,
                    Err(err) => {
                        sink.problems
                            .push(Problem::new(item, format!("cannot read its temporary file: {err}")));
                        continue;
                    }
                };
                let nested_archive = sink.archives.len();
                sink.archives.push(Archive::Spilled(file));
                if let Err(problem) = read_zip(
                    reader,
                    nested_archive,
                    &nested_prefix,
                    &item,
                    depth + 1,
                    max_bytes,
                    budget,
                    sink,
                ) {
                    sink.problems.push(problem);
                }
            }
            Kept::Bytes(bytes) => sink.tables.push(ExportFile { path: name, bytes }),
            Kept::Counted => sink.pages.push(Listed {
                path: name,
                location: Location::Entry {
                    archive: archive_id,
                    index,
                    cap,
                },
            }),
        }
    }
    Ok(())
}

/// What the first pass keeps of an entry.
enum Kept {
    /// A nested zip, in a temporary file.
    Spilled(std::fs::File),
    /// A table's bytes.
    Bytes(Vec<u8>),
    /// Nothing: a page, counted only.
    Counted,
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

/// What the pages' documents need beyond their own text, worked out from the paths and the
/// tables: the databases, every page's id by path (to resolve links) and every page's children.
struct Structure {
    databases: HashMap<String, Database>,
    ids_by_path: HashMap<String, String>,
    children: BTreeMap<String, BTreeSet<String>>,
}

impl Structure {
    fn new<'p>(tables: &[ExportFile], pages: impl Iterator<Item = &'p str>, problems: &mut Vec<Problem>) -> Self {
        // Databases first: their folders' pages are rows with properties.
        let mut databases: HashMap<String, Database> = HashMap::new();
        for file in tables {
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
        let mut ids_by_path = HashMap::new();
        let mut children: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for path in pages {
            let Some(id) = split_name(stem(path)).1 else {
                continue;
            };
            if let Some(parent) = parent_of(path, &databases) {
                children.entry(parent).or_default().insert(id.clone());
            }
            ids_by_path.insert(path.to_string(), id);
        }
        Self {
            databases,
            ids_by_path,
            children,
        }
    }

    /// The document of the page at `path` with markdown `text`.
    fn document(&self, path: &str, text: &str, attachments: &[String]) -> NewDocument {
        let page = parse_page(path, text, &self.databases);
        to_document(page, &self.ids_by_path, &self.children, attachments)
    }
}

/// The id of the page's parent: its database's, or the page whose folder it sits in.
fn parent_of(path: &str, databases: &HashMap<String, Database>) -> Option<String> {
    let folder = parent_dir(path);
    match databases.get(folder) {
        Some(db) => db.id.clone(),
        None => split_name(stem(folder)).1,
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
    let parent = parent_of(path, databases);
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
    use std::io::Cursor;

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

    fn export() -> Vec<NewDocument> {
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
        let (tables, pages): (Vec<ExportFile>, Vec<ExportFile>) =
            files.into_iter().partition(|f| f.path.ends_with(".csv"));
        let structure = Structure::new(&tables, pages.iter().map(|p| p.path.as_str()), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let attachments = [format!("Notes {ROOT}/chart.png")];
        pages
            .iter()
            .map(|p| structure.document(&p.path, std::str::from_utf8(&p.bytes).unwrap(), &attachments))
            .collect()
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
        let mut listing = Listing::default();
        if let Err(problem) = read_zip(
            Cursor::new(bytes),
            0,
            "",
            "export.zip",
            0,
            u64::MAX,
            &mut budget,
            &mut listing,
        ) {
            listing.problems.push(problem);
        }
        (
            listing
                .pages
                .into_iter()
                .map(|p| p.path)
                .chain(listing.tables.into_iter().map(|t| t.path))
                .collect(),
            listing
                .problems
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

    fn by_title<'a>(export: &'a [NewDocument], title: &str) -> &'a NewDocument {
        export.iter().find(|d| d.title == title).expect(title)
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
        assert_eq!(export.len(), 3);
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
