//! Model benchmark: one measurement per process, printed as one JSON line.
//!
//! `scripts/bench/models.sh` runs it for each setting (threads via RAYON_NUM_THREADS, batch size,
//! weight format) beside the Python peers and writes the table to docs/BENCHMARKS.md. Peak RSS is
//! the process's high-water mark, so each setting runs in a fresh process.
//!
//!   cargo bench -p engram-shared --bench models -- embed --batch 16 [--sentences 64] [--encoder candle]
//!   cargo bench -p engram-shared --bench models -- generate --weights q8_0 [--prompt-tokens 150 --new-tokens 128]
//!   cargo bench -p engram-shared --bench models -- batch --batch 8 [--prompt-tokens 520 --new-tokens 64] [--no-prefix-reuse]

use std::path::PathBuf;
use std::time::Instant;

use engram_shared::embedding::{Embedder, EmbedderOptions, Encoder};
use engram_shared::generation::kernels::{Activation, BlockFormat, Kernel, Matrix};
use engram_shared::generation::{
    ChatMessage, Completion, Flow, GenerationParams, Generator, GeneratorOptions, PREFILL_CHUNK, Role, Timings,
    WeightFormat,
};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Sentences of varied length, the same set the Python peer embeds (scripts/bench/peers.py).
fn sentences(n: usize) -> Vec<String> {
    let words = [
        "vector",
        "index",
        "notes",
        "private",
        "assistant",
        "retrieval",
        "summary",
        "Paris",
        "engine",
        "model",
    ];
    (0..n)
        .map(|i| {
            (0..(8 + (i * 7) % 40))
                .map(|j| words[(i + j * 3) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// One matrix-vector product per kernel this CPU runs, on SmolLM2's shapes with arbitrary blocks:
/// microseconds per product and the weight bytes read per second.
fn kernels(threads: &str) {
    let shapes = [
        ("q/o 576x576 q4_1", BlockFormat::Q4_1, 576, 576),
        ("gate/up 1536x576 q4_1", BlockFormat::Q4_1, 1536, 576),
        ("down 576x1536 q4_1", BlockFormat::Q4_1, 576, 1536),
        ("output 49152x576 q8_0", BlockFormat::Q8_0, 49152, 576),
    ];
    for (name, format, rows, cols) in shapes {
        // Arbitrary bytes with small finite f16 scales (a block's first bytes).
        let bytes = rows * cols / 32 * format.ggml_block_bytes();
        let mut ggml: Vec<u8> = (0..bytes).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for block in ggml.chunks_exact_mut(format.ggml_block_bytes()) {
            block[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
            if format == BlockFormat::Q4_1 {
                block[2..4].copy_from_slice(&half::f16::from_f32(-0.05).to_le_bytes());
            }
        }
        // As in a decoded token, the weights come from memory, not cache: enough copies to fill
        // 256 MiB, multiplied in turn.
        let matrix = Matrix::from_ggml(format, rows, cols, &ggml).expect("blocks");
        let copies: Vec<Matrix> = (0..(256usize << 20).div_ceil(matrix.bytes()))
            .map(|_| matrix.clone())
            .collect();
        let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let prepared = Activation::new(&x);
        let mut y = vec![0f32; rows];
        for kernel in Kernel::available() {
            let repeat = copies.len() * 2;
            let started = Instant::now();
            for i in 0..repeat {
                Matrix::matvec_many(&mut [(&copies[i % copies.len()], &mut y)], &prepared, kernel);
            }
            let secs = started.elapsed().as_secs_f64() / repeat as f64;
            println!(
                "{}",
                serde_json::json!({ "engine": "engram", "task": "kernel", "threads": threads, "shape": name,
                  "kernel": format!("{kernel:?}").to_lowercase(), "us": secs * 1e6,
                  "weight_gb_per_s": matrix.bytes() as f64 / secs / 1e9 })
            );
        }
    }
}

/// The service's step, measured apart from HTTP: `batch` prompts of about `prompt_tokens` tokens
/// (the service's instruction, then a question distinct from its first token: they share less than
/// a whole chunk, so nothing is reused), read in the
/// engine's chunks one after another (prompt tokens/s and its median chunk), then decoded
/// together, one token for every sequence per step (median step, aggregate decode tokens/s).
/// `--no-prefix-reuse` reads every prompt from its first token.
fn batch(models: &std::path::Path, threads: &str, args: &[String]) {
    let batch: usize = arg(args, "--batch", "8").parse().expect("--batch N");
    let prompt_tokens: usize = arg(args, "--prompt-tokens", "520").parse().expect("--prompt-tokens N");
    let new_tokens: usize = arg(args, "--new-tokens", "64").parse().expect("--new-tokens N");
    let reuse = !args.iter().any(|a| a == "--no-prefix-reuse");
    let mut generator = Generator::load(
        &models.join("SmolLM2-135M-Instruct.Q4_1.gguf"),
        GeneratorOptions {
            weights: WeightFormat::Packed,
        },
    )
    .expect("load generator");
    if !reuse {
        generator = generator.without_prefix_reuse();
    }
    let system = ChatMessage::new(Role::System, engram_shared::answers::prompt::instruction());
    let prompt = |i: usize| {
        let mut question = format!("Note {i} of {batch}: summarise the following. ");
        let messages = |q: &str| [system.clone(), ChatMessage::new(Role::User, q.to_string())];
        while generator
            .encode(&generator.render(&messages(&question)).unwrap())
            .unwrap()
            .len()
            < prompt_tokens
        {
            question.push_str(&format!(
                "Entry {i}: the index is versioned and the alias moves in one step. "
            ));
        }
        messages(&question)
    };
    let params = GenerationParams {
        max_tokens: new_tokens + 1,
        ignore_eos: true,
        ..Default::default()
    };
    let prompts: Vec<_> = (0..batch).map(prompt).collect();
    let mut sequences = Vec::new();
    let read = Instant::now();
    let mut chunks = Vec::new();
    let (mut read_tokens, mut prompt_total) = (0, 0);
    // Each begins when the one before has been read, as the engine admits them one by one.
    for messages in &prompts {
        sequences.push(generator.begin(messages, &params).unwrap());
        let sequence = sequences.last_mut().unwrap();
        prompt_total += sequence.prompt_tokens();
        while sequence.prompt_left() > 0 {
            let chunk = Instant::now();
            generator.prefill(sequence, PREFILL_CHUNK).unwrap();
            chunks.push(chunk.elapsed().as_secs_f64());
        }
        read_tokens += sequence.prompt_tokens() - sequence.reused_tokens();
    }
    let read_s = read.elapsed().as_secs_f64();
    let mut steps = Vec::new();
    let decode = Instant::now();
    for _ in 0..new_tokens {
        let step = Instant::now();
        let mut all: Vec<_> = sequences.iter_mut().collect();
        generator.decode_batch(&mut all).unwrap();
        steps.push(step.elapsed().as_secs_f64());
    }
    let decode_s = decode.elapsed().as_secs_f64();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "{}",
        serde_json::json!({ "engine": "engram", "task": "batch", "threads": threads, "batch": batch,
          "kernel": format!("{:?}", Kernel::best()).to_lowercase(),
          "prefix_reuse": reuse, "prompt_tokens": prompt_total / batch, "read_tokens": read_tokens / batch, "prompt_tokens_per_s": prompt_total as f64 / read_s,
          "median_chunk_ms": median(&mut chunks) * 1e3, "median_step_ms": median(&mut steps) * 1e3,
          "decode_tokens_per_s": (batch * new_tokens) as f64 / decode_s, "peak_rss_mib": peak_rss_mib() })
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let models = PathBuf::from(
        std::env::var("ENGRAM_MODELS_DIR").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../models").into()),
    );
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    let mode = args
        .iter()
        .skip(1)
        .find(|a| ["embed", "generate", "kernels", "batch"].contains(&a.as_str()))
        .cloned();
    match mode.as_deref() {
        Some("kernels") => kernels(&threads),
        Some("batch") => batch(&models, &threads, &args),
        Some("embed") => {
            let batch: usize = arg(&args, "--batch", "16").parse().expect("--batch N");
            let n: usize = arg(&args, "--sentences", "64").parse().expect("--sentences N");
            let encoder = match arg(&args, "--encoder", "packed").as_str() {
                "packed" => Encoder::Packed,
                "candle" => Encoder::Candle,
                other => panic!("--encoder {other}: packed or candle"),
            };
            let load = Instant::now();
            let embedder = Embedder::load(
                &models.join("all-MiniLM-L6-v2"),
                EmbedderOptions {
                    encoder,
                    ..Default::default()
                },
            )
            .expect("load embedder");
            let load_s = load.elapsed().as_secs_f64();
            let texts = sentences(n);
            let tokens: usize = texts.iter().map(|t| embedder.count_tokens(t).unwrap()).sum();
            embedder.embed(&texts[..batch.min(n)]).unwrap(); // warm-up
            let started = Instant::now();
            for chunk in texts.chunks(batch) {
                embedder.embed(chunk).unwrap();
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({ "engine": "engram", "task": "embed", "encoder": format!("{encoder:?}").to_lowercase(), "threads": threads, "batch": batch,
                  "sentences_per_s": n as f64 / secs, "tokens_per_s": tokens as f64 / secs, "load_s": load_s, "peak_rss_mib": peak_rss_mib() })
            );
        }
        Some("generate") => {
            let weights = arg(&args, "--weights", "f32").parse().expect("--weights FORMAT");
            let prompt_tokens: usize = arg(&args, "--prompt-tokens", "150").parse().expect("--prompt-tokens N");
            let new_tokens: usize = arg(&args, "--new-tokens", "128").parse().expect("--new-tokens N");
            let load = Instant::now();
            // `--model PATH` measures another model (a fine-tuned GGUF, say) on the same workload.
            let model = args
                .iter()
                .position(|a| a == "--model")
                .map(|i| std::path::PathBuf::from(&args[i + 1]))
                .unwrap_or_else(|| models.join("SmolLM2-135M-Instruct.Q4_1.gguf"));
            // Every timed generation reads its prompt (the repeats share it whole).
            let generator = Generator::load(&model, GeneratorOptions { weights })
                .expect("load generator")
                .without_prefix_reuse();
            let load_s = load.elapsed().as_secs_f64();
            // A user message whose rendered prompt has about `prompt_tokens` tokens.
            let mut question = String::from("Summarise the following notes. ");
            while generator
                .encode(
                    &generator
                        .render(&[ChatMessage::new(Role::User, question.clone())])
                        .unwrap(),
                )
                .unwrap()
                .len()
                < prompt_tokens
            {
                question.push_str("The index is versioned and the alias moves in one step. ");
            }
            let messages = [ChatMessage::new(Role::User, question)];
            if let Some(i) = args.iter().position(|a| a == "--prompt-out") {
                // The peer reads the very same prompt text.
                std::fs::write(&args[i + 1], generator.render(&messages).unwrap()).expect("write --prompt-out");
            }
            let params = GenerationParams {
                max_tokens: new_tokens,
                ignore_eos: true,
                ..Default::default()
            };
            generator
                .generate(
                    &messages,
                    &GenerationParams {
                        max_tokens: 4,
                        ..params.clone()
                    },
                    |_| Flow::Continue,
                )
                .unwrap(); // warm-up
            // `--repeat` timed generations (as the peer's); the median of each phase.
            let repeat: usize = arg(&args, "--repeat", "3").parse().expect("--repeat N");
            let mut runs: Vec<_> = (0..repeat.max(1))
                .map(|_| generator.generate(&messages, &params, |_| Flow::Continue).unwrap())
                .collect();
            let median = |runs: &mut Vec<Completion>, key: fn(&Completion) -> std::time::Duration| {
                runs.sort_by_key(key);
                key(&runs[runs.len() / 2])
            };
            let prompt_time = median(&mut runs, |c| c.timings.prompt);
            let decode_time = median(&mut runs, |c| c.timings.decode);
            let completion = runs.swap_remove(0);
            let t = Timings {
                prompt: prompt_time,
                decode: decode_time,
            };
            println!(
                "{}",
                serde_json::json!({ "engine": "engram", "task": "generate", "threads": threads, "weights": weights.to_string(),
                  "kernel": format!("{:?}", Kernel::best()).to_lowercase(),
                  "prompt_tokens": completion.usage.prompt_tokens, "new_tokens": completion.usage.completion_tokens,
                  "prompt_tokens_per_s": completion.usage.prompt_tokens as f64 / t.prompt.as_secs_f64(),
                  "decode_tokens_per_s": (completion.usage.completion_tokens.saturating_sub(1)) as f64 / t.decode.as_secs_f64(),
                  "load_s": load_s, "peak_rss_mib": peak_rss_mib() })
            );
        }
        _ => {
            eprintln!(
                "usage: models (embed --batch N [--sentences N] [--encoder packed|candle] | generate [--weights q8_0] [--prompt-tokens N] [--new-tokens N] [--repeat N] | batch [--batch N] [--prompt-tokens N] [--new-tokens N] [--no-prefix-reuse] | kernels)"
            );
            // `cargo bench` with no arguments runs a quick default of both.
            if args.iter().any(|a| a == "--bench") {
                eprintln!("run scripts/bench/models.sh for the full table");
            }
        }
    }
}
