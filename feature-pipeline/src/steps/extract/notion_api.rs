//! Notion's public REST API: the pages of one database, with their blocks and sub-pages.
//!
//! For users who would rather not export by hand (or run the pipeline on a schedule). It reads
//! `POST /v1/databases/{id}/query` and `GET /v1/blocks/{id}/children`, following `next_cursor`
//! pagination, fetching the children of every block that has some and every sub-page
//! (`child_page`) as a document of its own. Requests are paced (`--api-interval-ms`; Notion allows
//! about three a second), a 429 waits for its `Retry-After`, and 5xx answers and timeouts are
//! retried with exponential backoff. Errors name Notion's code and what to do about it.
//!
//! Written against the documented API (version 2022-06-28) and tested against recorded responses
//! served on 127.0.0.1 (`samples/notion-api/`); it has not been run against the live service here.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use engram_shared::documents::{NewDocument, Source};
use indicatif::ProgressBar;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::notion_blocks::{BlockNode, page_properties, page_title, render};
use super::notion_export::{page_url, web_links};
use super::{Problem, markdown};
use crate::retry::{backoff, retry_after};

/// The API version this client speaks.
pub const NOTION_VERSION: &str = "2022-06-28";
/// How deep nested blocks are followed.
const MAX_DEPTH: usize = 12;
/// Retries of one request after a 429, a 5xx or a network error.
const RETRIES: u32 = 5;

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum NotionError {
    /// Notion answered with an error.
    #[error("Notion answered {status} {code} for {path}: {message}. {hint}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Notion's error code.
        code: String,
        /// Notion's message.
        message: String,
        /// The request path.
        path: String,
        /// What to do.
        hint: &'static str,
    },
    /// The request did not get an answer.
    #[error("cannot reach the Notion API at {url}: {source}. Check ENGRAM_NOTION_API_URL and the network")]
    Network {
        /// The URL.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
}

/// A paced, retrying client of Notion's API.
pub struct NotionClient {
    http: reqwest::Client,
    base: String,
    token: String,
    interval: Duration,
    next_slot: Mutex<Instant>,
}

impl NotionClient {
    /// A client of the API at `base` (e.g. `https://api.notion.com`) with integration `token`.
    pub fn new(base: &str, token: &str, interval: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("engram-feature-pipeline/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            interval,
            next_slot: Mutex::new(Instant::now()),
        })
    }

    /// Waits for this request's turn under the pacing interval.
    async fn pace(&self) {
        let wait = {
            let mut slot = self.next_slot.lock().await;
            let now = Instant::now();
            let start = (*slot).max(now);
            *slot = start + self.interval;
            start - now
        };
        tokio::time::sleep(wait).await;
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value, NotionError> {
        let url = format!("{}{path}", self.base);
        let mut attempt = 0;
        loop {
            self.pace().await;
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&self.token)
                .header("Notion-Version", NOTION_VERSION);
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(source) if attempt < RETRIES => {
                    tracing::warn!(%url, "Notion API request failed, retrying: {source}");
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt, Duration::from_millis(500))).await;
                    continue;
                }
                Err(source) => return Err(NotionError::Network { url, source }),
            };
            let status = response.status();
            if (status.as_u16() == 429 || status.is_server_error()) && attempt < RETRIES {
                let wait = retry_after(&response, Duration::from_secs(300))
                    .unwrap_or_else(|| backoff(attempt + 1, Duration::from_millis(500)));
                tracing::warn!(%url, status = status.as_u16(), ?wait, "Notion API asked to slow down, waiting");
                attempt += 1;
                tokio::time::sleep(wait).await;
                continue;
            }
            let payload: Value = response.json().await.map_err(|source| NotionError::Network {
                url: url.clone(),
                source,
            })?;
            if status.is_success() {
                return Ok(payload);
            }
            let code = payload["code"].as_str().unwrap_or("error").to_string();
            let hint = match status.as_u16() {
                401 => "Check ENGRAM_NOTION_TOKEN: it must be the secret of an internal integration",
                403 | 404 => "Share the database (and its pages) with your integration in Notion, and check the id",
                400 => "This is a bug in engram's Notion client: please report it",
                429 => "Notion kept rate-limiting: raise --api-interval-ms",
                _ => "Try again later",
            };
            return Err(NotionError::Api {
                status: status.as_u16(),
                code,
                message: payload["message"].as_str().unwrap_or_default().to_string(),
                path: path.to_string(),
                hint,
            });
        }
    }

    /// Every page of database `id`, following pagination.
    pub async fn query_database(&self, id: &str) -> Result<Vec<Value>, NotionError> {
        let path = format!("/v1/databases/{id}/query");
        let mut pages = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut body = json!({ "page_size": 100 });
            if let Some(cursor) = &cursor {
                body["start_cursor"] = json!(cursor);
            }
            let response = self.call(reqwest::Method::POST, &path, Some(&body)).await?;
            pages.extend(response["results"].as_array().cloned().unwrap_or_default());
            match next_cursor(&response) {
                Some(next) => cursor = Some(next),
                None => return Ok(pages),
            }
        }
    }

    /// The direct children of block (or page) `id`, following pagination.
    pub async fn children(&self, id: &str) -> Result<Vec<Value>, NotionError> {
        let mut blocks = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/blocks/{id}/children?page_size=100");
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&start_cursor={cursor}"));
            }
            let response = self.call(reqwest::Method::GET, &path, None).await?;
            blocks.extend(response["results"].as_array().cloned().unwrap_or_default());
            match next_cursor(&response) {
                Some(next) => cursor = Some(next),
                None => return Ok(blocks),
            }
        }
    }

    /// The block tree under `id`. Sub-pages (`child_page`) are not descended into: they are pages
    /// of their own, returned by id and title in `sub_pages`.
    pub async fn block_tree(
        &self,
        id: &str,
        depth: usize,
        sub_pages: &mut Vec<(String, String)>,
    ) -> Result<Vec<BlockNode>, NotionError> {
        let mut nodes = Vec::new();
        for block in self.children(id).await? {
            let kind = block["type"].as_str().unwrap_or_default();
            let block_id = block["id"].as_str().unwrap_or_default().to_string();
            if block["archived"].as_bool() == Some(true) || block["in_trash"].as_bool() == Some(true) {
                continue;
            }
            if kind == "child_page" {
                let title = block["child_page"]["title"].as_str().unwrap_or("Untitled").to_string();
                sub_pages.push((block_id.clone(), title));
            }
            let children = if block["has_children"].as_bool() == Some(true) && kind != "child_page" && depth < MAX_DEPTH
            {
                Box::pin(self.block_tree(&block_id, depth + 1, sub_pages)).await?
            } else {
                Vec::new()
            };
            nodes.push(BlockNode { block, children });
        }
        Ok(nodes)
    }
}

fn next_cursor(response: &Value) -> Option<String> {
    if response["has_more"].as_bool() == Some(true) {
        response["next_cursor"].as_str().map(str::to_string)
    } else {
        None
    }
}

/// A page waiting to be read: its id, title, parent, breadcrumb and (for database rows) properties.
struct PendingPage {
    id: String,
    title: String,
    parent: String,
    breadcrumb: Vec<String>,
    properties: Option<serde_json::Map<String, Value>>,
    last_edited: Option<String>,
}

/// Reads every page of `database` (and their sub-pages) as documents. A page that cannot be read
/// is a problem; a database that cannot be queried is an error.
pub async fn read_database(
    client: &NotionClient,
    database: &str,
    progress: &ProgressBar,
) -> Result<(Vec<NewDocument>, Vec<Problem>), NotionError> {
    let database_id = database.replace('-', "").to_ascii_lowercase();
    let pages = client.query_database(database).await?;
    let mut queue: VecDeque<PendingPage> = pages
        .iter()
        .filter(|page| page["archived"].as_bool() != Some(true) && page["in_trash"].as_bool() != Some(true))
        .map(|page| PendingPage {
            id: page["id"].as_str().unwrap_or_default().to_string(),
            title: page_title(page),
            parent: database_id.clone(),
            breadcrumb: Vec::new(),
            properties: Some(page_properties(page)),
            last_edited: page["last_edited_time"].as_str().map(str::to_string),
        })
        .collect();
    progress.set_length(queue.len() as u64);
    let mut documents = Vec::new();
    let mut problems = Vec::new();
    while let Some(page) = queue.pop_front() {
        progress.set_message(page.title.clone());
        let mut sub_pages = Vec::new();
        match client.block_tree(&page.id, 0, &mut sub_pages).await {
            Ok(blocks) => {
                let mut breadcrumb = page.breadcrumb.clone();
                breadcrumb.push(page.title.clone());
                let children: Vec<String> = sub_pages.iter().map(|(id, _)| id.replace('-', "")).collect();
                for (id, title) in sub_pages {
                    progress.inc_length(1);
                    queue.push_back(PendingPage {
                        id,
                        title,
                        parent: page.id.replace('-', ""),
                        breadcrumb: breadcrumb.clone(),
                        properties: None,
                        last_edited: None,
                    });
                }
                documents.push(to_document(&page, &database_id, &blocks, children));
            }
            Err(err) => problems.push(Problem::new(page_url(&page.id), err.to_string())),
        }
        progress.inc(1);
    }
    Ok((documents, problems))
}

fn to_document(page: &PendingPage, database_id: &str, blocks: &[BlockNode], children: Vec<String>) -> NewDocument {
    let content = markdown::clean(&render(blocks));
    let notion_id = page.id.replace('-', "").to_ascii_lowercase();
    let mut metadata = json!({
        "notion_id": notion_id,
        "parent_id": page.parent,
        "breadcrumb": page.breadcrumb,
        "children": children,
        "links": { "pages": children, "web": web_links(&content) },
        "via": "api",
    });
    if let Some(properties) = &page.properties {
        metadata["database"] = json!({ "id": database_id, "name": Value::Null });
        metadata["properties"] = Value::Object(properties.clone());
    }
    if let Some(edited) = &page.last_edited {
        metadata["last_edited_time"] = json!(edited);
    }
    NewDocument {
        source: Source::Notion,
        url: page_url(&notion_id),
        title: page.title.clone(),
        content,
        metadata,
        quality: None,
    }
}
