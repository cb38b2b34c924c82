//! Training examples: dataset rows rendered as the model will be prompted, tokenized, and grouped
//! into batches of similar length.
//!
//! A row `(instruction, answer)` becomes the chat `[system, user: instruction]` (the row's own
//! system message for a grounded `qa` row, the dataset prompt's otherwise) rendered with the
//! model's own chat template (ending where the assistant's turn starts, exactly the prompt the
//! `Generator` builds), then the answer's tokens and the end-of-turn token. The loss is on the
//! answer and the end-of-turn token only. Prompt and answer are tokenized apart, as the service
//! sees them: the prompt's tokens, then what the model generates.

use engram_shared::generation::checkpoint::Checkpoint;
use engram_shared::generation::{ChatMessage, ChatTemplate, PromptEncoder, Role};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Deserialize;

use super::model::Batch;

/// A dataset row as `publish` writes it (the columns training reads), of either task.
#[derive(Debug, Clone, Deserialize)]
pub struct Row {
    /// The row's own system message (a `qa` row's: the service's instructions with its sources);
    /// `summarize` rows have none and get the dataset prompt's.
    #[serde(default)]
    pub system: Option<String>,
    /// The user message.
    pub instruction: String,
    /// The teacher's answer.
    pub answer: String,
}

/// A tokenized example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Prompt, answer and end-of-turn tokens.
    pub tokens: Vec<u32>,
    /// How many of `tokens` are prompt (no loss).
    pub prompt: usize,
}

impl Example {
    /// Label tokens (answer and end of turn).
    pub fn labels(&self) -> usize {
        self.tokens.len() - self.prompt
    }
}

/// Renders and tokenizes rows for one model.
pub struct Renderer {
    template: ChatTemplate,
    encoder: PromptEncoder,
    bos: Option<u32>,
    end_of_turn: u32,
    system: String,
}

/// What became of a set of rows.
#[derive(Debug, Default)]
pub struct Rendered {
    /// The examples that fit.
    pub examples: Vec<Example>,
    /// Rows longer than the maximum sequence length, left out.
    pub too_long: usize,
}

impl Renderer {
    /// A renderer for `checkpoint`'s template and tokenizer, with system message `system`.
    pub fn new(checkpoint: &Checkpoint, system: &str) -> anyhow::Result<Self> {
        Ok(Renderer {
            template: ChatTemplate::new(&checkpoint.chat_template)?,
            encoder: PromptEncoder::new(checkpoint.tokenizer.clone()),
            bos: checkpoint.add_bos.then_some(checkpoint.bos).flatten(),
            end_of_turn: checkpoint.end_of_turn()?,
            system: system.to_string(),
        })
    }

    /// The prompt's tokens for `instruction` under `system` (the renderer's own system message when
    /// `None`), as the service would send it (the same [`PromptEncoder`]: only the template's
    /// markers are control tokens).
    pub fn prompt(&self, system: Option<&str>, instruction: &str) -> anyhow::Result<Vec<u32>> {
        let messages = [
            ChatMessage::new(Role::System, system.unwrap_or(&self.system)),
            ChatMessage::new(Role::User, instruction),
        ];
        let mut tokens: Vec<u32> = self.bos.into_iter().collect();
        tokens.extend(self.encoder.encode(&self.template, &messages)?);
        Ok(tokens)
    }

    /// One row as an example.
    pub fn example(&self, row: &Row) -> anyhow::Result<Example> {
        let mut tokens = self.prompt(row.system.as_deref(), &row.instruction)?;
        let prompt = tokens.len();
        tokens.extend(self.encoder.plain_text(row.answer.trim())?);
        tokens.push(self.end_of_turn);
        Ok(Example { tokens, prompt })
    }

    /// Every row that fits in `max_len` tokens, as examples.
    pub fn render_all(&self, rows: &[Row], max_len: usize) -> anyhow::Result<Rendered> {
        let mut rendered = Rendered::default();
        for row in rows {
            let example = self.example(row)?;
            if example.tokens.len() > max_len {
                rendered.too_long += 1;
            } else {
                rendered.examples.push(example);
            }
        }
        Ok(rendered)
    }
}

/// The examples of one epoch from two tasks: all of both when `qa_share` is `None`; else every
/// summary once and as many `qa` examples as make `qa_share` of the epoch (a `qa` task with too
/// few repeated whole and then sampled by `seed`, one with too many sampled), and with a share of
/// 1 the `qa` examples alone. The summaries are never repeated: repeating them to fill an epoch
/// overfit them (README, Fine-tuning). With either task empty, the other's examples alone.
pub fn mix(summaries: &[Example], qa: &[Example], qa_share: Option<f64>, seed: u64) -> Vec<Example> {
    let Some(share) = qa_share.map(|s| s.clamp(0.0, 1.0)) else {
        return summaries.iter().chain(qa).cloned().collect();
    };
    if summaries.is_empty() || qa.is_empty() {
        return summaries.iter().chain(qa).cloned().collect();
    }
    if share >= 1.0 {
        return qa.to_vec();
    }
    let from_qa = (summaries.len() as f64 * share / (1.0 - share)).round() as usize;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x005E_ED0F_7A5C);
    let mut mixed = summaries.to_vec();
    for _ in 0..from_qa / qa.len() {
        mixed.extend_from_slice(qa);
    }
    let mut rest: Vec<&Example> = qa.iter().collect();
    rest.shuffle(&mut rng);
    mixed.extend(rest.into_iter().take(from_qa % qa.len()).cloned());
    mixed
}

/// The batches of one epoch: examples sorted by length and cut into groups of `batch_size`
/// (similar lengths share a batch, so batches cost alike), the groups in an order shuffled by
/// `seed` and `epoch` alone (a resumed run sees the same order). A batch packs its examples back
/// to back; the trainer runs them one forward pass each (`Batch::examples`) and adds their
/// gradients into one step.
pub fn epoch_batches(examples: &[Example], batch_size: usize, seed: u64, epoch: usize) -> Vec<Batch> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| (examples[i].tokens.len(), i));
    let mut groups: Vec<Vec<usize>> = order.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect();
    let mut rng = StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    groups.shuffle(&mut rng);
    groups
        .into_iter()
        .map(|group| {
            let mut batch = Batch::default();
            for i in group {
                batch.push(&examples[i].tokens, examples[i].prompt);
            }
            batch
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(len: usize, prompt: usize) -> Example {
        Example {
            tokens: (0..len as u32).collect(),
            prompt,
        }
    }

    #[test]
    fn batches_group_similar_lengths_and_depend_only_on_seed_and_epoch() {
        let examples: Vec<Example> = [5, 40, 6, 41, 7, 42].iter().map(|&l| example(l, 2)).collect();
        let a = epoch_batches(&examples, 2, 7, 0);
        assert_eq!(a, epoch_batches(&examples, 2, 7, 0));
        let mut sizes: Vec<Vec<usize>> = a.iter().map(|b| b.segments.iter().map(|s| s.1).collect()).collect();
        sizes.sort();
        assert_eq!(sizes, vec![vec![5, 6], vec![7, 40], vec![41, 42]]);
        let labels: usize = a.iter().map(Batch::labels).sum();
        assert_eq!(labels, examples.iter().map(Example::labels).sum::<usize>());
    }

    #[test]
    fn tasks_mix_at_the_share_asked_and_keep_every_row_by_default() {
        let summaries: Vec<Example> = (0..6).map(|i| example(10 + i, 2)).collect();
        let qa: Vec<Example> = (0..2).map(|i| example(100 + i, 2)).collect();
        assert_eq!(mix(&summaries, &qa, None, 1).len(), 8);
        let half = mix(&summaries, &qa, Some(0.5), 1);
        assert_eq!(half.len(), 12);
        assert_eq!(
            half.iter().filter(|e| e.tokens.len() >= 100).count(),
            6,
            "qa repeated to half"
        );
        assert_eq!(
            half.iter().filter(|e| e.tokens.len() < 100).count(),
            6,
            "every summary once"
        );
        assert_eq!(half, mix(&summaries, &qa, Some(0.5), 1), "the same seed, the same mix");
        let quarter = mix(&summaries, &qa, Some(0.25), 1);
        assert_eq!(quarter.iter().filter(|e| e.tokens.len() >= 100).count(), 2);
        assert_eq!(
            mix(&summaries, &qa, Some(0.0), 1),
            summaries,
            "the summaries alone, once"
        );
        assert_eq!(mix(&summaries, &qa, Some(1.0), 1), qa, "the qa examples alone");
        assert_eq!(mix(&summaries, &[], Some(0.5), 1).len(), 6);
    }

    #[test]
    fn labels_are_the_tokens_after_the_prompt_predicted_from_the_row_before() {
        let mut batch = Batch::default();
        batch.push(&[10, 11, 12, 13], 2);
        batch.push(&[20, 21, 22], 1);
        assert_eq!(batch.segments, vec![(0, 4), (4, 3)]);
        assert_eq!(batch.positions, vec![0, 1, 2, 3, 0, 1, 2]);
        assert_eq!(batch.targets, vec![(1, 12), (2, 13), (4, 21), (5, 22)]);
        let mut second = Batch::default();
        second.push(&[20, 21, 22], 1);
        assert_eq!(
            batch.examples()[1],
            second,
            "an example on its own is the batch of it alone"
        );
    }
}
