//! A directory as artifacts: each file stored by its hash, then a manifest naming them by path,
//! whose own hash stands for the whole directory. A published dataset and a model in Hugging Face
//! layout are both such trees.
//!
//! The manifest is stored last, so a manifest only ever names files already stored; a crash while
//! storing leaves unreferenced files (harmless, deduplicated on the next try), never a manifest with
//! holes. Reading a tree back stages its files beside the target and renames the directory into
//! place: a reader never sees half a tree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ArtifactStore;
use crate::staged_dir::StagedDir;
use crate::{Error, Result};

/// A tree's files, by path, with their hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// What kind of tree this is (`engram-dataset/1`, `engram-model-hf/1`); readers check it.
    pub format: String,
    /// Path in the directory (`/`-separated) → sha256 and size.
    pub files: BTreeMap<String, FileEntry>,
}

/// One file of a tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// sha256 of its bytes (its artifact hash).
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
}

/// Where a file of a tree being stored comes from.
#[derive(Debug, Clone)]
pub enum Content {
    /// Bytes in memory.
    Bytes(Vec<u8>),
    /// A file on disk, streamed.
    File(PathBuf),
}

fn safe(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != ".." && part != ".")
}

impl ArtifactStore {
    /// Stores `files` (path → content) and their manifest of `format`; returns the manifest's hash.
    pub async fn put_tree(&self, format: &str, files: &BTreeMap<String, Content>) -> Result<String> {
        let mut manifest = Manifest {
            format: format.into(),
            files: BTreeMap::new(),
        };
        for (path, content) in files {
            if !safe(path) {
                return Err(Error::Invalid(format!("{path:?} is not a relative path inside a tree")));
            }
            let (sha256, bytes) = match content {
                Content::Bytes(bytes) => (self.put(bytes.clone()).await?, bytes.len() as u64),
                Content::File(file) => {
                    let size = std::fs::metadata(file)
                        .map_err(|e| Error::Invalid(format!("{}: {e}", file.display())))?
                        .len();
                    (self.put_file(file).await?, size)
                }
            };
            manifest.files.insert(path.clone(), FileEntry { sha256, bytes });
        }
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Invalid(e.to_string()))?;
        self.put(json).await
    }

    /// Stores every regular file under `dir` (recursively) as a tree of `format`.
    pub async fn put_dir(&self, format: &str, dir: &Path) -> Result<String> {
        let mut files = BTreeMap::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(current) = pending.pop() {
            let entries =
                std::fs::read_dir(&current).map_err(|e| Error::Invalid(format!("{}: {e}", current.display())))?;
            for entry in entries {
                let path = entry
                    .map_err(|e| Error::Invalid(format!("{}: {e}", current.display())))?
                    .path();
                if path.is_dir() {
                    pending.push(path);
                } else if path.is_file() {
                    let relative = path
                        .strip_prefix(dir)
                        .map_err(|e| Error::Invalid(e.to_string()))?
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join("/");
                    files.insert(relative, Content::File(path));
                }
            }
        }
        if files.is_empty() {
            return Err(Error::Invalid(format!("{} holds no files", dir.display())));
        }
        self.put_tree(format, &files).await
    }

    /// The manifest `hash` names, checked to be of `format`.
    pub async fn tree(&self, hash: &str, format: &str) -> Result<Manifest> {
        let bytes = self.get(hash).await?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Corrupt(format!("artifact {hash} is not a tree manifest: {e}")))?;
        if manifest.format != format {
            return Err(Error::Invalid(format!(
                "artifact {hash} is a {:?} tree; this reader expects {format:?}",
                manifest.format
            )));
        }
        Ok(manifest)
    }

    /// Writes the tree `hash` names into `dir`, which must not exist or be empty. The files are
    /// written to a sibling staging directory first (each verified against its hash) and moved
    /// into place at the end: an interrupted read leaves nothing at `dir`.
    pub async fn get_tree(&self, hash: &str, format: &str, dir: &Path) -> Result<Manifest> {
        let io = |path: &Path, e: std::io::Error| Error::Invalid(format!("{}: {e}", path.display()));
        let staged = StagedDir::new(dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::Invalid(e.to_string()),
            _ => io(dir, e),
        })?;
        let manifest = self.tree(hash, format).await?;
        for (path, entry) in &manifest.files {
            if !safe(path) {
                return Err(Error::Corrupt(format!(
                    "tree manifest {hash} names an unsafe path {path:?}"
                )));
            }
            let target = staged.path().join(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
            }
            self.get_to_file(&entry.sha256, &target).await?;
        }
        staged.commit().map_err(|e| io(dir, e))?;
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_directory_round_trips_and_its_hash_names_its_content() {
        let home = tempfile::tempdir().unwrap();
        let store = ArtifactStore::local(&home.path().join("artifacts")).unwrap();
        let source = home.path().join("model");
        std::fs::create_dir_all(source.join("sub")).unwrap();
        std::fs::write(source.join("config.json"), b"{}").unwrap();
        std::fs::write(source.join("sub/weights.bin"), vec![7u8; 3000]).unwrap();
        let hash = store.put_dir("test/1", &source).await.unwrap();
        assert_eq!(
            store.put_dir("test/1", &source).await.unwrap(),
            hash,
            "same content, same hash"
        );

        let copy = home.path().join("copy");
        let manifest = store.get_tree(&hash, "test/1", &copy).await.unwrap();
        assert_eq!(manifest.files.len(), 2);
        assert_eq!(std::fs::read(copy.join("sub/weights.bin")).unwrap(), vec![7u8; 3000]);
        assert!(
            store
                .get_tree(&hash, "test/1", &copy)
                .await
                .unwrap_err()
                .to_string()
                .contains("not empty")
        );
        let other = store
            .get_tree(&hash, "other/1", &home.path().join("x"))
            .await
            .unwrap_err();
        assert!(other.to_string().contains("expects \"other/1\""), "{other}");
        assert!(!home.path().join("x").exists(), "a refused read writes nothing");

        let mut unsafe_paths = BTreeMap::new();
        unsafe_paths.insert("../escape".to_string(), Content::Bytes(b"x".to_vec()));
        assert!(store.put_tree("test/1", &unsafe_paths).await.is_err());
    }
}
