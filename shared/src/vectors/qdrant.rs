//! The production vector index: a Qdrant server through `qdrant-client` (gRPC).
//!
//! Each version is a collection `chunks_v{N}`; the alias `chunks` is a Qdrant collection alias, which
//! the server moves atomically. Sealing adds a second alias, `chunks_v{N}_sealed`, to the collection:
//! the server keeps the mark with the collection, so every process sees which versions are finished,
//! and a sealed collection is never written again.

use std::time::Duration;

use async_trait::async_trait;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateAliasBuilder, CreateCollectionBuilder, Distance as QdrantDistance, Filter,
    GetCollectionInfoRequest, GetPointsBuilder, NamedVectors, PointId, PointStruct, Query, QueryPointsBuilder,
    SparseVectorParamsBuilder, SparseVectorsConfigBuilder, UpsertPointsBuilder, Vector, VectorInput,
    VectorParamsBuilder, VectorsConfigBuilder, point_id::PointIdOptions, vector_output,
};
use qdrant_client::{Payload, Qdrant};

use super::{
    ALIAS, Chunk, ChunkFilter, ChunkPoint, Distance, IndexSpec, QueryVector, SearchHit, SearchQuery, SparseVector,
    VectorIndex, check_dimensions, check_query_dimension, collection_name, parse_collection_name,
};
use crate::error::redact;
use crate::{Error, Result};

const BACKEND: &str = "qdrant";
const DENSE: &str = "dense";
const SPARSE: &str = "sparse";
const BATCH: usize = 256;

/// Versions of the index as collections on a Qdrant server.
pub struct QdrantVectorIndex {
    client: Qdrant,
}

impl std::fmt::Debug for QdrantVectorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantVectorIndex").finish_non_exhaustive()
    }
}

fn backend(err: impl std::fmt::Display) -> Error {
    Error::backend(BACKEND, err)
}

impl QdrantVectorIndex {
    /// Connects to the server at `url` (gRPC port, usually 6334) and checks it answers.
    pub async fn connect(url: &str, api_key: Option<&str>) -> Result<Self> {
        let fail = |reason: String| {
            Error::Config {
            variable: "ENGRAM_QDRANT_URL",
            address: redact(url),
            reason,
            hint: "Check the Qdrant server is running and the URL points at its gRPC port (6334), or unset ENGRAM_QDRANT_URL to use the embedded qdrant-edge index.".into(),
        }
        };
        let client = Qdrant::from_url(url)
            .api_key(api_key.map(str::to_string))
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| fail(e.to_string()))?;
        client
            .health_check()
            .await
            .map_err(|e| fail(format!("no answer from the server: {e}")))?;
        Ok(QdrantVectorIndex { client })
    }

    async fn is_sealed(&self, version: u64) -> Result<bool> {
        let name = collection_name(version);
        let aliases = self
            .client
            .list_collection_aliases(name.as_str())
            .await
            .map_err(|e| not_found_or(version, e))?;
        Ok(aliases.aliases.iter().any(|a| a.alias_name == sealed_alias(version)))
    }

    async fn spec(&self, version: u64) -> Result<IndexSpec> {
        let info = self
            .client
            .collection_info(GetCollectionInfoRequest {
                collection_name: collection_name(version),
            })
            .await
            .map_err(|e| not_found_or(version, e))?;
        let params = info
            .result
            .and_then(|r| r.config)
            .and_then(|c| c.params)
            .and_then(|p| p.vectors_config)
            .and_then(|v| v.config);
        use qdrant_client::qdrant::vectors_config::Config;
        let dense = match params {
            Some(Config::ParamsMap(map)) => map.map.get(DENSE).cloned(),
            Some(Config::Params(params)) => Some(params),
            None => None,
        }
        .ok_or_else(|| {
            Error::Corrupt(format!(
                "collection {} has no {DENSE:?} vector",
                collection_name(version)
            ))
        })?;
        let distance = match QdrantDistance::try_from(dense.distance) {
            Ok(QdrantDistance::Dot) => Distance::Dot,
            Ok(QdrantDistance::Euclid) => Distance::Euclid,
            _ => Distance::Cosine,
        };
        Ok(IndexSpec {
            dimension: dense.size as usize,
            distance,
        })
    }
}

fn not_found_or(version: u64, err: qdrant_client::QdrantError) -> Error {
    let text = err.to_string();
    if text.contains("doesn't exist") || text.contains("Not found") || text.contains("NotFound") {
        Error::not_found(format!("index version {}", collection_name(version)))
    } else {
        backend(text)
    }
}

fn sealed_alias(version: u64) -> String {
    format!("{}_sealed", collection_name(version))
}

fn qdrant_distance(distance: Distance) -> QdrantDistance {
    match distance {
        Distance::Cosine => QdrantDistance::Cosine,
        Distance::Dot => QdrantDistance::Dot,
        Distance::Euclid => QdrantDistance::Euclid,
    }
}

fn qdrant_filter(filter: &ChunkFilter) -> Option<Filter> {
    let mut must = Vec::new();
    if let Some(source) = filter.source {
        must.push(Condition::matches("source", source.as_str().to_string()));
    }
    if !filter.doc_ids.is_empty() {
        must.push(Condition::matches("doc_id", filter.doc_ids.clone()));
    }
    (!must.is_empty()).then(|| Filter::must(must))
}

#[async_trait]
impl VectorIndex for QdrantVectorIndex {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn create_version(&self, version: u64, spec: IndexSpec) -> Result<()> {
        let name = collection_name(version);
        if self.client.collection_exists(&name).await.map_err(backend)? {
            return Err(Error::Conflict(format!(
                "index version {name} already exists; versions are built once"
            )));
        }
        let mut vectors = VectorsConfigBuilder::default();
        vectors.add_named_vector_params(
            DENSE,
            VectorParamsBuilder::new(spec.dimension as u64, qdrant_distance(spec.distance)),
        );
        // Weights are BM25 computed by the pipeline: no IDF modifier (see `sparse`).
        let mut sparse = SparseVectorsConfigBuilder::default();
        sparse.add_named_vector_params(SPARSE, SparseVectorParamsBuilder::default());
        self.client
            .create_collection(
                CreateCollectionBuilder::new(&name)
                    .vectors_config(vectors)
                    .sparse_vectors_config(sparse),
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn upsert(&self, version: u64, points: Vec<ChunkPoint>) -> Result<()> {
        let spec = self.spec(version).await?;
        if self.is_sealed(version).await? {
            return Err(Error::Conflict(format!(
                "index version {} is sealed and immutable; build a new version instead",
                collection_name(version)
            )));
        }
        check_dimensions(&points, &spec)?;
        for batch in points.chunks(BATCH) {
            let mut structs = Vec::with_capacity(batch.len());
            for point in batch {
                let payload = Payload::try_from(point.chunk.to_payload()?).map_err(backend)?;
                let vectors = NamedVectors::default()
                    .add_vector(DENSE, point.vector.clone())
                    .add_vector(
                        SPARSE,
                        Vector::new_sparse(point.sparse.indices.clone(), point.sparse.values.clone()),
                    );
                structs.push(PointStruct::new(point.chunk.id().to_string(), vectors, payload));
            }
            self.client
                .upsert_points(UpsertPointsBuilder::new(collection_name(version), structs).wait(true))
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    async fn seal(&self, version: u64) -> Result<()> {
        // Upserts already waited for their writes; mark the collection finished.
        self.spec(version).await?;
        self.client
            .create_alias(CreateAliasBuilder::new(collection_name(version), sealed_alias(version)))
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn search(&self, version: u64, query: &SearchQuery) -> Result<Vec<SearchHit>> {
        let (input, using) = match &query.vector {
            QueryVector::Dense(vector) => {
                check_query_dimension(vector, version, &self.spec(version).await?)?;
                (VectorInput::from(vector.clone()), DENSE)
            }
            QueryVector::Sparse(sparse) if sparse.is_empty() => return Ok(Vec::new()),
            QueryVector::Sparse(sparse) => (
                VectorInput::new_sparse(sparse.indices.clone(), sparse.values.clone()),
                SPARSE,
            ),
        };
        let mut request = QueryPointsBuilder::new(collection_name(version))
            .query(Query::new_nearest(input))
            .using(using)
            .limit(query.limit as u64)
            .with_payload(true);
        if let Some(filter) = qdrant_filter(&query.filter) {
            request = request.filter(filter);
        }
        let response = self.client.query(request).await.map_err(|e| not_found_or(version, e))?;
        response
            .result
            .into_iter()
            .map(|point| {
                let id = match point.id.and_then(|id| id.point_id_options) {
                    Some(PointIdOptions::Uuid(text)) => {
                        uuid::Uuid::parse_str(&text).map_err(|e| Error::Corrupt(format!("point id {text}: {e}")))?
                    }
                    other => return Err(Error::Corrupt(format!("unexpected point id {other:?}"))),
                };
                let payload: serde_json::Map<String, serde_json::Value> =
                    point.payload.into_iter().map(|(k, v)| (k, v.into_json())).collect();
                Ok(SearchHit {
                    id,
                    chunk: Chunk::from_payload(serde_json::Value::Object(payload))?,
                    score: point.score,
                })
            })
            .collect()
    }

    async fn get_points(&self, version: u64, ids: &[uuid::Uuid]) -> Result<Vec<ChunkPoint>> {
        let ids: Vec<PointId> = ids.iter().map(|id| PointId::from(id.to_string())).collect();
        let response = self
            .client
            .get_points(
                GetPointsBuilder::new(collection_name(version), ids)
                    .with_vectors(true)
                    .with_payload(true),
            )
            .await
            .map_err(|e| not_found_or(version, e))?;
        response
            .result
            .into_iter()
            .map(|point| {
                let payload: serde_json::Map<String, serde_json::Value> =
                    point.payload.into_iter().map(|(k, v)| (k, v.into_json())).collect();
                let chunk = Chunk::from_payload(serde_json::Value::Object(payload))?;
                let vectors = point.vectors.as_ref();
                let vector = match vectors.and_then(|v| v.get_vector_by_name(DENSE)) {
                    Some(vector_output::Vector::Dense(dense)) => dense.data,
                    _ => return Err(Error::Corrupt(format!("point {} has no dense vector", chunk.id()))),
                };
                let sparse = match vectors.and_then(|v| v.get_vector_by_name(SPARSE)) {
                    Some(vector_output::Vector::Sparse(sparse)) => SparseVector {
                        indices: sparse.indices,
                        values: sparse.values,
                    },
                    _ => SparseVector::default(),
                };
                Ok(ChunkPoint { chunk, vector, sparse })
            })
            .collect()
    }

    async fn count(&self, version: u64) -> Result<u64> {
        let response = self
            .client
            .count(CountPointsBuilder::new(collection_name(version)).exact(true))
            .await
            .map_err(|e| not_found_or(version, e))?;
        Ok(response.result.map(|r| r.count).unwrap_or(0))
    }

    async fn versions(&self) -> Result<Vec<u64>> {
        let response = self.client.list_collections().await.map_err(backend)?;
        let mut versions: Vec<u64> = response
            .collections
            .iter()
            .filter_map(|c| parse_collection_name(&c.name))
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    async fn set_alias(&self, version: u64) -> Result<()> {
        let name = collection_name(version);
        if !self.client.collection_exists(&name).await.map_err(backend)? {
            return Err(Error::not_found(format!("index version {name}")));
        }
        if !self.is_sealed(version).await? {
            return Err(Error::Conflict(format!(
                "index version {name} is not sealed: only a finished version can go live"
            )));
        }
        // Qdrant replaces an existing alias in the same operation: one atomic switch.
        self.client
            .create_alias(CreateAliasBuilder::new(&name, ALIAS))
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn alias(&self) -> Result<Option<u64>> {
        let response = self.client.list_aliases().await.map_err(backend)?;
        Ok(response
            .aliases
            .iter()
            .find(|a| a.alias_name == ALIAS)
            .and_then(|a| parse_collection_name(&a.collection_name)))
    }

    async fn drop_version(&self, version: u64) -> Result<()> {
        if self.alias().await? == Some(version) {
            return Err(Error::Conflict(format!(
                "index version {} is live (alias {ALIAS:?}); move the alias before dropping it",
                collection_name(version)
            )));
        }
        let name = collection_name(version);
        if !self.client.collection_exists(&name).await.map_err(backend)? {
            return Err(Error::not_found(format!("index version {name}")));
        }
        let _ = self.client.delete_alias(sealed_alias(version)).await;
        self.client.delete_collection(&name).await.map_err(backend)?;
        Ok(())
    }
}
