//! Prometheus metrics, named by its conventions (`engram_` prefix, base units, `_total` counters).
//!
//! Request counts and durations are recorded by a middleware around every route
//! (`http/metrics.rs`); the chat handler adds time to first token, token counts and abstentions;
//! queue depth and what is served (model and index versions, as info gauges) are read at scrape
//! time, so they are never stale. This module knows nothing of HTTP: the routes call it.

use crate::engine::Load;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The service's metrics.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    /// Seconds from a chat request's arrival to its first generated text.
    pub time_to_first_token: HistogramVec,
    /// Seconds between two pieces of one answer's text.
    pub inter_token_latency: Histogram,
    /// Prompt tokens processed.
    pub prompt_tokens: IntCounter,
    /// Completion tokens generated.
    pub completion_tokens: IntCounter,
    /// Requests refused for a missing or unknown API key, by reason.
    pub auth_failures: IntCounterVec,
    /// Questions answered "the notes do not say" without generating.
    pub abstentions: IntCounter,
    /// Sequences decoded together per decode step.
    pub batch_size: Histogram,
    queue_depth: IntGauge,
    running: IntGauge,
    kv_cache_used: IntGauge,
    kv_cache_capacity: IntGauge,
    model_info: IntGaugeVec,
    index_info: IntGaugeVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "engram_http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("engram_http_request_duration_seconds", "HTTP request duration by route").buckets(vec![
                0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            ]),
            &["route"],
        )?;
        let time_to_first_token = HistogramVec::new(
            HistogramOpts::new(
                "engram_time_to_first_token_seconds",
                "Time from request to first generated text",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]),
            &["stream"],
        )?;
        let inter_token_latency = Histogram::with_opts(
            HistogramOpts::new(
                "engram_inter_token_latency_seconds",
                "Time between two pieces of one answer's generated text",
            )
            .buckets(vec![0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56]),
        )?;
        let prompt_tokens = IntCounter::new("engram_prompt_tokens_total", "Prompt tokens processed")?;
        let completion_tokens = IntCounter::new("engram_completion_tokens_total", "Completion tokens generated")?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "engram_auth_failures_total",
                "Requests refused for want of a valid API key, by reason (missing, malformed, unknown_key)",
            ),
            &["reason"],
        )?;
        let abstentions = IntCounter::new(
            "engram_abstentions_total",
            "Questions answered that the notes do not say, nothing retrieved being close enough",
        )?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "engram_batch_size",
                "Sequences decoded together in one step (one pass over the weights)",
            )
            .buckets(vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0]),
        )?;
        let queue_depth = IntGauge::new("engram_queue_depth", "Generations waiting for a place in the batch")?;
        let running = IntGauge::new("engram_running_sequences", "Generations in the batch")?;
        let kv_cache_used = IntGauge::new(
            "engram_kv_cache_used_bytes",
            "KV-cache bytes reserved by the generations in the batch",
        )?;
        let kv_cache_capacity = IntGauge::new(
            "engram_kv_cache_capacity_bytes",
            "The KV-cache budget (ENGRAM_KV_CACHE_MIB)",
        )?;
        let model_info = IntGaugeVec::new(
            Opts::new("engram_model_info", "The model served (1 for the loaded one)"),
            &["model", "version"],
        )?;
        let index_info = IntGaugeVec::new(
            Opts::new("engram_index_info", "The index version served (1 for the loaded one)"),
            &["version", "embedding_model"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(time_to_first_token.clone()))?;
        registry.register(Box::new(inter_token_latency.clone()))?;
        registry.register(Box::new(prompt_tokens.clone()))?;
        registry.register(Box::new(completion_tokens.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(abstentions.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(running.clone()))?;
        registry.register(Box::new(kv_cache_used.clone()))?;
        registry.register(Box::new(kv_cache_capacity.clone()))?;
        registry.register(Box::new(model_info.clone()))?;
        registry.register(Box::new(index_info.clone()))?;
        Ok(Self {
            registry,
            requests,
            duration,
            time_to_first_token,
            inter_token_latency,
            prompt_tokens,
            completion_tokens,
            auth_failures,
            abstentions,
            batch_size,
            queue_depth,
            running,
            kv_cache_used,
            kv_cache_capacity,
            model_info,
            index_info,
        })
    }
}

impl Metrics {
    /// Counts and times one answered request.
    pub fn record_request(&self, route: &str, method: &str, status: &str, seconds: f64) {
        self.requests.with_label_values(&[route, method, status]).inc();
        self.duration.with_label_values(&[route]).observe(seconds);
    }

    /// The text exposition of every metric, with the gauges read now: what the engine holds, the
    /// model served (`(id, version)`) and the index served (`(version, embedding model)`).
    pub fn render(&self, engine: Load, model: Option<(&str, &str)>, index: Option<(&str, &str)>) -> Vec<u8> {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.queue_depth.set(gauge(engine.waiting));
        self.running.set(gauge(engine.running));
        self.kv_cache_used.set(gauge(engine.kv_cache_used_bytes));
        self.kv_cache_capacity.set(gauge(engine.kv_cache_capacity_bytes));
        self.model_info.reset();
        if let Some((id, version)) = model {
            self.model_info.with_label_values(&[id, version]).set(1);
        }
        self.index_info.reset();
        if let Some((version, embedding_model)) = index {
            self.index_info.with_label_values(&[version, embedding_model]).set(1);
        }
        let mut body = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut body) {
            tracing::error!("cannot encode metrics: {err}");
        }
        body
    }
}
