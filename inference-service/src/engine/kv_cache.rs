//! The KV-cache budget: how many bytes of keys and values the running sequences may hold.
//!
//! Each sequence's cache is its own (`llama::Cache`), sized when it is admitted for its prompt and
//! its token budget (`max_tokens`, within the context window), so a running sequence never needs
//! more and never has to be preempted: a sequence is admitted only when its reservation fits what
//! the running ones leave, and gives it back when it ends. This is llama.cpp's server's slots
//! made to the measure of each request, instead of vLLM's pages with preemption: simpler, and
//! exact, at the price of reserving for answers that end early.

/// Bytes reserved out of a fixed budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvCache {
    capacity: usize,
    used: usize,
}

impl KvCache {
    /// A budget of `capacity` bytes, none reserved.
    pub fn new(capacity: usize) -> Self {
        KvCache { capacity, used: 0 }
    }

    /// The budget.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Reserves `bytes` if they fit what is left.
    pub fn try_reserve(&mut self, bytes: usize) -> bool {
        match self.used.checked_add(bytes) {
            Some(total) if total <= self.capacity => {
                self.used = total;
                true
            }
            _ => false,
        }
    }

    /// Gives back a reservation.
    pub fn release(&mut self, bytes: usize) {
        self.used = self.used.saturating_sub(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_fit_the_budget_and_come_back() {
        let mut cache = KvCache::new(100);
        assert!(cache.try_reserve(60));
        assert!(!cache.try_reserve(41), "over the budget");
        assert!(cache.try_reserve(40));
        assert_eq!(cache.used(), 100);
        cache.release(60);
        assert!(cache.try_reserve(55));
        assert!(!cache.try_reserve(usize::MAX), "no overflow");
        assert_eq!(cache.used(), 95);
    }
}
