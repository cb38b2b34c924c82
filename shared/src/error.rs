//! One error type for the storage contract.
//!
//! Every backend maps its driver's errors into these variants so callers can react to the kind of
//! failure (a missing record, a conflict, a bad configuration) without knowing which backend ran.
//! Messages are written for the person running engram: they say what failed and what to do.

use std::fmt;

/// The result type of every storage operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in a store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A backend could not be opened with the configuration given. Names the variable to fix.
    #[error("{variable}={}: {}. {hint}", redact(address), redact(reason))]
    Config {
        /// The environment variable (or flag) that chose this backend, e.g. `ENGRAM_MONGODB_URI`.
        variable: &'static str,
        /// The address that was tried, with any password removed.
        address: String,
        /// What failed.
        reason: String,
        /// What the user can do about it.
        hint: String,
    },
    /// The record asked for does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked up, e.g. `document 3f2a…`.
        what: String,
    },
    /// The operation conflicts with what is stored (e.g. creating a version that exists).
    #[error("{0}")]
    Conflict(String),
    /// The caller passed something the contract does not accept.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Stored data failed an integrity check (e.g. an artifact whose bytes do not match its hash).
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The backend failed while running an operation.
    #[error("{backend} failed: {message}")]
    Backend {
        /// Which backend, e.g. `sqlite`, `mongodb`, `qdrant-edge`.
        backend: &'static str,
        /// The driver's message.
        message: String,
    },
}

impl Error {
    /// A backend failure with the driver's message.
    pub fn backend(backend: &'static str, err: impl fmt::Display) -> Self {
        Error::Backend {
            backend,
            message: err.to_string(),
        }
    }

    /// A missing record.
    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }

    /// True when the error means "no such record".
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}

/// Hides the userinfo (`user:password@`) of a URL-like address so it can be shown in messages and
/// logs. Done on the text, not through a URL parser: a MongoDB replica-set URI
/// (`mongodb://u:p@h1:27017,h2:27017/`) is no valid URL, and an unparsable value must not come
/// out unredacted. Every `scheme://…@` in the text is covered, so a message quoting several
/// addresses is safe too.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let authority_start = at + 3;
        out.push_str(&rest[..authority_start]);
        let after = &rest[authority_start..];
        let authority_end = after
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>'))
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                out.push_str("****");
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_userinfo_wherever_it_is() {
        assert_eq!(
            redact("postgres://user:secret@db:5432/engram"),
            "postgres://****@db:5432/engram"
        );
        assert_eq!(
            redact("mongodb://admin:s3cr%40t@h1:27017,h2:27017,h3:27017/engram?replicaSet=rs0&authSource=admin"),
            "mongodb://****@h1:27017,h2:27017,h3:27017/engram?replicaSet=rs0&authSource=admin"
        );
        assert_eq!(
            redact("mongodb+srv://u:p@cluster0.example.net/?retryWrites=true"),
            "mongodb+srv://****@cluster0.example.net/?retryWrites=true"
        );
        assert_eq!(
            redact("cannot reach http://a:b@proxy:3128 or postgres://x:y@db/z (refused)"),
            "cannot reach http://****@proxy:3128 or postgres://****@db/z (refused)"
        );
        assert_eq!(
            redact("http://host/p?email=a@b.c"),
            "http://host/p?email=a@b.c",
            "an @ after the path stays"
        );
        assert_eq!(redact("mongodb://db:27017"), "mongodb://db:27017");
        assert_eq!(redact("not a url"), "not a url");
    }
}
