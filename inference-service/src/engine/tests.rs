//! The engine's scheduling, on a stand-in model (recovery from a panic, admission) and on the real
//! SmolLM2 (a batch gives each sequence the tokens it gets alone).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use engram_shared::generation::{
    ChatMessage, Completion, FinishReason, Flow, GenerationError, GenerationParams, Generator, GeneratorOptions, Role,
    Step, Timings, Usage,
};

use super::*;

/// A stand-in model that echoes the question after reading it, and panics reading "panic": the
/// engine's recovery is what is tested, not a model.
struct Echo;

struct EchoSequence {
    text: String,
    read: bool,
}

impl Model for Echo {
    type Sequence = EchoSequence;

    fn begin(&self, messages: &[ChatMessage], _: &GenerationParams) -> Result<EchoSequence, GenerationError> {
        let text = messages.last().map(|m| m.content.clone()).unwrap_or_default();
        Ok(EchoSequence { text, read: false })
    }

    fn kv_bytes(&self, _: &EchoSequence) -> usize {
        1
    }

    fn prompt_left(&self, sequence: &EchoSequence) -> usize {
        usize::from(!sequence.read)
    }

    fn prefill(&self, sequence: &mut EchoSequence, _: usize) -> Result<Step, GenerationError> {
        assert!(sequence.text != "panic", "a bug in the model");
        sequence.read = true;
        Ok(Step::default())
    }

    fn decode(&self, sequences: &mut [&mut EchoSequence]) -> Result<Vec<Step>, GenerationError> {
        Ok(sequences
            .iter()
            .map(|s| Step {
                text: s.text.clone(),
                completion: Some(Completion {
                    text: s.text.clone(),
                    usage: Usage {
                        prompt_tokens: 1,
                        completion_tokens: 1,
                    },
                    finish_reason: FinishReason::Stop,
                    timings: Timings::default(),
                }),
            })
            .collect())
    }
}

fn limits(max_batch: usize, max_queue: usize) -> Limits {
    Limits {
        max_batch,
        max_queue,
        kv_cache_bytes: 1 << 30,
        prefill_chunk: engram_shared::generation::PREFILL_CHUNK,
    }
}

fn submit<M: Model>(
    engine: &Engine<M>,
    model: &Arc<M>,
    question: &str,
    params: GenerationParams,
) -> async_mpsc::UnboundedReceiver<Event> {
    let (events, received) = async_mpsc::unbounded_channel();
    engine
        .submit(Job {
            admission: engine.admit().expect("a place"),
            generator: model.clone(),
            messages: vec![ChatMessage::new(Role::User, question)],
            params,
            events,
            model: "test".into(),
            span: tracing::Span::none(),
        })
        .expect("queued");
    received
}

async fn events(mut received: async_mpsc::UnboundedReceiver<Event>) -> Vec<Event> {
    let mut all = Vec::new();
    while let Some(event) = received.recv().await {
        all.push(event);
    }
    all
}

async fn ask(engine: &Engine<Echo>, question: &str) -> Vec<Event> {
    events(submit(engine, &Arc::new(Echo), question, GenerationParams::default())).await
}

#[tokio::test]
async fn a_panic_fails_its_request_and_the_engine_serves_the_next() {
    let engine = Engine::start(limits(1, 4), None);
    let crashed = ask(&engine, "panic").await;
    assert!(
        matches!(crashed.as_slice(), [Event::Crashed(why)] if why.contains("internal error")),
        "{crashed:?}"
    );
    for _ in 0..3 {
        let answered = ask(&engine, "still here?").await;
        assert!(
            matches!(answered.as_slice(), [Event::Text(_), Event::Done(c)] if c.text == "still here?"),
            "{answered:?}"
        );
    }
    assert_eq!(engine.queue_depth(), 0);
    assert_eq!(engine.load().running, 0);
}

#[tokio::test]
async fn admission_takes_a_place_per_request_and_refuses_beyond_batch_plus_queue() {
    let engine = Engine::start(limits(1, 2), None);
    let places: Vec<Admission> = (0..3).map(|_| engine.admit().expect("three places")).collect();
    assert_eq!(
        engine.admit().unwrap_err(),
        Refused::Busy,
        "the fourth is refused before any work"
    );
    drop(places);
    let answered = ask(&engine, "after").await;
    assert!(matches!(answered.last(), Some(Event::Done(_))), "{answered:?}");
    assert!(engine.admit().is_ok(), "a finished job gives its place back");
}

#[tokio::test]
async fn a_request_larger_than_the_whole_kv_cache_fails_with_what_to_change() {
    let engine: Engine<Echo> = Engine::start(
        Limits {
            kv_cache_bytes: 0,
            ..limits(2, 2)
        },
        None,
    );
    let failed = ask(&engine, "anything").await;
    assert!(
        matches!(failed.as_slice(), [Event::Failed(why)] if why.contains("ENGRAM_KV_CACHE_MIB") && why.contains("max_tokens")),
        "{failed:?}"
    );
    assert_eq!(engine.queue_depth(), 0);
}

/// The shipped SmolLM2 (fetched by scripts/fetch-models.sh when missing).
fn smollm() -> Arc<Generator> {
    static GENERATOR: OnceLock<Arc<Generator>> = OnceLock::new();
    GENERATOR
        .get_or_init(|| {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            let dir = std::env::var("ENGRAM_MODELS_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| root.join("models"));
            let gguf = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
            if !gguf.exists() {
                let status = std::process::Command::new(root.join("scripts/fetch-models.sh"))
                    .env("ENGRAM_MODELS_DIR", &dir)
                    .status()
                    .expect("run scripts/fetch-models.sh");
                assert!(status.success(), "scripts/fetch-models.sh failed");
            }
            Arc::new(Generator::load(&gguf, GeneratorOptions::default()).expect("load SmolLM2"))
        })
        .clone()
}

const PROMPTS: [&str; 8] = [
    "What is the capital of France?",
    "Write a haiku about autumn rain.",
    "List three uses of baking soda.",
    "Explain in one sentence why the sky is blue.",
    "How many legs does a spider have?",
    "Translate 'good morning' into Spanish.",
    "Give me a name for a grey cat.",
    "What does a train conductor do?",
];

/// Each prompt's answer run alone: a batch of one, as the pipeline runs it.
fn alone(model: &Generator, question: &str, params: &GenerationParams) -> Completion {
    let messages = [ChatMessage::new(Role::User, question)];
    model.generate(&messages, params, |_| Flow::Continue).expect("generate")
}

/// All the prompts at once through one engine; each answer's pieces joined, and its completion.
async fn together(engine: &Engine<Generator>, params: &[GenerationParams]) -> Vec<(String, Completion)> {
    let model = smollm();
    let receivers: Vec<_> = PROMPTS
        .iter()
        .zip(params)
        .map(|(question, params)| submit(engine, &model, question, params.clone()))
        .collect();
    let mut answers = Vec::new();
    for received in receivers {
        let all = events(received).await;
        let mut text = String::new();
        let mut done = None;
        for event in all {
            match event {
                Event::Text(piece) => text.push_str(&piece),
                Event::Done(completion) => done = Some(completion),
                other => panic!("{other:?}"),
            }
        }
        answers.push((text, done.expect("a completion")));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_prompts_run_together_give_each_the_tokens_it_gets_alone() {
    let model = smollm();
    let greedy = GenerationParams {
        max_tokens: 24,
        ..Default::default()
    };
    // Seeded sampling, a different seed per request.
    let sampled: Vec<GenerationParams> = (0..PROMPTS.len())
        .map(|i| GenerationParams {
            max_tokens: 16,
            temperature: 0.8,
            top_p: 0.95,
            seed: 1000 + i as u64,
            ..Default::default()
        })
        .collect();
    let engine = Engine::start(limits(8, 8), None);
    for params in [vec![greedy; PROMPTS.len()], sampled] {
        let answers = together(&engine, &params).await;
        for ((question, params), (streamed, completion)) in PROMPTS.iter().zip(&params).zip(answers) {
            let expected = alone(&model, question, params);
            assert_eq!(streamed, completion.text, "the pieces add up to the answer");
            assert_eq!(
                completion.text, expected.text,
                "{question} (temperature {})",
                params.temperature
            );
            assert_eq!(completion.usage, expected.usage, "{question}");
            assert_eq!(completion.finish_reason, expected.finish_reason, "{question}");
        }
    }
    assert_eq!(engine.load().running, 0);
    assert_eq!(engine.load().kv_cache_used_bytes, 0, "every reservation came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_frees_its_place_and_kv_cache_at_the_next_step() {
    let model = smollm();
    let engine = Engine::start(limits(2, 2), None);
    let long = GenerationParams {
        max_tokens: 400,
        ignore_eos: true,
        ..Default::default()
    };
    let mut received = submit(&engine, &model, "Count to a thousand.", long);
    assert!(matches!(received.recv().await, Some(Event::Text(_))));
    assert!(
        engine.load().kv_cache_used_bytes > 0,
        "the running sequence holds its reservation"
    );
    drop(received);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while engine.load()
        != (Load {
            kv_cache_capacity_bytes: 1 << 30,
            ..Load::default()
        })
    {
        assert!(std::time::Instant::now() < deadline, "still held: {:?}", engine.load());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let places: Vec<Admission> = (0..4)
        .map(|_| engine.admit().expect("every place is free again"))
        .collect();
    drop(places);
}
