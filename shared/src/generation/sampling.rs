//! Sampling parameters, the sampler, and stop strings.

use candle_core::{DType, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::utils::apply_repeat_penalty;

use super::GenerationError;

/// How to pick tokens; OpenAI's chat parameters plus top-k and repetition penalty.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus sampling mass (1.0 disables it).
    pub top_p: f64,
    /// Keep only the k most likely tokens (0 disables it).
    pub top_k: usize,
    /// Penalty on tokens already in the context (1.0 disables it).
    pub repetition_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    /// Seed of the sampler: the same seed and prompt give the same answer.
    pub seed: u64,
    /// Strings that end the answer (not included in it).
    pub stop: Vec<String>,
    /// Keep generating past the end-of-turn token (benchmarks need a fixed number of tokens).
    pub ignore_eos: bool,
}

impl Default for GenerationParams {
    fn default() -> Self {
        GenerationParams {
            max_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            seed: 299792458,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// Picks the next token from logits.
pub(super) struct Sampler {
    processor: LogitsProcessor,
}

/// Below this temperature sampling is greedy: it is the limit, and dividing logits by a tinier
/// temperature overflows f32 and leaves nothing to sample from.
const GREEDY_BELOW: f64 = 1e-3;

pub(super) fn sampler(params: &GenerationParams) -> Sampler {
    let t = params.temperature;
    // A nucleus smaller than any f32 probability keeps only the most likely token: greedy too.
    let top_p = params.top_p;
    let sampling = if t.is_nan() || t < GREEDY_BELOW || top_p.is_nan() || top_p < 1e-6 {
        Sampling::ArgMax
    } else {
        match (params.top_k > 0, params.top_p < 1.0) {
            (true, true) => Sampling::TopKThenTopP {
                k: params.top_k,
                p: params.top_p,
                temperature: t,
            },
            (true, false) => Sampling::TopK {
                k: params.top_k,
                temperature: t,
            },
            (false, true) => Sampling::TopP {
                p: params.top_p,
                temperature: t,
            },
            (false, false) => Sampling::All { temperature: t },
        }
    };
    Sampler {
        processor: LogitsProcessor::from_sampling(params.seed, sampling),
    }
}

impl Sampler {
    pub(super) fn next(
        &mut self,
        logits: &Tensor,
        context: &[u32],
        params: &GenerationParams,
    ) -> Result<u32, GenerationError> {
        let logits = logits.to_dtype(DType::F32)?;
        let logits = if params.repetition_penalty == 1.0 {
            logits
        } else {
            let start = context.len().saturating_sub(params.repeat_last_n);
            apply_repeat_penalty(&logits, params.repetition_penalty, &context[start..])?
        };
        Ok(self.processor.sample(&logits)?)
    }
}

/// Finds stop strings in streamed text, holding back any tail that could be the start of one.
pub(super) struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub(super) fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Adds text; returns what can be handed out and whether a stop string was found.
    pub(super) fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let ready = self.held[..at].to_string();
            self.held.clear();
            return (ready, true);
        }
        // Keep the longest tail that is a prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .rev()
                    .filter(move |&n| s.is_char_boundary(n))
                    .map(move |n| &s[..n])
            })
            .filter(|prefix| self.held.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let split = self.held.len() - keep;
        let ready = self.held[..split].to_string();
        self.held.drain(..split);
        (ready, false)
    }

    /// Everything held back, at the end of generation.
    pub(super) fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_temperature_samples_greedily_instead_of_failing() {
        let logits = Tensor::new(&[1.0f32, 30.0, 2.0], &candle_core::Device::Cpu).unwrap();
        for t in [0.0, 1e-275, 1e-6, f64::NAN] {
            let params = GenerationParams {
                temperature: t,
                repetition_penalty: 1.0,
                ..GenerationParams::default()
            };
            assert_eq!(
                sampler(&params).next(&logits, &[], &params).unwrap(),
                1,
                "temperature {t}"
            );
        }
        for p in [5e-324, 1e-9] {
            let params = GenerationParams {
                temperature: 0.7,
                top_p: p,
                repetition_penalty: 1.0,
                ..GenerationParams::default()
            };
            assert_eq!(sampler(&params).next(&logits, &[], &params).unwrap(), 1, "top_p {p}");
        }
    }

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut matcher = StopMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut out = String::new();
        for piece in pieces {
            let (ready, stopped) = matcher.push(piece);
            out.push_str(&ready);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&matcher.flush());
        (out, false)
    }

    #[test]
    fn a_stop_string_split_across_pieces_is_found_and_excluded() {
        assert_eq!(run(&["END"], &["hello E", "N", "D more"]), ("hello ".to_string(), true));
    }

    #[test]
    fn a_false_start_is_released() {
        assert_eq!(run(&["END"], &["an E", "xample"]), ("an Example".to_string(), false));
    }

    #[test]
    fn no_stop_strings_pass_everything() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".to_string(), false));
    }
}
