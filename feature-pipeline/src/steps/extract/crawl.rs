//! The crawler: fetches web pages politely and turns each into a document.
//!
//! Input: URLs (the web links of stored documents, or given ones). Output: one `crawl` document
//! per page fetched, and a [`CrawlOutcome`] for every URL, failures included, which the extract
//! step stores as the crawl report. Politeness and safety are explicit: a global concurrency limit,
//! a per-host delay between requests (raised by a robots.txt `Crawl-delay`), robots.txt obeyed,
//! a timeout per request, retries with exponential backoff and jitter after timeouts, connection
//! errors, 429 (honouring `Retry-After`) and 5xx, a size limit enforced while streaming the body,
//! and a content-type check before reading it. One URL's failure never stops the others. Only public
//! addresses are reached, on every redirect hop too ([`super::egress`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use engram_shared::documents::{NewDocument, Source};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Mutex;
use url::Url;

use super::egress::{self, Egress, GuardedResolver};
use super::robots::{RobotsCache, Verdict};
use super::{html, markdown, too_large};
use crate::retry::{backoff, retry_after};

/// How the crawler behaves.
#[derive(Debug, Clone)]
pub struct CrawlOptions {
    /// Least time between two requests to one host.
    pub host_delay: Duration,
    /// Time allowed per request.
    pub timeout: Duration,
    /// Retries after retryable failures.
    pub retries: u32,
    /// The User-Agent header, and the robots.txt agent.
    pub user_agent: String,
    /// Largest body read.
    pub max_bytes: u64,
    /// An HTTP proxy for every request.
    pub proxy: Option<String>,
    /// Which addresses may be reached.
    pub egress: Egress,
}

/// What happened to one URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrawlOutcome {
    /// The URL as asked for.
    pub url: String,
    /// Whether it became a document.
    pub ok: bool,
    /// The last HTTP status, if any answer came.
    pub status: Option<u16>,
    /// Where redirects ended, when they did.
    pub final_url: Option<String>,
    /// The response's content type.
    pub content_type: Option<String>,
    /// Bytes read.
    pub bytes: Option<u64>,
    /// Requests made (1 + retries).
    pub attempts: u32,
    /// Why it failed.
    pub reason: Option<String>,
}

impl CrawlOutcome {
    fn failed(url: &str, status: Option<u16>, attempts: u32, reason: impl Into<String>) -> Self {
        Self {
            url: url.to_string(),
            ok: false,
            status,
            final_url: None,
            content_type: None,
            bytes: None,
            attempts,
            reason: Some(reason.into()),
        }
    }
}

/// Redirects followed before a URL fails.
const MAX_REDIRECTS: usize = 5;

/// The redirect policy's error past [`MAX_REDIRECTS`].
#[derive(Debug, thiserror::Error)]
#[error("too many redirects (over {MAX_REDIRECTS})")]
struct TooManyRedirects;

/// Content types the crawler reads.
const PAGE_TYPES: &[&str] = &["text/html", "application/xhtml+xml", "text/plain", "text/markdown"];

/// A polite HTTP fetcher.
pub struct Crawler {
    http: reqwest::Client,
    robots: RobotsCache,
    options: CrawlOptions,
    /// Per host: when the next request may start.
    hosts: Mutex<HashMap<String, Instant>>,
}

/// A fetched body, before extraction.
struct Fetched {
    status: u16,
    final_url: Url,
    content_type: String,
    text: String,
    bytes: u64,
}

enum Attempt {
    Done(Fetched),
    Retry(Option<u16>, String, Option<Duration>),
    Fail(Option<u16>, String),
}

impl Crawler {
    /// A crawler with `options`.
    pub fn new(options: CrawlOptions) -> anyhow::Result<Self> {
        let redirects = options.egress.clone();
        let mut builder = reqwest::Client::builder()
            .user_agent(&options.user_agent)
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > MAX_REDIRECTS {
                    attempt.error(TooManyRedirects)
                } else if let Err(refused) = redirects.check_url(attempt.url()) {
                    attempt.error(refused)
                } else {
                    attempt.follow()
                }
            }));
        let mut trusted = None;
        if let Some(proxy) = &options.proxy {
            let parsed = reqwest::Proxy::all(proxy).map_err(|err| {
                anyhow::anyhow!(
                    "ENGRAM_CRAWL_PROXY={} is not a proxy URL: {err}",
                    engram_shared::error::redact(proxy)
                )
            })?;
            builder = builder.proxy(parsed);
            // The operator's own proxy may well sit on a private address.
            trusted = Url::parse(proxy).ok().and_then(|u| u.host_str().map(str::to_string));
        }
        builder = builder.dns_resolver(GuardedResolver {
            egress: options.egress.clone(),
            trusted,
        });
        let http = builder.build()?;
        Ok(Self {
            robots: RobotsCache::new(http.clone(), &options.user_agent),
            http,
            options,
            hosts: Mutex::new(HashMap::new()),
        })
    }

    /// Waits until a request to `host` is polite, and books the slot after it.
    async fn wait_turn(&self, host: &str, delay: Duration) {
        let wait = {
            let mut hosts = self.hosts.lock().await;
            let now = Instant::now();
            let start = hosts.get(host).copied().unwrap_or(now).max(now);
            hosts.insert(host.to_string(), start + delay);
            start - now
        };
        tokio::time::sleep(wait).await;
    }

    /// Fetches `url` and extracts it. Never fails: a failure is an outcome.
    pub async fn fetch(&self, url: &str) -> (CrawlOutcome, Option<NewDocument>) {
        let parsed = match Url::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => parsed,
            Ok(parsed) => {
                let reason = format!("{} URLs are not crawled: only http and https", parsed.scheme());
                return (CrawlOutcome::failed(url, None, 0, reason), None);
            }
            Err(err) => return (CrawlOutcome::failed(url, None, 0, format!("not a URL: {err}")), None),
        };
        if let Err(refused) = self.options.egress.check_url(&parsed) {
            return (CrawlOutcome::failed(url, None, 0, refused.to_string()), None);
        }
        let delay = match self.robots.check(&parsed).await {
            Verdict::Allowed(crawl_delay) => crawl_delay.unwrap_or_default().max(self.options.host_delay),
            Verdict::Denied(reason) => return (CrawlOutcome::failed(url, None, 0, reason), None),
        };
        let host = parsed.host_str().unwrap_or_default().to_string();
        let mut attempts = 0;
        let fetched = loop {
            attempts += 1;
            self.wait_turn(&host, delay).await;
            match self.attempt(&parsed).await {
                Attempt::Done(fetched) => break fetched,
                Attempt::Fail(status, reason) => {
                    return (CrawlOutcome::failed(url, status, attempts, reason), None);
                }
                Attempt::Retry(status, reason, asked_wait) => {
                    if attempts > self.options.retries {
                        let reason = format!("{reason} (gave up after {attempts} attempts)");
                        return (CrawlOutcome::failed(url, status, attempts, reason), None);
                    }
                    let wait = asked_wait.unwrap_or_else(|| backoff(attempts, Duration::from_millis(250)));
                    tracing::debug!(url, ?wait, "retrying: {reason}");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        let document = to_document(url, &fetched);
        let outcome = CrawlOutcome {
            url: url.to_string(),
            ok: true,
            status: Some(fetched.status),
            final_url: (fetched.final_url.as_str() != parsed.as_str()).then(|| fetched.final_url.to_string()),
            content_type: Some(fetched.content_type),
            bytes: Some(fetched.bytes),
            attempts,
            reason: None,
        };
        (outcome, Some(document))
    }

    async fn attempt(&self, url: &Url) -> Attempt {
        let timeout_secs = self.options.timeout.as_secs_f64();
        let mut response = match self.http.get(url.clone()).send().await {
            Ok(response) => response,
            Err(err) => return unanswered(&err, timeout_secs),
        };
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Attempt::Retry(
                Some(status.as_u16()),
                format!("HTTP {status}"),
                retry_after(&response, Duration::from_secs(120)),
            );
        }
        if !status.is_success() {
            return Attempt::Fail(Some(status.as_u16()), format!("HTTP {status}"));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("text/html")
            .to_string();
        let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if !PAGE_TYPES.contains(&mime.as_str()) {
            return Attempt::Fail(
                Some(status.as_u16()),
                format!("content type {mime} is not a page (HTML, plain text or markdown)"),
            );
        }
        if let Some(length) = response.content_length()
            && length > self.options.max_bytes
        {
            return Attempt::Fail(Some(status.as_u16()), too_large(length, self.options.max_bytes));
        }
        let final_url = response.url().clone();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() as u64 > self.options.max_bytes {
                        return Attempt::Fail(
                            Some(status.as_u16()),
                            format!(
                                "{} (stopped reading)",
                                too_large(body.len() as u64, self.options.max_bytes)
                            ),
                        );
                    }
                }
                Ok(None) => break,
                Err(err) if err.is_timeout() => {
                    return Attempt::Retry(
                        Some(status.as_u16()),
                        format!("timed out after {timeout_secs:.1} s reading the body"),
                        None,
                    );
                }
                Err(err) => {
                    return Attempt::Retry(
                        Some(status.as_u16()),
                        format!("body failed: {}", error_chain(&err)),
                        None,
                    );
                }
            }
        }
        Attempt::Done(Fetched {
            status: status.as_u16(),
            final_url,
            text: decode(&body, &content_type),
            bytes: body.len() as u64,
            content_type: mime,
        })
    }
}

/// What a request that got no answer comes to: refused addresses and redirect loops fail, the rest
/// is retried.
fn unanswered(err: &reqwest::Error, timeout_secs: f64) -> Attempt {
    if let Some(refused) = egress::refusal(err) {
        Attempt::Fail(None, refused.to_string())
    } else if err.is_timeout() {
        Attempt::Retry(None, format!("timed out after {timeout_secs:.1} s"), None)
    } else if err.is_redirect() {
        Attempt::Fail(None, TooManyRedirects.to_string())
    } else {
        Attempt::Retry(None, format!("request failed: {}", error_chain(err)), None)
    }
}

/// Decodes a body by the charset its content type names (UTF-8 when none).
fn decode(body: &[u8], content_type: &str) -> String {
    let charset = content_type
        .split(';')
        .filter_map(|part| part.trim().strip_prefix("charset="))
        .next()
        .map(|c| c.trim_matches('"'));
    let encoding = charset
        .and_then(|label| encoding_rs::Encoding::for_label(label.as_bytes()))
        .unwrap_or(encoding_rs::UTF_8);
    encoding.decode(body).0.into_owned()
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    message
}

/// The URL a document is known by: as linked, without the fragment.
pub fn normalise(url: &str) -> Option<String> {
    let mut parsed = Url::parse(url).ok()?;
    parsed.set_fragment(None);
    Some(parsed.to_string())
}

fn to_document(url: &str, fetched: &Fetched) -> NewDocument {
    let domain = fetched.final_url.host_str().unwrap_or_default().to_string();
    let mut metadata = json!({
        "status": fetched.status,
        "content_type": fetched.content_type,
        "domain": domain,
    });
    if fetched.final_url.as_str() != url {
        metadata["final_url"] = json!(fetched.final_url.as_str());
    }
    let (title, content) = match fetched.content_type.as_str() {
        "text/html" | "application/xhtml+xml" => {
            let page = html::extract(&fetched.text, fetched.final_url.as_str());
            metadata["extraction"] = json!(page.extraction);
            for (key, value) in [
                ("lang", page.lang),
                ("byline", page.byline),
                ("site_name", page.site_name),
            ] {
                if let Some(value) = value {
                    metadata[key] = json!(value);
                }
            }
            (page.title, page.markdown)
        }
        "text/markdown" => {
            let cleaned = markdown::clean(&fetched.text);
            let (title, body) = markdown::split_title(&cleaned);
            (title.unwrap_or_default(), body.to_string())
        }
        _ => (String::new(), markdown::clean(&fetched.text)),
    };
    let title = if title.is_empty() {
        fetched
            .final_url
            .path()
            .rsplit('/')
            .find(|s| !s.is_empty())
            .unwrap_or(&domain)
            .to_string()
    } else {
        title
    };
    NewDocument {
        source: Source::Crawl,
        url: url.to_string(),
        title,
        content,
        metadata,
        quality: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_decode_by_their_charset() {
        assert_eq!(decode(b"caf\xe9", "text/html; charset=ISO-8859-1"), "café");
        assert_eq!(decode("café".as_bytes(), "text/html"), "café");
    }

    /// A site on loopback: `/page` is a page, `/to-metadata` redirects to the cloud metadata
    /// service, `/to-localhost` to a name that resolves to loopback. Returns its port and the paths
    /// requested.
    async fn site() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use axum::http::{StatusCode, Uri, header};
        use axum::response::IntoResponse;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let router = axum::Router::new().fallback(move |uri: Uri| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(uri.path().to_string());
                match uri.path() {
                    "/to-metadata" => (
                        StatusCode::FOUND,
                        [(header::LOCATION, "http://169.254.169.254/latest/meta-data/".to_string())],
                    )
                        .into_response(),
                    "/to-localhost" => (
                        StatusCode::FOUND,
                        [(header::LOCATION, format!("http://localhost:{port}/page"))],
                    )
                        .into_response(),
                    "/page" => (
                        [(header::CONTENT_TYPE, "text/html")],
                        "<html><head><title>Private</title></head><body><p>The router's admin password.</p></body></html>",
                    )
                        .into_response(),
                    _ => StatusCode::NOT_FOUND.into_response(),
                }
            }
        });
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (port, seen)
    }

    fn crawler(egress: Egress) -> Crawler {
        Crawler::new(CrawlOptions {
            host_delay: Duration::ZERO,
            timeout: Duration::from_secs(5),
            retries: 0,
            user_agent: "engram-test".into(),
            max_bytes: 1 << 20,
            proxy: None,
            egress,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn private_addresses_are_refused_by_literal_by_name_and_on_redirect() {
        let (port, seen) = site().await;
        let closed = crawler(Egress::default());
        for (url, address) in [
            (format!("http://127.0.0.1:{port}/page"), "127.0.0.1"),
            (format!("http://localhost:{port}/page"), "localhost"),
            (format!("http://[::ffff:127.0.0.1]:{port}/page"), "[::ffff:"),
        ] {
            let (outcome, document) = closed.fetch(&url).await;
            assert!(document.is_none(), "{url} was crawled");
            let reason = outcome.reason.unwrap_or_default();
            assert!(
                reason.contains(address) && reason.contains("loopback") && reason.contains("--allow-private-hosts"),
                "{url}: {reason}"
            );
        }
        assert!(
            seen.lock().unwrap().is_empty(),
            "nothing reached the site: {:?}",
            seen.lock().unwrap()
        );

        // Loopback exempted (the test site), a redirect hop to the metadata service is still refused.
        let hop = crawler(Egress {
            allow_private: false,
            exempt: vec!["127.0.0.1".parse().unwrap()],
        });
        let (outcome, document) = hop.fetch(&format!("http://127.0.0.1:{port}/to-metadata")).await;
        assert!(document.is_none());
        let reason = outcome.reason.unwrap_or_default();
        assert!(
            reason.contains("169.254.169.254") && reason.contains("link-local"),
            "{reason}"
        );

        // On purpose, a private network is crawled.
        let open = crawler(Egress {
            allow_private: true,
            exempt: Vec::new(),
        });
        let (outcome, document) = open.fetch(&format!("http://127.0.0.1:{port}/to-localhost")).await;
        assert!(outcome.ok, "{outcome:?}");
        assert_eq!(document.map(|d| d.title).as_deref(), Some("Private"));
    }

    #[test]
    fn urls_lose_their_fragment() {
        assert_eq!(normalise("http://a.test/x#y").as_deref(), Some("http://a.test/x"));
        assert_eq!(normalise("not a url"), None);
    }
}
