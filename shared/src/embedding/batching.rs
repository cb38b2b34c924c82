//! Batching by token budget: sort texts by length and cut batches so that padded size stays under
//! the budget. Similar lengths share a batch, so almost no compute is spent on padding.

/// Splits text indices into batches whose `longest × count` stays within `budget` tokens
/// (a single text longer than the budget gets a batch of its own). Batches hold indices into
/// `lengths`, shortest texts first.
pub fn plan_batches(lengths: &[usize], budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending, so this text is the longest of the batch if added.
        let padded = lengths[i].max(1) * (current.len() + 1);
        if !current.is_empty() && padded > budget {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_text_lands_in_exactly_one_batch() {
        let lengths = [5, 300, 7, 7, 120, 1, 64];
        let batches = plan_batches(&lengths, 256);
        let mut seen: Vec<usize> = batches.concat();
        seen.sort_unstable();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
    }

    #[test]
    fn batches_stay_within_budget_except_oversized_texts() {
        let lengths = [10, 10, 10, 10, 50, 50, 200, 400];
        for batch in plan_batches(&lengths, 100) {
            let longest = batch.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(longest * batch.len() <= 100 || batch.len() == 1, "{batch:?}");
        }
    }

    #[test]
    fn similar_lengths_share_batches() {
        let lengths = [100, 3, 100, 3];
        let batches = plan_batches(&lengths, 200);
        assert_eq!(batches, vec![vec![1, 3], vec![0, 2]]);
    }
}
