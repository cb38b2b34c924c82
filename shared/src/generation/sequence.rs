//! One generation as a sequence of steps, so that many can run together.
//!
//! A [`Sequence`] is a request's state between steps: its tokens, its own KV cache over the shared
//! weights, its sampler (seeded per request), stop strings and the text handed out so far. The
//! prompt is read in chunks ([`Generator::prefill`]); then every step decodes one token for each of
//! a batch of sequences at once ([`Generator::decode_batch`]), the weights read once for all of them.
//! Nothing in a step depends on the other sequences of the batch: each one's tokens are those it
//! gets alone, bit for bit, and [`Generator::generate`] is a batch of one.
//!
//! The candle path (weight formats other than `packed`) runs the same steps one sequence at a
//! time, and reads a prompt whole: candle's quantized llama masks a multi-token input only when
//! the cache is empty.

use std::time::Instant;

use candle_core::Tensor;
use candle_transformers::models::quantized_llama::ModelWeights;

use super::sampling::{Sampler, StopMatcher, sampler};
use super::{
    ChatMessage, Completion, FinishReason, Flow, GenerationError, GenerationParams, Generator, Model, Timings, Usage,
    llama,
};

type Result<T> = std::result::Result<T, GenerationError>;

/// Prompt tokens read per step by default: long enough that a chunk runs at the tiled product's
/// speed, short enough that running streams wait for one chunk at a time, not a whole prompt.
pub const PREFILL_CHUNK: usize = 256;

/// A sequence's model state: its own keys and values over the shared weights.
enum State {
    /// candle's quantized llama, whose cache lives inside a (reference-counted) copy of the model.
    Candle(Box<ModelWeights>),
    /// engram's forward pass and its cache.
    Packed(llama::Cache),
}

/// One generation in progress.
pub struct Sequence {
    params: GenerationParams,
    /// The prompt's tokens, then each generated one.
    tokens: Vec<u32>,
    prompt_tokens: usize,
    /// Tokens the model has read (the cache's positions).
    fed: usize,
    /// Prompt positions copied from the last prompt read instead of read (whole chunks).
    reused: usize,
    /// Most tokens to generate: `max_tokens`, within the context window.
    budget: usize,
    state: State,
    sampler: Sampler,
    stops: StopMatcher,
    generated: Vec<u32>,
    /// Bytes of decoded text handed out or held back by the stop matcher.
    emitted: usize,
    text: String,
    started: Instant,
    timings: Timings,
    finished: Option<FinishReason>,
}

/// What one step of a sequence produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    /// New text to hand out (may be empty: a chunk of the prompt, or bytes of an unfinished
    /// character or of a possible stop string held back).
    pub text: String,
    /// Set when the generation ended with this step.
    pub completion: Option<Completion>,
}

impl Sequence {
    /// Prompt tokens not yet read by the model.
    pub fn prompt_left(&self) -> usize {
        self.prompt_tokens - self.fed.min(self.prompt_tokens)
    }

    /// Positions of keys and values the sequence can come to hold: its prompt and its budget.
    pub fn positions_needed(&self) -> usize {
        self.prompt_tokens + self.budget
    }

    /// Tokens of the rendered prompt.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// Prompt positions copied from the last prompt read (whole chunks it shared), not read.
    pub fn reused_tokens(&self) -> usize {
        self.reused
    }

    /// The completion so far, ended as cancelled (the caller stopped it).
    pub fn cancel(mut self) -> Completion {
        self.timings.decode = self.started.elapsed().saturating_sub(self.timings.prompt);
        self.completion(FinishReason::Cancelled)
    }

    fn completion(&self, finish: FinishReason) -> Completion {
        Completion {
            text: self.text.clone(),
            usage: Usage {
                prompt_tokens: self.prompt_tokens,
                completion_tokens: self.generated.len(),
            },
            finish_reason: finish,
            timings: self.timings,
        }
    }

    /// Ends the generation: text held back as a possible stop string's start was not one.
    fn finish(&mut self, finish: FinishReason, step: &mut Step) {
        let rest = self.stops.flush();
        if !rest.is_empty() {
            self.text.push_str(&rest);
            step.text.push_str(&rest);
        }
        self.timings.decode = self.started.elapsed().saturating_sub(self.timings.prompt);
        self.finished = Some(finish);
        step.completion = Some(self.completion(finish));
    }
}

impl Generator {
    /// Starts a generation of an answer to `messages`: renders and encodes the prompt and checks
    /// it fits the context window; the model reads nothing yet.
    pub fn begin(&self, messages: &[ChatMessage], params: &GenerationParams) -> Result<Sequence> {
        let tokens = self.prompt_tokens(messages)?;
        let prompt_tokens = tokens.len();
        if prompt_tokens >= self.context_length {
            return Err(GenerationError::Request(format!(
                "the prompt is {prompt_tokens} tokens but the model's context window is {}: shorten the conversation or retrieve fewer chunks",
                self.context_length
            )));
        }
        let budget = params.max_tokens.min(self.context_length - prompt_tokens);
        let state = match &self.model {
            // Shared weights, private KV cache: cloning copies reference-counted tensors only.
            Model::Candle(weights, _) => State::Candle(Box::new(weights.clone())),
            Model::Packed(llama) => State::Packed(llama.cache_for(prompt_tokens + budget)),
        };
        Ok(Sequence {
            sampler: sampler(params),
            stops: StopMatcher::new(&params.stop),
            params: params.clone(),
            tokens,
            prompt_tokens,
            fed: 0,
            reused: 0,
            budget,
            state,
            generated: Vec::new(),
            emitted: 0,
            text: String::new(),
            started: Instant::now(),
            timings: Timings::default(),
            finished: (budget == 0).then_some(FinishReason::Length),
        })
    }

    /// Reads up to `chunk` more prompt tokens (the whole prompt on the candle path). The step
    /// that reads the last of them samples the first generated token.
    pub fn prefill(&self, sequence: &mut Sequence, chunk: usize) -> Result<Step> {
        let mut step = Step::default();
        if let Some(finish) = sequence.finished {
            // Nothing to generate (no room, or max_tokens 0).
            sequence.finish(finish, &mut step);
            return Ok(step);
        }
        let start = sequence.fed;
        let logits = match &mut sequence.state {
            State::Candle(model) => {
                let input = Tensor::new(&sequence.tokens[start..sequence.prompt_tokens], &self.device)?.unsqueeze(0)?;
                sequence.fed = sequence.prompt_tokens;
                model.forward(&input, start)?.squeeze(0)?
            }
            State::Packed(cache) => {
                let Model::Packed(llama) = &self.model else {
                    unreachable!("a packed sequence runs on a packed model")
                };
                let chunk = chunk.max(2);
                let mut start = start;
                if start == 0
                    && let Some(prefixes) = &self.prefixes
                {
                    // The whole chunks shared with the last prompt read, copied; at least two
                    // tokens are left to read (a chunk is never one token alone, see below).
                    start = prefixes.restore(&sequence.tokens[..sequence.prompt_tokens], chunk, 2, cache);
                    sequence.reused = start;
                    sequence.fed = start;
                }
                // A chunk never leaves one token alone: a single token takes the decode path's
                // 16-bit product, a chunk the f32 one, and the answer must not depend on chunking.
                let mut end = (start + chunk).min(sequence.prompt_tokens);
                if sequence.prompt_tokens - end == 1 {
                    end += 1;
                }
                let logits = llama.forward(&sequence.tokens[start..end], cache)?;
                sequence.fed = end;
                if end == sequence.prompt_tokens
                    && let Some(prefixes) = &self.prefixes
                {
                    prefixes.store(&sequence.tokens[..end], chunk, cache);
                }
                let count = logits.len();
                Tensor::from_vec(logits, count, &self.device)?
            }
        };
        if sequence.fed < sequence.prompt_tokens {
            return Ok(step);
        }
        sequence.timings.prompt = sequence.started.elapsed();
        self.accept(sequence, &logits, &mut step)?;
        Ok(step)
    }

    /// Decodes one token for each sequence, all of whose prompts have been read: one pass over
    /// the weights for all of them on the packed path.
    pub fn decode_batch(&self, sequences: &mut [&mut Sequence]) -> Result<Vec<Step>> {
        for sequence in sequences.iter() {
            if sequence.prompt_left() > 0 || sequence.finished.is_some() {
                return Err(GenerationError::Request(
                    "a sequence still reading its prompt, or finished, cannot decode".into(),
                ));
            }
        }
        let logits: Vec<Tensor> = match &self.model {
            Model::Packed(llama) => {
                let tokens: Vec<u32> = sequences.iter().map(|s| s.tokens[s.fed]).collect();
                let mut caches: Vec<&mut llama::Cache> = sequences
                    .iter_mut()
                    .map(|s| match &mut s.state {
                        State::Packed(cache) => cache,
                        State::Candle(_) => unreachable!("a candle sequence runs on a candle model"),
                    })
                    .collect();
                llama
                    .forward_batch(&tokens, &mut caches)?
                    .into_iter()
                    .map(|logits| {
                        let count = logits.len();
                        Tensor::from_vec(logits, count, &self.device)
                    })
                    .collect::<std::result::Result<_, _>>()?
            }
            Model::Candle(..) => sequences
                .iter_mut()
                .map(|s| {
                    let (token, position) = (s.tokens[s.fed], s.fed);
                    let State::Candle(model) = &mut s.state else {
                        unreachable!("a packed sequence runs on a packed model")
                    };
                    let input = Tensor::new(&[token], &self.device)?.unsqueeze(0)?;
                    Ok(model.forward(&input, position)?.squeeze(0)?)
                })
                .collect::<Result<_>>()?,
        };
        let mut steps = Vec::with_capacity(sequences.len());
        for (sequence, logits) in sequences.iter_mut().zip(&logits) {
            sequence.fed += 1;
            let mut step = Step::default();
            self.accept(sequence, logits, &mut step)?;
            steps.push(step);
        }
        Ok(steps)
    }

    /// Samples the next token from `logits` and hands out the text it completes.
    fn accept(&self, sequence: &mut Sequence, logits: &Tensor, step: &mut Step) -> Result<()> {
        let next = sequence.sampler.next(logits, &sequence.tokens, &sequence.params)?;
        if self.stop_tokens.contains(&next) && !sequence.params.ignore_eos {
            sequence.finish(FinishReason::Stop, step);
            return Ok(());
        }
        sequence.tokens.push(next);
        sequence.generated.push(next);
        // Decode everything so far and hand out what is new, once it is whole UTF-8.
        let decoded = self.decode(&sequence.generated)?;
        if decoded.len() > sequence.emitted && !decoded.ends_with('\u{FFFD}') {
            let fresh = &decoded[sequence.emitted..];
            sequence.emitted = decoded.len();
            let (ready, stopped) = sequence.stops.push(fresh);
            sequence.text.push_str(&ready);
            step.text.push_str(&ready);
            if stopped {
                sequence.finish(FinishReason::Stop, step);
                return Ok(());
            }
        }
        if sequence.generated.len() >= sequence.budget {
            sequence.finish(FinishReason::Length, step);
        }
        Ok(())
    }

    /// Generates an answer to `messages`, calling `on_text` with each new piece of text: a batch
    /// of one, stepped as the engine steps it (prompt chunks of [`PREFILL_CHUNK`], then one token
    /// a step), so it gives the tokens the service gives.
    pub fn generate(
        &self,
        messages: &[ChatMessage],
        params: &GenerationParams,
        mut on_text: impl FnMut(&str) -> Flow,
    ) -> Result<Completion> {
        let mut sequence = self.begin(messages, params)?;
        loop {
            let step = if sequence.prompt_left() > 0 || sequence.finished.is_some() {
                self.prefill(&mut sequence, PREFILL_CHUNK)?
            } else {
                self.decode_batch(&mut [&mut sequence])?.pop().unwrap_or_default()
            };
            let flow = if step.text.is_empty() {
                Flow::Continue
            } else {
                on_text(&step.text)
            };
            if let Some(completion) = step.completion {
                return Ok(completion);
            }
            if flow == Flow::Stop {
                return Ok(sequence.cancel());
            }
        }
    }
}
