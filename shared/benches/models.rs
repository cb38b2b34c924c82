//! Model benchmark: one measurement per process, printed as one JSON line.
//!
//! `scripts/bench/models.sh` runs it for each setting (threads via RAYON_NUM_THREADS, batch size,
//! weight format) beside the Python peers and writes the table to docs/BENCHMARKS.md. Peak RSS is
//! the process's high-water mark, so each setting runs in a fresh process.
//!
//!   cargo bench -p engram-shared --bench models -- embed --batch 16 [--sentences 64] [--encoder candle]
//!   cargo bench -p engram-shared --bench models -- generate --weights q8_0 [--prompt-tokens 150 --new-tokens 128]

use std::path::PathBuf;
use std::time::Instant;

use engram_shared::embedding::{Embedder, EmbedderOptions, Encoder};
use engram_shared::generation::kernels::{Activation, BlockFormat, Kernel, Matrix};
use engram_shared::generation::{
    ChatMessage, Completion, Flow, GenerationParams, Generator, GeneratorOptions, Role, Timings,
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let models = PathBuf::from(
        std::env::var("ENGRAM_MODELS_DIR").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../models").into()),
    );
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    let mode = args
        .iter()
        .skip(1)
        .find(|a| ["embed", "generate", "kernels"].contains(&a.as_str()))
        .cloned();
    match mode.as_deref() {
        Some("kernels") => kernels(&threads),
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
            let generator = Generator::load(&model, GeneratorOptions { weights }).expect("load generator");
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
                "usage: models (embed --batch N [--sentences N] [--encoder packed|candle] | generate [--weights q8_0] [--prompt-tokens N] [--new-tokens N] [--repeat N] | kernels)"
            );
            // `cargo bench` with no arguments runs a quick default of both.
            if args.iter().any(|a| a == "--bench") {
                eprintln!("run scripts/bench/models.sh for the full table");
            }
        }
    }
}
