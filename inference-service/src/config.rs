//! The service's typed configuration: flags, with `ENGRAM_*` environment variables as defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use engram_shared::config::StorageConfig;

/// engram's inference service: retrieval-augmented chat over the promoted model and the live index.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "inference-service",
    version,
    about,
    long_about,
    after_help = "Traces: with OTEL_EXPORTER_OTLP_ENDPOINT set (and the other standard OTEL_* variables), \
                  spans go to that OpenTelemetry collector over OTLP/HTTP."
)]
pub struct Config {
    /// Address to listen on. Loopback by default; on any other address the service needs API keys
    /// (ENGRAM_API_KEYS) or ENGRAM_ALLOW_ANONYMOUS=true, or it refuses to start.
    #[arg(long, env = "ENGRAM_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// Where the stores are.
    #[command(flatten)]
    pub storage: StorageConfig,

    /// Serve this GGUF file instead of the registry's `production` model (for development).
    #[arg(long, env = "ENGRAM_MODEL")]
    pub model: Option<PathBuf>,

    /// The embedding model directory: must be the one the live index was built with.
    #[arg(long, env = "ENGRAM_EMBEDDING_MODEL", default_value = "models/all-MiniLM-L6-v2")]
    pub embedding_model: PathBuf,

    /// Most generations decoded together (continuous batching: each step decodes one token for
    /// every running generation, reading the weights once for all of them).
    #[arg(long, env = "ENGRAM_MAX_BATCH", default_value_t = 8)]
    pub max_batch: usize,

    /// Requests waiting for a place in the batch before new ones are refused with 429.
    #[arg(long, env = "ENGRAM_MAX_QUEUE", default_value_t = 16)]
    pub max_queue: usize,

    /// Memory for the running generations' keys and values, in MiB. Each is admitted with room
    /// for its prompt and max_tokens (SmolLM2-135M: 45 KiB a token); one that does not fit waits.
    #[arg(long, env = "ENGRAM_KV_CACHE_MIB", default_value_t = 1024)]
    pub kv_cache_mib: usize,

    /// Prompt tokens read per step: a long prompt is read in chunks between decode steps, so
    /// running streams wait for a chunk, not a whole prompt.
    #[arg(long, env = "ENGRAM_PREFILL_CHUNK", default_value_t = engram_shared::generation::PREFILL_CHUNK)]
    pub prefill_chunk: usize,

    /// `/v1/search` requests served at once; more get a 429 with `Retry-After`.
    #[arg(long, env = "ENGRAM_MAX_SEARCHES", default_value_t = 8)]
    pub max_searches: usize,

    /// Most completion tokens per request (a request's max_tokens is capped here).
    #[arg(long, env = "ENGRAM_MAX_COMPLETION_TOKENS", default_value_t = 512)]
    pub max_completion_tokens: usize,

    /// Most tokens of a request's conversation (before sources are added): older turns beyond it
    /// are dropped, oldest first; a last message longer than it alone gets a 400.
    #[arg(long, env = "ENGRAM_MAX_PROMPT_TOKENS", default_value_t = 4096)]
    pub max_prompt_tokens: usize,

    /// Longest a chat request may take, queue wait included, in seconds; then it fails with 503.
    #[arg(long, env = "ENGRAM_REQUEST_TIMEOUT_SECS", default_value_t = 300)]
    pub request_timeout_secs: u64,

    /// On SIGTERM, how long in-flight requests may run on before the process exits anyway, in seconds.
    #[arg(long, env = "ENGRAM_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// Chunks retrieved per question by default.
    #[arg(long, env = "ENGRAM_TOP_K", default_value_t = 4)]
    pub top_k: usize,

    /// How close (cosine similarity, -1 to 1) the closest retrieved chunk must be for the model to
    /// answer; below it the answer is that the notes do not say. Calibrated on
    /// samples/answers.tsv (README, "Grounded answers"); -1 never abstains.
    #[arg(long, env = "ENGRAM_MIN_RELEVANCE", default_value_t = engram_shared::answers::abstain::DEFAULT_MIN_RELEVANCE,
          value_parser = relevance)]
    pub min_relevance: f32,

    /// How answers are made from the sources by default (a request's `retrieval.answer`
    /// overrides it): `generate`, the model writes them; `extract`, the answer is the sources'
    /// sentence the model finds likeliest, cited, or that the notes do not say (README, "Grounded
    /// answers").
    #[arg(long, env = "ENGRAM_ANSWER_MODE", default_value_t = engram_shared::answers::AnswerMode::default())]
    pub answer_mode: engram_shared::answers::AnswerMode,

    /// In extractive answers, how close (cosine similarity, -1 to 1) a sentence of the sources,
    /// read under its title and headings, must be to the question to be the answer; when none is,
    /// the notes do not say. Calibrated on samples/answers.tsv (README, "Grounded answers"); -1
    /// lets every sentence of the right kind compete.
    #[arg(long, env = "ENGRAM_MIN_SENTENCE_RELEVANCE", default_value_t = engram_shared::answers::closeness::DEFAULT_MIN,
          value_parser = relevance)]
    pub min_sentence_relevance: f32,

    /// Whether the names a question gives (a capitalised word inside it, a number, an identifier
    /// such as max_connections) must be stated in the notes to answer it: when no retrieved source
    /// states one, the notes do not say (unless a request sets `retrieval.abstain: false`); an
    /// extractive answer quotes only a source stating them all. English capitalisation; false
    /// turns it off (README, "Grounded answers").
    #[arg(long, env = "ENGRAM_NAMES_MUST_MATCH", default_value_t = true, action = clap::ArgAction::Set)]
    pub names_must_match: bool,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "ENGRAM_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,

    /// How often to look for a newly promoted model or a newly live index, in seconds.
    #[arg(long, env = "ENGRAM_RELOAD_INTERVAL_SECS", default_value_t = 10)]
    pub reload_interval_secs: u64,

    /// A file of API keys, one per line (or `sha256:<hex>` of a key, to keep keys out of the file);
    /// when set, every `/v1` route needs `Authorization: Bearer <key>`. The file is read again on
    /// SIGHUP and when it changes.
    #[arg(long, env = "ENGRAM_API_KEYS")]
    pub api_keys: Option<PathBuf>,

    /// Serve `/v1` without API keys on a non-loopback address: anyone who reaches the port can
    /// read the notes. Only for a network you trust, on purpose.
    #[arg(long, env = "ENGRAM_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,

    /// Origins allowed to call the API from a browser, comma-separated (`*` for any); none by default.
    #[arg(long, env = "ENGRAM_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Open the stores, print what would be served, and exit (a configuration check).
    #[arg(long)]
    pub check: bool,

    /// How often the API key file is checked for changes, in seconds.
    #[arg(long, env = "ENGRAM_API_KEYS_RELOAD_SECS", default_value_t = 5)]
    pub api_keys_reload_secs: u64,

    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "ENGRAM_LOG", default_value = "info,qdrant_edge=error")]
    pub log: String,

    /// Log lines as `text` (coloured only on a terminal) or `json` (one object per line, each with
    /// its request's id).
    #[arg(long, env = "ENGRAM_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: engram_shared::logging::LogFormat,
}

fn relevance(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(value) if (-1.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("{text:?} is not a cosine similarity between -1 and 1")),
    }
}

impl Config {
    /// How much the engine runs at once.
    pub fn engine_limits(&self) -> crate::engine::Limits {
        crate::engine::Limits {
            max_batch: self.max_batch,
            max_queue: self.max_queue,
            kv_cache_bytes: self.kv_cache_mib.saturating_mul(1 << 20),
            prefill_chunk: self.prefill_chunk,
        }
    }

    /// Refuses a configuration that would serve the notes to the network without keys.
    pub fn check_exposure(&self) -> anyhow::Result<()> {
        if self.api_keys.is_none() && !self.allow_anonymous && !self.addr.ip().is_loopback() {
            anyhow::bail!(
                "refusing to serve on {} without API keys: anyone who can reach this address could read the notes. \
                 Set ENGRAM_API_KEYS to a file of keys (one per line, e.g. `openssl rand -hex 32 > keys`), \
                 or listen on 127.0.0.1 (ENGRAM_ADDR), or set ENGRAM_ALLOW_ANONYMOUS=true to serve without keys on purpose",
                self.addr
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("inference-service").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn the_network_needs_keys_or_an_explicit_opening() {
        assert!(config(&[]).addr.ip().is_loopback(), "loopback by default");
        assert!(config(&[]).check_exposure().is_ok());
        assert!(config(&["--addr", "[::1]:8080"]).check_exposure().is_ok());
        let err = config(&["--addr", "0.0.0.0:8080"])
            .check_exposure()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ENGRAM_API_KEYS") && err.contains("ENGRAM_ALLOW_ANONYMOUS"),
            "{err}"
        );
        assert!(
            config(&["--addr", "0.0.0.0:8080", "--api-keys", "keys"])
                .check_exposure()
                .is_ok()
        );
        assert!(
            config(&["--addr", "0.0.0.0:8080", "--allow-anonymous"])
                .check_exposure()
                .is_ok()
        );
    }
}
