//! robots.txt, fetched once per site and obeyed.
//!
//! The crawler asks [`RobotsCache::check`] before every page. The first question about a site
//! fetches its `/robots.txt` (concurrent questions wait for that one fetch) and parses it with
//! `texting_robots`, matching our user agent's product token. As RFC 9309 says: a 4xx means no
//! rules (crawl freely); a 5xx or no answer means the site is unreachable, so nothing is crawled
//! there. A `Crawl-delay` raises the per-host politeness delay.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use texting_robots::Robot;
use tokio::sync::{Mutex, OnceCell};
use url::Url;

/// What one site's robots.txt allows.
#[derive(Debug)]
enum Rules {
    /// No robots.txt (4xx): everything is allowed.
    AllowAll,
    /// Parsed rules.
    Parsed(Robot),
    /// robots.txt could not be fetched: nothing is allowed.
    Unreachable(String),
    /// The site's address is not one the crawler may reach ([`super::egress`]).
    Refused(String),
}

/// The answer for one URL.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Fetch it, waiting at least this long between requests to the site (from Crawl-delay).
    Allowed(Option<Duration>),
    /// Don't: why.
    Denied(String),
}

/// robots.txt rules per site (scheme, host and port), fetched on first use.
pub struct RobotsCache {
    http: reqwest::Client,
    agent: String,
    max_bytes: usize,
    sites: Mutex<HashMap<String, Arc<OnceCell<Rules>>>>,
}

impl RobotsCache {
    /// A cache that fetches with `http` and matches rules for `user_agent`'s product token.
    pub fn new(http: reqwest::Client, user_agent: &str) -> Self {
        let agent = user_agent.split(['/', ' ']).next().unwrap_or(user_agent).to_string();
        Self {
            http,
            agent,
            max_bytes: 512 * 1024,
            sites: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `url` may be fetched.
    pub async fn check(&self, url: &Url) -> Verdict {
        let origin = url.origin().ascii_serialization();
        let cell = {
            let mut sites = self.sites.lock().await;
            sites.entry(origin.clone()).or_default().clone()
        };
        let rules = cell.get_or_init(|| self.fetch(&origin)).await;
        match rules {
            Rules::AllowAll => Verdict::Allowed(None),
            Rules::Parsed(robot) => {
                if robot.allowed(url.as_str()) {
                    Verdict::Allowed(robot.delay.map(|s| Duration::from_secs_f32(s.clamp(0.0, 60.0))))
                } else {
                    Verdict::Denied(format!(
                        "disallowed by {origin}/robots.txt for user agent {}",
                        self.agent
                    ))
                }
            }
            Rules::Refused(why) => Verdict::Denied(why.clone()),
            Rules::Unreachable(why) => Verdict::Denied(format!(
                "{origin}/robots.txt could not be fetched ({why}), so the site is not crawled (RFC 9309)"
            )),
        }
    }

    async fn fetch(&self, origin: &str) -> Rules {
        let url = format!("{origin}/robots.txt");
        let response = match self.http.get(&url).send().await {
            Ok(response) => response,
            Err(err) => {
                return match super::egress::refusal(&err) {
                    Some(refused) => Rules::Refused(refused.to_string()),
                    None => Rules::Unreachable(err.without_url().to_string()),
                };
            }
        };
        let status = response.status();
        if status.is_client_error() {
            return Rules::AllowAll;
        }
        if !status.is_success() {
            return Rules::Unreachable(format!("HTTP {status}"));
        }
        let mut body = Vec::new();
        let mut response = response;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() >= self.max_bytes {
                        // RFC 9309: parse at least the first 500 KiB, ignore the rest.
                        body.truncate(self.max_bytes);
                        break;
                    }
                }
                Ok(None) => break,
                Err(err) => return Rules::Unreachable(err.without_url().to_string()),
            }
        }
        match Robot::new(&self.agent, &body) {
            Ok(robot) => Rules::Parsed(robot),
            Err(err) => {
                tracing::warn!(%url, "unparsable robots.txt treated as no rules: {err}");
                Rules::AllowAll
            }
        }
    }
}
