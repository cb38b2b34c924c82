//! Scoring given answers: how likely the model finds each of several texts as its reply.
//!
//! Generation picks one token at a time, and a small model's first tokens decide the rest: a
//! greedy answer may start on the wrong line and copy it. Asking the model instead how likely each
//! candidate reply is, whole (every token given the prompt and the tokens before it, then the end
//! of its turn), reads what teacher-forced training teaches: extractive answering
//! (`answers::extract`) uses it to choose among the sources' own sentences.
//!
//! The prompt is read once; each candidate then runs after it and is taken back off the cache
//! (packed path), or runs on a copy of the model that has read it (candle path, whose cache cannot
//! be cut back but is cheap to copy).

use candle_core::Tensor;

use super::{ChatMessage, GenerationError, Generator, Model, PREFILL_CHUNK};

type Result<T> = std::result::Result<T, GenerationError>;

/// How likely the model finds one candidate reply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplyScore {
    /// Sum of the natural log-probabilities of its tokens and of ending the turn after them.
    pub log_prob: f32,
    /// Tokens scored (its own and the end of turn).
    pub tokens: usize,
}

impl ReplyScore {
    /// Log-probability per token: comparable between replies of different lengths.
    pub fn mean(&self) -> f32 {
        self.log_prob / self.tokens.max(1) as f32
    }
}

/// `log softmax(logits)[token]`, and the log of the probability of any of `ends`.
fn log_probs(logits: &[f32], token: Option<u32>, ends: &[u32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln() + max;
    match token {
        Some(token) => logits.get(token as usize).map_or(f32::NEG_INFINITY, |l| l - log_sum),
        None => {
            let end: f32 = ends
                .iter()
                .filter_map(|&e| logits.get(e as usize))
                .map(|l| (l - log_sum).exp())
                .sum();
            end.ln()
        }
    }
}

impl Generator {
    /// Scores each of `replies` as the model's answer to `messages`.
    pub fn score_replies(&self, messages: &[ChatMessage], replies: &[String]) -> Result<Vec<ReplyScore>> {
        let prompt = self.prompt_tokens(messages)?;
        let encoded: Vec<Vec<u32>> = replies
            .iter()
            .map(|r| self.prompts.plain_text(r.trim()))
            .collect::<Result<_>>()?;
        let longest = encoded.iter().map(Vec::len).max().unwrap_or(0);
        if prompt.is_empty() || prompt.len() + longest + 1 > self.context_length {
            return Err(GenerationError::Request(format!(
                "the prompt ({} tokens) and the longest reply ({longest}) do not fit the model's context window of {}",
                prompt.len(),
                self.context_length
            )));
        }
        let ends = &self.stop_tokens;
        let score = |first: &[f32], rows: &[f32], reply: &[u32]| -> ReplyScore {
            let vocab = first.len();
            let mut log_prob = 0.0;
            let mut previous = first;
            for (i, &token) in reply.iter().enumerate() {
                log_prob += log_probs(previous, Some(token), ends);
                previous = &rows[i * vocab..(i + 1) * vocab];
            }
            log_prob += log_probs(previous, None, ends);
            ReplyScore {
                log_prob,
                tokens: reply.len() + 1,
            }
        };
        match &self.model {
            Model::Packed(llama) => {
                let mut cache = llama.cache_for(prompt.len() + longest);
                let mut first = Vec::new();
                for chunk in prompt.chunks(PREFILL_CHUNK) {
                    first = llama.forward(chunk, &mut cache)?;
                }
                let mut scores = Vec::with_capacity(encoded.len());
                for reply in &encoded {
                    let rows = if reply.is_empty() {
                        Vec::new()
                    } else {
                        llama.forward_all(reply, &mut cache)?
                    };
                    scores.push(score(&first, &rows, reply));
                    cache.truncate(prompt.len());
                }
                Ok(scores)
            }
            Model::Candle(weights, _) => {
                let mut read = weights.clone();
                let input = Tensor::new(prompt.as_slice(), &self.device)?.unsqueeze(0)?;
                let first = read.forward(&input, 0)?.squeeze(0)?.to_dtype(candle_core::DType::F32)?;
                let first: Vec<f32> = first.flatten_all()?.to_vec1()?;
                let mut scores = Vec::with_capacity(encoded.len());
                for reply in &encoded {
                    let mut model = read.clone();
                    let mut rows = Vec::with_capacity(reply.len() * first.len());
                    for (i, &token) in reply.iter().enumerate() {
                        let input = Tensor::new(&[token], &self.device)?.unsqueeze(0)?;
                        let logits = model.forward(&input, prompt.len() + i)?.squeeze(0)?;
                        let logits = logits.to_dtype(candle_core::DType::F32)?;
                        debug_assert_eq!(logits.dims().last().copied(), Some(first.len()));
                        rows.extend(logits.flatten_all()?.to_vec1::<f32>()?);
                    }
                    scores.push(score(&first, &rows, reply));
                }
                Ok(scores)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_probabilities_are_normalised_and_ends_add_up() {
        let logits = [0.0f32, (2.0f32).ln(), 0.0, 0.0];
        // Probabilities 1/5, 2/5, 1/5, 1/5.
        assert!((log_probs(&logits, Some(1), &[]) - (0.4f32).ln()).abs() < 1e-6);
        assert!((log_probs(&logits, None, &[2, 3]) - (0.4f32).ln()).abs() < 1e-6);
        assert_eq!(log_probs(&logits, Some(9), &[]), f32::NEG_INFINITY);
        let score = ReplyScore {
            log_prob: -6.0,
            tokens: 3,
        };
        assert_eq!(score.mean(), -2.0);
    }
}
