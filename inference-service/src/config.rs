//! The service's typed configuration: flags, with `ENGRAM_*` environment variables as defaults.

use std::net::SocketAddr;

use clap::Parser;
use engram_shared::config::StorageConfig;

/// engram's inference service: retrieval-augmented chat over the promoted model and the live index.
#[derive(Debug, Parser)]
#[command(name = "inference-service", version, about, long_about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "ENGRAM_ADDR", default_value = "0.0.0.0:8080")]
    pub addr: SocketAddr,

    /// Where the stores are.
    #[command(flatten)]
    pub storage: StorageConfig,

    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "ENGRAM_LOG", default_value = "info,qdrant_edge=error")]
    pub log: String,
}
