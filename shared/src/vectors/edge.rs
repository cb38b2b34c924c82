//! The embedded vector index: one qdrant-edge shard directory per version under `ENGRAM_HOME/vectors`.
//!
//! A qdrant-edge shard is owned by one process at a time (its WAL directory is locked with
//! `flock`). The layout is built around that:
//! - a version is written by the one process that created it, then sealed: flushed, optimised and
//!   marked with a `SEALED` file, after which nobody writes to it again;
//! - a reader opens a sealed version in place; if another process holds it, the reader opens a
//!   private copy instead (under `vectors/.readers/`, removed when closed). Copies are cheap for
//!   the corpora an embedded index serves; larger ones belong on a Qdrant server. Each copy has a
//!   lock file its process holds (`flock`) while the copy is open: a process that starts removes
//!   only the copies whose lock it can take, those of processes that are gone;
//! - a version is opened off the async runtime's threads (copying one takes a while), and a
//!   reader [`release`](VectorIndex::release)s a version it no longer serves;
//! - the alias is a small JSON file replaced by an atomic rename, so it moves in one step.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use qdrant_edge::{
    AnyVariants, Condition, CountRequest, Distance as EdgeDistance, EdgeConfig, EdgeShard, EdgeSparseVectorParams,
    EdgeVectorParams, FieldCondition, Filter, Match, NamedQuery, PointId, PointInsertOperations, PointOperations,
    PointStruct, QueryEnum, SearchRequest, SparseVector as EdgeSparseVector, UpdateOperation, ValueVariants, Vector,
    VectorInternal, VectorStructInternal, WithPayloadInterface, WithVector,
};

use super::{
    ALIAS, ChunkFilter, ChunkPoint, IndexSpec, QueryVector, SearchHit, SearchQuery, SparseVector, VectorIndex,
    check_dimensions, check_query_dimension, collection_name, parse_collection_name,
};
use crate::{Error, Result};

const BACKEND: &str = "qdrant-edge";
const DENSE: &str = "dense";
const SPARSE: &str = "sparse";
const SEALED: &str = "SEALED";
const SPEC: &str = "engram-spec.json";
const ALIASES: &str = "aliases.json";
const READERS: &str = ".readers";
const BATCH: usize = 256;

/// A shard this process has open, and the private copy it lives in when it is one.
/// Fields drop in order: the shard flushes and closes first, then its copy is removed.
struct OpenShard {
    shard: EdgeShard,
    spec: IndexSpec,
    _private_copy: Option<PrivateCopy>,
}

/// A reader's private copy of a sealed version, removed when the reader closes it. Its lock file
/// (`<copy>.lock`, locked before the copy is made) tells other processes the copy is in use.
struct PrivateCopy {
    dir: PathBuf,
    lock: PathBuf,
    _held: fs::File,
}

impl PrivateCopy {
    /// Reserves a copy directory under `readers`: its lock file exists only already locked (made
    /// under a temporary name, locked, then renamed), so no other process can see it unlocked.
    fn reserve(readers: &Path, name: &str) -> Result<Self> {
        let dir = readers.join(name);
        let lock = readers.join(format!("{name}.lock"));
        let staging = readers.join(format!("{name}.lock-new"));
        let held = fs::File::create(&staging).map_err(|e| io(&staging, e))?;
        held.try_lock()
            .map_err(|e| backend(format!("{}: cannot lock: {e}", staging.display())))?;
        fs::rename(&staging, &lock).map_err(|e| io(&lock, e))?;
        Ok(PrivateCopy { dir, lock, _held: held })
    }
}

impl Drop for PrivateCopy {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_file(&self.lock);
    }
}

/// Removes the reader copies under `readers` whose process is gone: those whose lock can be taken,
/// and those without a lock file. Copies of running processes are left alone.
fn remove_abandoned_copies(readers: &Path) {
    let Ok(entries) = fs::read_dir(readers) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".lock-new") {
            // A reservation that was never completed (its process died between create and rename),
            // or one completing right now: only one that can be locked is abandoned.
            if let Ok(file) = fs::File::open(&path)
                && file.try_lock().is_ok()
            {
                let _ = fs::remove_file(&path);
            }
            continue;
        }
        if name.ends_with(".lock") {
            continue;
        }
        let lock = readers.join(format!("{name}.lock"));
        let abandoned = match fs::File::open(&lock) {
            Ok(file) => file.try_lock().is_ok(),
            Err(_) => true,
        };
        if abandoned {
            let _ = fs::remove_dir_all(&path);
            let _ = fs::remove_file(&lock);
        }
    }
}

/// Versions of the index as qdrant-edge shards in a directory.
pub struct EdgeVectorIndex {
    shards: Arc<Shards>,
}

/// The directory and the shards this process has open (shared with blocking tasks).
struct Shards {
    root: PathBuf,
    open: Mutex<HashMap<u64, Arc<OpenShard>>>,
}

impl std::fmt::Debug for EdgeVectorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeVectorIndex")
            .field("root", &self.shards.root)
            .finish()
    }
}

fn backend(err: impl std::fmt::Display) -> Error {
    Error::backend(BACKEND, err)
}

fn io(path: &Path, err: std::io::Error) -> Error {
    Error::backend(BACKEND, format!("{}: {err}", path.display()))
}

impl EdgeVectorIndex {
    /// Opens the index directory at `root`, creating it if needed.
    pub fn open(root: &Path) -> Result<Self> {
        fs::create_dir_all(root.join(READERS)).map_err(|e| Error::Config {
            variable: "ENGRAM_HOME",
            address: root.display().to_string(),
            reason: format!("cannot create the vector index directory: {e}"),
            hint: "Point ENGRAM_HOME at a writable directory, or set ENGRAM_QDRANT_URL to use a Qdrant server.".into(),
        })?;
        // Copies left by readers that died without cleaning up (never those of a live process).
        remove_abandoned_copies(&root.join(READERS));
        Ok(EdgeVectorIndex {
            shards: Arc::new(Shards {
                root: root.to_path_buf(),
                open: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The shard of `version`, opened on a blocking thread when it is not open yet (opening may
    /// copy the whole version).
    async fn shard_async(&self, version: u64) -> Result<Arc<OpenShard>> {
        if let Some(open) = self.shards.cached(version) {
            return Ok(open);
        }
        let shards = self.shards.clone();
        blocking(move || shards.shard(version)).await
    }
}

impl Shards {
    fn version_dir(&self, version: u64) -> PathBuf {
        self.root.join(collection_name(version))
    }

    fn is_sealed(&self, version: u64) -> bool {
        self.version_dir(version).join(SEALED).exists()
    }

    fn read_spec(&self, version: u64) -> Result<IndexSpec> {
        let path = self.version_dir(version).join(SPEC);
        let text = fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::not_found(format!("index version {}", collection_name(version))),
            _ => io(&path, e),
        })?;
        serde_json::from_str(&text).map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))
    }

    fn cached(&self, version: u64) -> Option<Arc<OpenShard>> {
        self.open.lock().ok()?.get(&version).cloned()
    }

    fn remember(&self, version: u64, shard: OpenShard) -> Arc<OpenShard> {
        let shard = Arc::new(shard);
        if let Ok(mut open) = self.open.lock() {
            open.entry(version).or_insert_with(|| shard.clone()).clone()
        } else {
            shard
        }
    }

    fn forget(&self, version: u64) -> Option<Arc<OpenShard>> {
        self.open.lock().ok()?.remove(&version)
    }

    /// The shard of `version`, opened in place or, when another process owns it, as a private copy.
    fn shard(&self, version: u64) -> Result<Arc<OpenShard>> {
        if let Some(open) = self.cached(version) {
            return Ok(open);
        }
        let spec = self.read_spec(version)?;
        let dir = self.version_dir(version);
        match EdgeShard::load(&dir, None) {
            Ok(shard) => Ok(self.remember(
                version,
                OpenShard {
                    shard,
                    spec,
                    _private_copy: None,
                },
            )),
            Err(err) if self.is_sealed(version) => {
                tracing::debug!(version, %err, "index version is held by another process; reading a private copy");
                // Owned before it is filled, so a failed copy is removed too.
                let copy = PrivateCopy::reserve(
                    &self.root.join(READERS),
                    &format!(
                        "{}-{}-{}",
                        collection_name(version),
                        std::process::id(),
                        uuid::Uuid::new_v4()
                    ),
                )?;
                copy_dir(&dir, &copy.dir)?;
                let shard = EdgeShard::load(&copy.dir, None).map_err(backend)?;
                Ok(self.remember(
                    version,
                    OpenShard {
                        shard,
                        spec,
                        _private_copy: Some(copy),
                    },
                ))
            }
            Err(err) => Err(Error::Conflict(format!(
                "index version {} is being built by another process and cannot be opened: {err}",
                collection_name(version)
            ))),
        }
    }

    fn writable(&self, version: u64) -> Result<Arc<OpenShard>> {
        if self.is_sealed(version) {
            return Err(Error::Conflict(format!(
                "index version {} is sealed and immutable; build a new version instead",
                collection_name(version)
            )));
        }
        self.shard(version)
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(backend)?
}

fn edge_distance(distance: super::Distance) -> EdgeDistance {
    match distance {
        super::Distance::Cosine => EdgeDistance::Cosine,
        super::Distance::Dot => EdgeDistance::Dot,
        super::Distance::Euclid => EdgeDistance::Euclid,
    }
}

fn edge_filter(filter: &ChunkFilter) -> Result<Option<Filter>> {
    let mut must = Vec::new();
    if let Some(source) = filter.source {
        must.push(Condition::Field(FieldCondition::new_match(
            "source".try_into().map_err(|_| Error::Invalid("payload key".into()))?,
            Match::new_value(ValueVariants::String(source.as_str().to_string())),
        )));
    }
    if !filter.doc_ids.is_empty() {
        must.push(Condition::Field(FieldCondition::new_match(
            "doc_id".try_into().map_err(|_| Error::Invalid("payload key".into()))?,
            Match::new_any(AnyVariants::Strings(filter.doc_ids.iter().cloned().collect())),
        )));
    }
    Ok((!must.is_empty()).then(|| Filter {
        must: Some(must),
        should: None,
        min_should: None,
        must_not: None,
    }))
}

/// Writes `bytes` to `path` so that readers see the old file or the new one, never a mix.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut file = fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| io(&tmp, e))?;
    file.sync_all().map_err(|e| io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    if let Some(dir) = path.parent().and_then(|parent| fs::File::open(parent).ok()) {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).map_err(|e| io(to, e))?;
    for entry in fs::read_dir(from).map_err(|e| io(from, e))? {
        let entry = entry.map_err(|e| io(from, e))?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type().map_err(|e| io(&entry.path(), e))?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_file() {
            fs::copy(entry.path(), &target).map_err(|e| io(&target, e))?;
        }
    }
    Ok(())
}

#[async_trait]
impl VectorIndex for EdgeVectorIndex {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn release(&self, version: u64) {
        // The shard closes (and its private copy goes) when the last search using it ends.
        drop(self.shards.forget(version));
    }

    async fn create_version(&self, version: u64, spec: IndexSpec) -> Result<()> {
        let dir = self.shards.version_dir(version);
        if dir.exists() {
            return Err(Error::Conflict(format!(
                "index version {} already exists; versions are built once",
                collection_name(version)
            )));
        }
        fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let spec_json = serde_json::to_vec_pretty(&spec).map_err(backend)?;
        write_atomically(&dir.join(SPEC), &spec_json)?;
        let config = EdgeConfig::builder()
            .vector(
                DENSE,
                EdgeVectorParams::builder(spec.dimension, edge_distance(spec.distance)).build(),
            )
            // Weights are BM25 computed by the pipeline: no IDF modifier (see `sparse`).
            .sparse_vector(SPARSE, EdgeSparseVectorParams::default())
            .build();
        let shard = blocking(move || EdgeShard::new(&dir, config).map_err(backend)).await?;
        self.shards.remember(
            version,
            OpenShard {
                shard,
                spec,
                _private_copy: None,
            },
        );
        Ok(())
    }

    async fn upsert(&self, version: u64, points: Vec<ChunkPoint>) -> Result<()> {
        let open = self.shards.writable(version)?;
        check_dimensions(&points, &open.spec)?;
        let mut batches = Vec::new();
        for batch in points.chunks(BATCH) {
            let mut structs = Vec::with_capacity(batch.len());
            for point in batch {
                let id = PointId::Uuid(point.chunk.id());
                let sparse = Vector::new_sparse(point.sparse.indices.clone(), point.sparse.values.clone())
                    .map_err(|e| Error::Invalid(format!("sparse vector of chunk {}: {e}", point.chunk.position)))?;
                let vectors = vec![(DENSE, Vector::new_dense(point.vector.clone())), (SPARSE, sparse)];
                structs.push(PointStruct::new(id, vectors, point.chunk.to_payload()?).into());
            }
            batches.push(structs);
        }
        blocking(move || {
            for structs in batches {
                let operation = UpdateOperation::PointOperation(PointOperations::UpsertPoints(
                    PointInsertOperations::PointsList(structs),
                ));
                open.shard.update(operation).map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn seal(&self, version: u64) -> Result<()> {
        let open = self.shards.writable(version)?;
        let dir = self.shards.version_dir(version);
        blocking(move || {
            // Build the search index now, once, instead of in every reader.
            open.shard.optimize().map_err(backend)?;
            open.shard.flush();
            Ok(())
        })
        .await?;
        write_atomically(&dir.join(SEALED), b"sealed\n")?;
        // Close the writer so the WAL lock is released for readers in other processes.
        drop(self.shards.forget(version));
        Ok(())
    }

    async fn search(&self, version: u64, query: &SearchQuery) -> Result<Vec<SearchHit>> {
        let open = self.shard_async(version).await?;
        let (vector, using) = match &query.vector {
            QueryVector::Dense(vector) => {
                check_query_dimension(vector, version, &open.spec)?;
                (VectorInternal::from(vector.clone()), DENSE)
            }
            QueryVector::Sparse(sparse) if sparse.is_empty() => return Ok(Vec::new()),
            QueryVector::Sparse(sparse) => {
                let sparse = EdgeSparseVector::new(sparse.indices.clone(), sparse.values.clone())
                    .map_err(|e| Error::Invalid(format!("sparse query vector: {e}")))?;
                (VectorInternal::Sparse(sparse), SPARSE)
            }
        };
        let request = SearchRequest {
            query: QueryEnum::Nearest(NamedQuery {
                query: vector,
                using: Some(using.to_string()),
            }),
            filter: edge_filter(&query.filter)?,
            params: None,
            limit: query.limit,
            offset: 0,
            with_payload: Some(WithPayloadInterface::Bool(true)),
            with_vector: None,
            score_threshold: None,
        };
        let points = blocking(move || open.shard.search(request).map_err(backend)).await?;
        points
            .into_iter()
            .map(|point| {
                let id = match point.id {
                    PointId::Uuid(id) => id,
                    PointId::NumId(n) => return Err(Error::Corrupt(format!("unexpected numeric point id {n}"))),
                };
                let payload = point
                    .payload
                    .map(|p| serde_json::Value::Object(p.0))
                    .unwrap_or_default();
                Ok(SearchHit {
                    id,
                    chunk: super::Chunk::from_payload(payload)?,
                    score: point.score,
                })
            })
            .collect()
    }

    async fn get_points(&self, version: u64, ids: &[uuid::Uuid]) -> Result<Vec<ChunkPoint>> {
        let open = self.shard_async(version).await?;
        let ids: Vec<PointId> = ids.iter().map(|id| PointId::Uuid(*id)).collect();
        let records = blocking(move || {
            open.shard
                .retrieve(
                    &ids,
                    Some(WithPayloadInterface::Bool(true)),
                    Some(WithVector::Bool(true)),
                )
                .map_err(backend)
        })
        .await?;
        records
            .into_iter()
            .map(|record| {
                let payload = record
                    .payload
                    .map(|p| serde_json::Value::Object(p.0))
                    .unwrap_or_default();
                let chunk = super::Chunk::from_payload(payload)?;
                let Some(VectorStructInternal::Named(mut vectors)) = record.vector else {
                    return Err(Error::Corrupt(format!("point {} has no named vectors", chunk.id())));
                };
                let vector = match vectors.remove(DENSE) {
                    Some(VectorInternal::Dense(vector)) => vector,
                    _ => return Err(Error::Corrupt(format!("point {} has no dense vector", chunk.id()))),
                };
                let sparse = match vectors.remove(SPARSE) {
                    Some(VectorInternal::Sparse(EdgeSparseVector { indices, values })) => {
                        SparseVector { indices, values }
                    }
                    _ => SparseVector::default(),
                };
                Ok(ChunkPoint { chunk, vector, sparse })
            })
            .collect()
    }

    async fn count(&self, version: u64) -> Result<u64> {
        let open = self.shard_async(version).await?;
        let count = blocking(move || {
            open.shard
                .count(CountRequest {
                    filter: None,
                    exact: true,
                })
                .map_err(backend)
        })
        .await?;
        Ok(count as u64)
    }

    async fn versions(&self) -> Result<Vec<u64>> {
        let mut versions: Vec<u64> = fs::read_dir(&self.shards.root)
            .map_err(|e| io(&self.shards.root, e))?
            .flatten()
            .filter_map(|entry| parse_collection_name(&entry.file_name().to_string_lossy()))
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    async fn set_alias(&self, version: u64) -> Result<()> {
        if !self.shards.version_dir(version).exists() {
            return Err(Error::not_found(format!("index version {}", collection_name(version))));
        }
        if !self.shards.is_sealed(version) {
            return Err(Error::Conflict(format!(
                "index version {} is not sealed: only a finished version can go live",
                collection_name(version)
            )));
        }
        let aliases = serde_json::json!({ ALIAS: version });
        write_atomically(&self.shards.root.join(ALIASES), aliases.to_string().as_bytes())
    }

    async fn alias(&self) -> Result<Option<u64>> {
        let path = self.shards.root.join(ALIASES);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path, e)),
        };
        let aliases: HashMap<String, u64> =
            serde_json::from_str(&text).map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))?;
        Ok(aliases.get(ALIAS).copied())
    }

    async fn drop_version(&self, version: u64) -> Result<()> {
        if self.alias().await? == Some(version) {
            return Err(Error::Conflict(format!(
                "index version {} is live (alias {ALIAS:?}); move the alias before dropping it",
                collection_name(version)
            )));
        }
        let dir = self.shards.version_dir(version);
        if !dir.exists() {
            return Err(Error::not_found(format!("index version {}", collection_name(version))));
        }
        drop(self.shards.forget(version));
        // Rename first so a crash mid-delete never leaves a half-deleted version that looks real.
        let trash = self.shards.root.join(READERS).join(format!(
            "dropped-{}-{}",
            collection_name(version),
            uuid::Uuid::new_v4()
        ));
        fs::rename(&dir, &trash).map_err(|e| io(&dir, e))?;
        fs::remove_dir_all(&trash).map_err(|e| io(&trash, e))
    }
}
