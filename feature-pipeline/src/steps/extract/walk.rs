//! Walking input folders and reading their files safely.
//!
//! A folder given to `extract` is input from outside, and a file system holds more than files: a
//! symlink back to a parent folder loops a naive walk until its stack overflows, and reading a FIFO
//! or a character device (`/dev/zero`, a named pipe nobody writes to) blocks or never ends. So the
//! walk follows symlinks but visits each real folder once (by device and inode), and lists only
//! regular files, naming everything else as a problem; a file is opened without blocking, checked
//! to still be a regular file (it may have been swapped since the walk), and read only up to the
//! limit, whatever size it declared.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{Problem, too_large};

/// What a walk found.
#[derive(Debug, Default)]
pub struct Walk {
    /// Regular files, sorted.
    pub files: Vec<PathBuf>,
    /// What was not walked into or listed, and why.
    pub problems: Vec<Problem>,
}

/// A folder's identity: symlinks to it share it.
#[cfg(unix)]
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn identity(_meta: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// What a non-regular, non-folder entry is, in words.
fn special_kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let kind = meta.file_type();
        if kind.is_fifo() {
            return "a named pipe (FIFO)";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_char_device() || kind.is_block_device() {
            return "a device";
        }
    }
    let _ = meta;
    "not a regular file"
}

/// The regular files under `root` (or `root` itself), skipping names that start with `.` when
/// `skip_hidden`. Fails only when `root` cannot be read.
pub fn walk(root: &Path, skip_hidden: bool) -> Result<Walk, Problem> {
    let meta = std::fs::metadata(root).map_err(|err| {
        Problem::new(
            root.display().to_string(),
            format!("cannot read it ({err}): give an existing folder or file"),
        )
    })?;
    let mut walk = Walk::default();
    if meta.is_file() {
        walk.files.push(root.to_path_buf());
        return Ok(walk);
    }
    if !meta.is_dir() {
        return Err(Problem::new(
            root.display().to_string(),
            format!("{}: give a folder or a file", special_kind(&meta)),
        ));
    }
    let mut seen = HashSet::from([identity(&meta)]);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) => {
                walk.problems.push(Problem::new(
                    dir.display().to_string(),
                    format!("cannot list it: {err}"),
                ));
                continue;
            }
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let hidden = entry.file_name().to_str().is_some_and(|n| n.starts_with('.'));
            if skip_hidden && hidden {
                continue;
            }
            // Follows a symlink to what it names; a dangling one is a problem, not a crash.
            let meta = match std::fs::metadata(&path) {
                Ok(meta) => meta,
                Err(err) => {
                    walk.problems.push(Problem::new(
                        path.display().to_string(),
                        format!("cannot read it: {err}"),
                    ));
                    continue;
                }
            };
            if meta.is_dir() {
                if seen.insert(identity(&meta)) {
                    stack.push(path);
                } else {
                    walk.problems.push(Problem::new(
                        path.display().to_string(),
                        "a link to a folder already read (a symlink loop?): skipped",
                    ));
                }
            } else if meta.is_file() {
                walk.files.push(path);
            } else {
                walk.problems.push(Problem::new(
                    path.display().to_string(),
                    format!("{}: skipped, only regular files are read", special_kind(&meta)),
                ));
            }
        }
    }
    walk.files.sort();
    Ok(walk)
}

/// Opens `path` for reading without ever blocking on it, and only if it is a regular file.
pub fn open_regular(path: &Path) -> Result<File, Problem> {
    let shown = path.display().to_string();
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // A FIFO would block the open itself until a writer comes; non-blocking, it opens at once
        // and is then refused below.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options
        .open(path)
        .map_err(|err| Problem::new(&shown, format!("cannot open it: {err}")))?;
    let meta = file
        .metadata()
        .map_err(|err| Problem::new(&shown, format!("cannot read it: {err}")))?;
    if !meta.is_file() {
        return Err(Problem::new(
            &shown,
            format!("{}: skipped, only regular files are read", special_kind(&meta)),
        ));
    }
    Ok(file)
}

/// The bytes of regular file `path`, refused when over `max_bytes` (counted while reading, not
/// taken from the file's declared size).
pub fn read_limited(path: &Path, max_bytes: u64) -> Result<Vec<u8>, Problem> {
    let shown = path.display().to_string();
    let file = open_regular(path)?;
    let declared = file.metadata().map(|m| m.len()).unwrap_or(0);
    if declared > max_bytes {
        return Err(Problem::new(&shown, too_large(declared, max_bytes)));
    }
    let mut bytes = Vec::with_capacity(declared as usize);
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|err| Problem::new(&shown, format!("cannot read it: {err}")))?;
    if bytes.len() as u64 > max_bytes {
        return Err(Problem::new(&shown, too_large(bytes.len() as u64, max_bytes)));
    }
    Ok(bytes)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn symlink_loops_fifos_and_dangling_links_are_problems_not_hangs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("notes")).unwrap();
        std::fs::write(root.join("notes/a.md"), "# A\n").unwrap();
        std::os::unix::fs::symlink(root, root.join("notes/loop")).unwrap();
        std::os::unix::fs::symlink(root.join("missing"), root.join("dangling.md")).unwrap();
        let fifo = root.join("pipe.md");
        let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a file system node.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);

        let walk = walk(root, true).unwrap();
        assert_eq!(walk.files, vec![root.join("notes/a.md")]);
        let reasons: Vec<String> = walk
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.item, p.reason))
            .collect();
        assert_eq!(reasons.len(), 3, "{reasons:#?}");
        assert!(reasons.iter().any(|r| r.contains("loop") && r.contains("symlink loop")));
        assert!(reasons.iter().any(|r| r.contains("pipe.md") && r.contains("FIFO")));
        assert!(reasons.iter().any(|r| r.contains("dangling.md")));

        // Read directly, the FIFO is refused at once instead of blocking.
        let err = read_limited(&fifo, 1024).unwrap_err();
        assert!(err.reason.contains("FIFO"), "{}", err.reason);
        let err = read_limited(Path::new("/dev/zero"), 1024).unwrap_err();
        assert!(err.reason.contains("device"), "{}", err.reason);
        assert_eq!(
            read_limited(&root.join("notes/a.md"), 3).unwrap_err().reason,
            too_large(4, 3)
        );
    }
}
