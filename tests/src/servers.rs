//! Servers the end-to-end tests point the binaries at, on 127.0.0.1 with a free port.
//!
//! - [`SampleSite`]: `samples/site/` as the web site `docs.engram.test`, reached by the crawler
//!   through `--proxy` (a proxy receives `GET http://host/path`, which axum routes by path), with
//!   the behaviours a crawler must survive: a redirect, a 404, a page slower than the timeout, a
//!   PDF, a 50 MB page, and a robots.txt-disallowed path that must never be requested.
//! - [`NotionApi`]: the recorded responses of `samples/notion-api/` behind Notion's REST paths,
//!   checking the token and version headers, and answering the first query with a 429.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

/// The repository's `samples/` folder.
pub fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples")
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("test server");
    });
    addr
}

/// The sample site, served as an HTTP proxy would see it.
pub struct SampleSite {
    /// Where it listens: pass `http://{addr}` as the crawler's proxy.
    pub addr: SocketAddr,
    /// Every path requested, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
}

/// How long `/slow/…` takes to answer: longer than the tests' crawl timeout.
pub const SLOW: Duration = Duration::from_secs(4);

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "pdf" => "application/pdf",
        "png" => "image/png",
        _ => "application/octet-stream",
    }
}

impl SampleSite {
    /// Starts the site.
    pub async fn start() -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let router = Router::new().fallback(move |uri: Uri| {
            let log = log.clone();
            async move {
                let path = uri.path().to_string();
                log.lock().expect("request log").push(path.clone());
                site_response(&path).await
            }
        });
        Self {
            addr: serve(router).await,
            requests,
        }
    }

    /// The proxy URL for the crawler.
    pub fn proxy(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The paths requested so far.
    pub fn requested(&self) -> Vec<String> {
        self.requests.lock().expect("request log").clone()
    }
}

async fn site_response(path: &str) -> Response {
    if path == "/old/composting-guide" {
        return (
            StatusCode::MOVED_PERMANENTLY,
            [(header::LOCATION, "/composting-guide.html")],
        )
            .into_response();
    }
    if path == "/huge.html" {
        // 50 MB without a Content-Length: the crawler must stop reading at its limit.
        let chunk = Bytes::from("<p>".to_string() + &"filler ".repeat(1024 * 16) + "</p>\n");
        let chunks = (50 * 1024 * 1024) / chunk.len() + 1;
        let stream = futures::stream::iter((0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
        return ([(header::CONTENT_TYPE, "text/html")], Body::from_stream(stream)).into_response();
    }
    if path.starts_with("/slow/") {
        tokio::time::sleep(SLOW).await;
    }
    let relative = if path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path.to_string()
    };
    let file = samples().join("site").join(relative.trim_start_matches('/'));
    if relative.contains("..") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    match tokio::fs::read(&file).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, content_type(&relative))], bytes).into_response(),
        Err(_) => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/html")],
            "<h1>Not found</h1>",
        )
            .into_response(),
    }
}

/// The token the recorded Notion API accepts.
pub const NOTION_TOKEN: &str = "secret_engram_test_token";

/// Recorded Notion API responses behind Notion's paths.
pub struct NotionApi {
    /// Where it listens: pass `http://{addr}` as `--api-url`.
    pub addr: SocketAddr,
    /// Requests answered 429 so far.
    pub rate_limited: Arc<Mutex<u32>>,
}

impl NotionApi {
    /// Starts the API.
    pub async fn start() -> Self {
        let rate_limited = Arc::new(Mutex::new(0u32));
        let limited = rate_limited.clone();
        let router = Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let limited = limited.clone();
            async move { notion_response(&method, &uri, &headers, &body, &limited) }
        });
        Self {
            addr: serve(router).await,
            rate_limited,
        }
    }

    /// The base URL for `--api-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn notion_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "object": "error", "status": status.as_u16(), "code": code, "message": message });
    (status, axum::Json(body)).into_response()
}

fn notion_response(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8], limited: &Mutex<u32>) -> Response {
    let authorized =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {NOTION_TOKEN}"));
    if !authorized {
        return notion_error(StatusCode::UNAUTHORIZED, "unauthorized", "API token is invalid.");
    }
    if headers.get("notion-version").and_then(|v| v.to_str().ok()) != Some("2022-06-28") {
        return notion_error(
            StatusCode::BAD_REQUEST,
            "missing_version",
            "Notion-Version header failed validation.",
        );
    }
    let segments: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    let cursor_of_query = || {
        uri.query()
            .unwrap_or_default()
            .split('&')
            .find_map(|pair| pair.strip_prefix("start_cursor="))
            .map(str::to_string)
    };
    let (dir, cursor) = match (method.as_str(), segments.as_slice()) {
        ("POST", ["v1", "databases", id, "query"]) => {
            {
                // The first query is rate-limited once: the client must wait and retry.
                let mut limited = limited.lock().expect("counter");
                if *limited == 0 {
                    *limited += 1;
                    let mut response = notion_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Slow down.");
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, "1".parse().expect("header"));
                    return response;
                }
            }
            let request: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let cursor = request["start_cursor"].as_str().map(str::to_string);
            (format!("databases/{id}/query"), cursor)
        }
        ("GET", ["v1", "blocks", id, "children"]) => (format!("blocks/{id}/children"), cursor_of_query()),
        _ => return notion_error(StatusCode::BAD_REQUEST, "invalid_request_url", "Invalid request URL."),
    };
    let file = match cursor {
        Some(cursor) => samples().join("notion-api").join(format!("{dir}-{cursor}.json")),
        None => samples().join("notion-api").join(format!("{dir}.json")),
    };
    match std::fs::read(&file) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(_) => notion_error(
            StatusCode::NOT_FOUND,
            "object_not_found",
            "Could not find object. Make sure the relevant pages and databases are shared with your integration.",
        ),
    }
}
