//! Logging for both binaries: human-readable text on a terminal, JSON lines for a log collector.
//!
//! `ENGRAM_LOG_FORMAT=json` writes one JSON object per event (with the fields of every enclosing
//! span, so a request's id is on each of its lines); `text` (the default) writes the usual lines,
//! with colour only when standard error is a terminal, so files and collectors never receive
//! escape codes. The filter is tracing's `EnvFilter` syntax (`ENGRAM_LOG`).

use std::io::IsTerminal;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people (coloured on a terminal only).
    #[default]
    Text,
    /// One JSON object per line, for collectors.
    Json,
}

/// Installs the global subscriber: events passing `filter` (an invalid filter falls back to
/// `info`), written to standard error in `format`.
pub fn init(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).try_init(),
    };
    if let Err(err) = result {
        eprintln!("logging is already set up: {err}");
    }
}
