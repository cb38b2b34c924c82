//! The pipeline's typed configuration: flags, with `ENGRAM_*` environment variables as defaults.

use clap::{Args, Parser, Subcommand};
use engram_shared::config::StorageConfig;

/// engram's offline worker: extracts documents, builds the vector index, datasets and models.
///
/// With no storage variable set, every store lives under ENGRAM_HOME (no server needed); each URL
/// variable moves one store to its production backend.
#[derive(Debug, Parser)]
#[command(name = "feature-pipeline", version, about, long_about)]
pub struct Config {
    /// Where the stores are.
    #[command(flatten)]
    pub storage: StorageConfig,

    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `engram_shared=debug`.
    #[arg(long, env = "ENGRAM_LOG", default_value = "info", global = true)]
    pub log: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The pipeline's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open every store (creating embedded ones, migrating the registry) and print what it holds.
    Status(StatusArgs),
}

/// Options of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}
