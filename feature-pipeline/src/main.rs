//! feature-pipeline: engram's offline worker.
//!
//! It turns notes and saved pages into what the inference service serves: documents, a versioned
//! vector index, datasets and models, all written to the stores in `engram-shared`. It runs on a
//! schedule (a Kubernetes CronJob, or `docker compose run` locally) and never calls the service.

mod commands;
mod config;
mod hub;
mod pipeline;
mod progress;
mod report;
mod retry;
mod steps;
mod teacher;
mod train;

use crate::config::{Command, Config};

fn main() -> std::process::ExitCode {
    let config: Config = engram_shared::config::parse_args();
    engram_shared::logging::init(&config.log, config.log_format);
    limit_model_threads(&config.command);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

/// Training runs its heavy work (products, attention) on its own rayon pool of `--threads`;
/// candle's own pools (sized from `CANDLE_NUM_THREADS`, else every core, the first time they run)
/// would only parallelise the small element-wise steps between them, and their spinning threads
/// measured 7% slower than one thread for those (2 cores). `CANDLE_NUM_THREADS` set by hand wins.
fn limit_model_threads(command: &Command) {
    if !matches!(command, Command::Train(_) | Command::BenchTrain(_)) {
        return;
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called from `main` before the runtime or any other thread is started, so nothing
        // reads the environment concurrently.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

async fn run(config: Config) -> std::process::ExitCode {
    let result = match &config.command {
        Command::Status(args) => commands::status::run(&config.storage, args).await,
        Command::Extract(command) => commands::extract::run(&config.storage, command).await,
        Command::Explore(args) => commands::explore::run(&config.storage, args).await,
        Command::Score(args) => commands::score::run(&config.storage, args).await,
        Command::Filter(args) => commands::filter::run(&config.storage, args).await,
        Command::Index(args) => commands::index::run(&config.storage, args).await,
        Command::Indexes(args) => commands::index::list(&config.storage, args).await,
        Command::Eval(command) => commands::eval::run(&config.storage, command).await,
        Command::Models(command) => commands::models::run(&config.storage, command).await,
        Command::Dataset(args) => commands::dataset::run(&config.storage, args).await,
        Command::Datasets(args) => commands::dataset::datasets(&config.storage, args).await,
        Command::BenchTrain(args) => commands::bench_train::run(args),
        Command::Train(args) => commands::train::run(&config.storage, args).await,
        Command::Run(args) => commands::run::run(&config.storage, args).await,
        Command::Runs(args) => commands::runs::run(&config.storage, args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
