//! Timestamps as every backend can store them: UTC, millisecond precision.
//!
//! SQLite and PostgreSQL keep them as `BIGINT` milliseconds and MongoDB as BSON dates (also
//! milliseconds), so a value read back from any backend equals the value written.

use chrono::{DateTime, TimeZone, Utc};

/// A UTC timestamp truncated to milliseconds.
pub type Timestamp = DateTime<Utc>;

/// Now, truncated to milliseconds.
pub fn now() -> Timestamp {
    from_millis(Utc::now().timestamp_millis())
}

/// A timestamp from Unix milliseconds.
pub fn from_millis(ms: i64) -> Timestamp {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Unix milliseconds of a timestamp.
pub fn millis(ts: &Timestamp) -> i64 {
    ts.timestamp_millis()
}
