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
    #[error("{variable}={address}: {reason}. {hint}")]
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

/// Removes the password from a URL-like address so it can be shown in messages and logs.
pub fn redact(address: &str) -> String {
    match url::Url::parse(address) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("****"));
            url.to_string()
        }
        _ => address.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("postgres://user:secret@db:5432/engram"),
            "postgres://user:****@db:5432/engram"
        );
        assert_eq!(redact("mongodb://db:27017"), "mongodb://db:27017");
        assert_eq!(redact("not a url"), "not a url");
    }
}
