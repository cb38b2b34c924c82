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

/// A layer every event and span also goes to (the inference-service's OpenTelemetry traces).
pub type ExtraLayer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// Installs the global subscriber: events passing `filter` (an invalid filter falls back to
/// `info`), written to standard error in `format`.
pub fn init(filter: &str, format: LogFormat) {
    init_with(filter, format, None);
}

/// [`init`], with every span and event also given to `extra`, which filters them itself: the log
/// filter is the log lines' alone (`ENGRAM_LOG=warn` must not silence the traces).
pub fn init_with(filter: &str, format: LogFormat, extra: Option<ExtraLayer>) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines: ExtraLayer = match format {
        LogFormat::Text => lines.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => lines.json().with_current_span(true).with_span_list(true).boxed(),
    };
    let layers: Vec<ExtraLayer> = std::iter::once(lines.with_filter(filter).boxed())
        .chain(extra)
        .collect();
    if let Err(err) = tracing_subscriber::registry().with(layers).try_init() {
        eprintln!("logging is already set up: {err}");
    }
}
