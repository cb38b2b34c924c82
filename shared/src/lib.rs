//! engram's storage contract: what the feature pipeline writes and the inference service reads.
//!
//! The two programs never call each other; they meet only in the stores defined here. Each store is
//! one trait (or one type over a portable driver) with an embedded default that needs no server and
//! the production backend beside it:
//!
//! | module        | contract        | embedded default          | production backend      |
//! |---------------|-----------------|---------------------------|-------------------------|
//! | [`documents`] | `DocumentStore` | SQLite file (sqlx)        | MongoDB                 |
//! | [`vectors`]   | `VectorIndex`   | qdrant-edge shard folders | Qdrant server           |
//! | [`registry`]  | `Registry`      | SQLite file (sqlx)        | PostgreSQL (same SQL)   |
//! | [`artifacts`] | `ArtifactStore` | local directory           | S3-compatible store     |
//!
//! Beside the stores, [`embedding`] and [`generation`] run the models both programs use (candle),
//! and [`answers`] is the path from a conversation to a grounded prompt that the service serves and
//! the pipeline's answer evaluation measures.
//!
//! [`config::StorageConfig`] picks the backends from flags and `ENGRAM_*` variables and
//! [`storage::Storage`] opens them all, failing fast with an error that names the variable to fix.

pub mod answers;
pub mod artifacts;
pub mod config;
pub mod documents;
pub mod embedding;
pub mod error;
pub mod generation;
pub mod hashing;
pub mod logging;
pub mod registry;
pub mod staged_dir;
pub mod storage;
pub mod time;
pub mod vectors;

pub use error::{Error, Result};
