//! When to try a request again: exponential backoff with jitter, and the server's `Retry-After`.
//!
//! Shared by everything that talks to servers which may be slow, overloaded or rate-limiting: the
//! crawler, the Notion API client and the HTTP teacher.

use std::time::Duration;

/// The wait before retry number `attempt` (1-based): `base` doubled per attempt (at most 64x),
/// plus up to `base` of random jitter so that many clients do not retry in step.
pub fn backoff(attempt: u32, base: Duration) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1)).min(64);
    let jitter_ms = rand::random_range(0..=base.as_millis().max(1) as u64);
    base * factor + Duration::from_millis(jitter_ms)
}

/// The wait a response asks for in its `Retry-After` header (seconds), at most `max`.
pub fn retry_after(response: &reqwest::Response, max: Duration) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let seconds = value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)?;
    Some(Duration::from_secs_f64(seconds).min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        let base = Duration::from_millis(100);
        for attempt in 1..=4 {
            let wait = backoff(attempt, base);
            let floor = base * 2u32.pow(attempt - 1);
            assert!(wait >= floor && wait <= floor + base, "{attempt}: {wait:?}");
        }
        assert!(backoff(30, base) <= base * 65);
    }
}
