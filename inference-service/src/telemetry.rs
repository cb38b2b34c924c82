//! Logs, and OpenTelemetry traces when a collector is named.
//!
//! Logs are [`engram_shared::logging`]'s. When `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, every tracing span also becomes an OpenTelemetry
//! span, sent over OTLP/HTTP (protobuf, `…/v1/traces`) in batches from the SDK's own thread, so an
//! unreachable collector never slows a request. The other standard variables apply
//! (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_SERVICE_NAME`, …). A request's
//! W3C `traceparent` header makes its spans part of the caller's trace. Spans at `info` and above
//! are exported whatever `ENGRAM_LOG` lets into the logs.
//!
//! Span names follow the OpenTelemetry semantic conventions: the HTTP server span is
//! `{method} {route}`, a chat completion `chat {model}`, the search `retrieval {index}` with the
//! query's `embeddings {model}` inside it. The GenAI conventions name no server-side phases, so
//! the engine's are named in their pattern (`{gen_ai.operation.name} {gen_ai.request.model}`) with
//! engram's own operation names: `queue` (waiting for a place in the batch), `prefill` (reading the
//! prompt) and `decode` (generating).
//!
//! The exporter's HTTP client blocks, so this is set up before the async runtime starts and shut
//! down (flushing what is left) after it stops.

use anyhow::{Context, Result};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;

/// The service's name in its traces (unless `OTEL_SERVICE_NAME` says otherwise).
const SERVICE: &str = "inference-service";

/// What must outlive serving: the tracer provider, flushed and stopped by [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Whether a collector is named in the environment.
fn exporting() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

/// Installs logging, with the OTLP trace layer when a collector is named.
pub fn init(filter: &str, format: engram_shared::logging::LogFormat) -> Result<Telemetry> {
    let provider = if exporting() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .context("OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter could not be built")?;
        let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| SERVICE.to_string());
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service)
            .build();
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build(),
        )
    } else {
        None
    };
    // Spans at info and above, whatever the log filter: the service's own (request, chat,
    // retrieval, embeddings, queue, prefill, decode), not the HTTP clients' debug spans (the
    // exporter's own requests among them).
    let layer = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(SERVICE))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
            .boxed()
    });
    engram_shared::logging::init_with(filter, format, layer);
    if provider.is_some() {
        tracing::info!("traces go to the OTLP collector in OTEL_EXPORTER_OTLP_ENDPOINT");
    }
    Ok(Telemetry { provider })
}

impl Telemetry {
    /// Sends the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            eprintln!("traces: the last spans could not be sent: {err}");
        }
    }
}

/// A count as a span attribute: OpenTelemetry's integers are signed (tracing-opentelemetry
/// writes unsigned fields as strings).
pub fn int(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// The caller's trace context from a request's `traceparent` (and `tracestate`) headers.
pub fn caller_context(headers: &axum::http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// Reads propagation headers out of an HTTP header map.
struct Headers<'a>(&'a axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}
