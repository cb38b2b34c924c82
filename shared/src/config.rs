//! Which stores to use, from flags and `ENGRAM_*` environment variables.
//!
//! Both binaries flatten [`StorageConfig`] into their own typed config, so they agree on the same
//! variables. With none of the URL variables set, everything lives under `ENGRAM_HOME` and no
//! server is needed; each URL variable swaps one store for its production backend.

use std::path::{Path, PathBuf};

/// A binary's typed config from its flags and environment. `--help` shows no environment
/// variable's value, for every option of every subcommand: connection strings, tokens and proxy
/// URLs carry secrets, and a help text ends up in terminals, logs and bug reports. Hiding all of
/// them, rather than marking the secret ones, keeps a newly added secret from slipping through.
pub fn parse_args<T: clap::Parser>() -> T {
    let matches = hide_env_values(T::command()).get_matches();
    T::from_arg_matches(&matches).unwrap_or_else(|err| err.exit())
}

/// `command` with every option's environment value hidden from its help, recursively.
pub fn hide_env_values(command: clap::Command) -> clap::Command {
    command
        .mut_args(|arg| arg.hide_env_values(true))
        .mut_subcommands(hide_env_values)
}

/// Storage settings shared by the feature pipeline and the inference service.
#[derive(Debug, Clone, clap::Args)]
pub struct StorageConfig {
    /// Directory of the embedded stores (SQLite files, qdrant-edge shards, artifacts).
    #[arg(long = "home", env = "ENGRAM_HOME", default_value = ".engram")]
    pub home: PathBuf,

    /// MongoDB connection string for the document store (default: SQLite under ENGRAM_HOME).
    #[arg(long, env = "ENGRAM_MONGODB_URI")]
    pub mongodb_uri: Option<String>,

    /// MongoDB database that holds the `documents` collection.
    #[arg(long, env = "ENGRAM_MONGODB_DATABASE", default_value = "engram")]
    pub mongodb_database: String,

    /// Qdrant server URL (gRPC, e.g. http://qdrant:6334) for the vector index (default: qdrant-edge).
    #[arg(long, env = "ENGRAM_QDRANT_URL")]
    pub qdrant_url: Option<String>,

    /// API key for the Qdrant server.
    #[arg(long, env = "ENGRAM_QDRANT_API_KEY", hide_env_values = true)]
    pub qdrant_api_key: Option<String>,

    /// PostgreSQL URL (postgres://...) for the registry (default: SQLite under ENGRAM_HOME).
    #[arg(long, env = "ENGRAM_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Object store URL (s3://bucket/prefix) for artifacts (default: a directory under ENGRAM_HOME).
    /// S3 settings (endpoint, region, credentials) come from the usual AWS_* variables.
    #[arg(long, env = "ENGRAM_ARTIFACTS_URL")]
    pub artifacts_url: Option<String>,
}

impl StorageConfig {
    /// Embedded defaults everywhere, rooted at `home`.
    pub fn embedded(home: impl Into<PathBuf>) -> Self {
        StorageConfig {
            home: home.into(),
            mongodb_uri: None,
            mongodb_database: "engram".into(),
            qdrant_url: None,
            qdrant_api_key: None,
            database_url: None,
            artifacts_url: None,
        }
    }

    /// The SQLite file of the embedded document store.
    pub fn documents_path(&self) -> PathBuf {
        self.home.join("documents.sqlite")
    }

    /// The SQLite file of the embedded registry.
    pub fn registry_path(&self) -> PathBuf {
        self.home.join("registry.sqlite")
    }

    /// The directory of the embedded vector index (one qdrant-edge shard per version).
    pub fn vectors_path(&self) -> PathBuf {
        self.home.join("vectors")
    }

    /// The directory of the embedded artifact store.
    pub fn artifacts_path(&self) -> PathBuf {
        self.home.join("artifacts")
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }
}
