//! A directory written in full or not at all: files go into a hidden sibling staging directory,
//! which is renamed to the target at the end. A crash or an error midway leaves nothing at the
//! target (the staging directory is removed when dropped), and a reader never sees half of it.
//! Exports of datasets and models, and the service's unpacked model cache, are written this way.

use std::io;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// A directory being written; [`StagedDir::commit`] moves it into place.
pub struct StagedDir {
    staging: TempDir,
    target: PathBuf,
}

impl StagedDir {
    /// Starts writing `target`, which must not exist or be empty (it is never overwritten).
    pub fn new(target: &Path) -> io::Result<Self> {
        if target.exists() && std::fs::read_dir(target)?.next().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} is not empty: write into a new or empty directory", target.display()),
            ));
        }
        let parent = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)?;
        let staging = tempfile::Builder::new().prefix(".engram-staging-").tempdir_in(parent)?;
        Ok(StagedDir {
            staging,
            target: target.to_path_buf(),
        })
    }

    /// Where to write the files.
    pub fn path(&self) -> &Path {
        self.staging.path()
    }

    /// Moves the written directory to the target.
    pub fn commit(self) -> io::Result<()> {
        if self.target.exists() {
            // Empty, as checked at the start: rename cannot replace a directory on every platform.
            std::fs::remove_dir(&self.target)?;
        }
        let staged = self.staging.keep();
        std::fs::rename(&staged, &self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_appears_only_on_commit_and_a_full_one_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("out");
        let staged = StagedDir::new(&target).unwrap();
        std::fs::write(staged.path().join("a.txt"), "a").unwrap();
        assert!(!target.exists(), "nothing at the target before commit");
        staged.commit().unwrap();
        assert_eq!(std::fs::read_to_string(target.join("a.txt")).unwrap(), "a");
        let refused = StagedDir::new(&target).err().unwrap();
        assert!(refused.to_string().contains("not empty"), "{refused}");

        let dropped = root.path().join("dropped");
        drop(StagedDir::new(&dropped).unwrap());
        assert!(!dropped.exists());
        let leftovers = std::fs::read_dir(root.path()).unwrap().count();
        assert_eq!(leftovers, 1, "an abandoned staging directory is removed");
    }
}
