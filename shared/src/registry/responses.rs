//! The teacher-response cache: what a teacher LLM answered, by hash of what it was asked.
//!
//! Distillation is the pipeline's most expensive step (a paid API, or minutes of local generation
//! per document). Each answer is written here the moment it arrives, keyed by the caller's hash of
//! (teacher, prompt, parameters), so a rerun, or a run resumed after a crash, asks nothing twice.
//! Writes are idempotent: the first answer stored under a key wins.

use sqlx::Row;

use super::Registry;
use crate::time::{millis, now};
use crate::{Error, Result};

impl Registry {
    /// The stored response for `key`, if any.
    pub async fn teacher_response(&self, key: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT response FROM teacher_responses WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        row.map(|row| {
            row.try_get::<String, _>("response")
                .map_err(|e| Error::backend("registry", e))
        })
        .transpose()
    }

    /// Stores `response` under `key` unless one is stored already; returns whether it was new.
    pub async fn store_teacher_response(&self, key: &str, teacher: &str, response: &str) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO teacher_responses (key, teacher, created_at, response) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(teacher)
        .bind(millis(&now()))
        .bind(response)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(done.rows_affected() == 1)
    }

    /// How many responses are stored for `teacher`.
    pub async fn teacher_responses(&self, teacher: &str) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM teacher_responses WHERE teacher = $1")
            .bind(teacher)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        let n: i64 = row.try_get("n").map_err(|e| Error::backend("registry", e))?;
        Ok(n as u64)
    }
}
