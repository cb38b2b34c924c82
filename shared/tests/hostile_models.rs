//! Model files are input from outside: a damaged or crafted GGUF must give an error, never a
//! panic, a hang or an allocation the file does not justify.
//!
//! [`engram_tests::fuzz`] over a tiny but complete llama GGUF (tokenizer, Q4_1 and f32 tensors):
//! each case changes a few bytes (mostly in the header, where counts, lengths, shapes and offsets
//! live), plants boundary values or truncates the file, then loads it as the service would and,
//! when it loads, generates two tokens. A long run:
//! `ENGRAM_FUZZ_SECS=3600 cargo test -p engram-shared --test hostile_models`. A case that fails is
//! kept in the temp folder: add it to the regression cases below.

use std::path::PathBuf;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use engram_shared::generation::llama::Part;
use engram_shared::generation::{ChatMessage, Flow, GenerationParams, Generator, GeneratorOptions, Role};
use engram_tests::fuzz::Fuzz;

const DIM: usize = 32;
const HEADS: u32 = 2;
const KV_HEADS: u32 = 1;
const HIDDEN: usize = 64;

/// A tiny llama GGUF that loads and generates.
fn tiny_gguf() -> Vec<u8> {
    let tokens = ["<|im_start|>", "<|im_end|>", "a", "b", "ab", "Ġ", "Ċ"];
    let types = [3i32, 3, 1, 1, 1, 1, 1];
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(1)),
        ("llama.attention.head_count", Value::U32(HEADS)),
        ("llama.attention.head_count_kv", Value::U32(KV_HEADS)),
        ("llama.embedding_length", Value::U32(DIM as u32)),
        ("llama.context_length", Value::U32(64)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.iter().map(|t| Value::String((*t).into())).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.iter().map(|t| Value::I32(*t)).collect()),
        ),
        ("tokenizer.ggml.merges", Value::Array(vec![Value::String("a b".into())])),
        ("tokenizer.ggml.eos_token_id", Value::U32(1)),
    ];
    let vocab = tokens.len();
    let kv = DIM / HEADS as usize * KV_HEADS as usize;
    let mut tensors = Vec::new();
    for (i, part) in Part::all(1).into_iter().enumerate() {
        let dims: Vec<usize> = match part {
            Part::Embedding | Part::Output => vec![vocab, DIM],
            Part::Q(_) | Part::O(_) => vec![DIM, DIM],
            Part::K(_) | Part::V(_) => vec![kv, DIM],
            Part::Gate(_) | Part::Up(_) => vec![HIDDEN, DIM],
            Part::Down(_) => vec![DIM, HIDDEN],
            Part::AttnNorm(_) | Part::FfnNorm(_) | Part::Norm => vec![DIM],
        };
        if part == Part::Output {
            continue;
        }
        let count: usize = dims.iter().product();
        let values: Vec<f32> = (0..count)
            .map(|k| ((k * 7 + i * 13) % 17) as f32 / 17.0 - 0.5)
            .collect();
        let tensor = Tensor::from_vec(values, dims.as_slice(), &Device::Cpu).unwrap();
        let dtype = if dims.len() == 2 {
            GgmlDType::Q4_1
        } else {
            GgmlDType::F32
        };
        tensors.push((part.gguf_name(), QTensor::quantize(&tensor, dtype).unwrap()));
    }
    let metadata_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut bytes = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut bytes, &metadata_refs, &tensor_refs).unwrap();
    bytes.into_inner()
}

/// Loads `bytes` as the service would and, if that works, generates two tokens.
fn load_and_generate(bytes: &[u8], path: &PathBuf) {
    std::fs::write(path, bytes).unwrap();
    if let Ok(generator) = Generator::load(path, GeneratorOptions::default()) {
        let params = GenerationParams {
            max_tokens: 2,
            ..GenerationParams::default()
        };
        let _ = generator.generate(&[ChatMessage::new(Role::User, "ab a")], &params, |_| Flow::Continue);
    }
}

#[test]
fn damaged_and_crafted_gguf_files_are_errors_never_panics_or_hangs() {
    let valid = tiny_gguf();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("valid.gguf");
    std::fs::write(&path, &valid).unwrap();
    let generator = Generator::load(&path, GeneratorOptions::default()).expect("the tiny model loads");
    let params = GenerationParams {
        max_tokens: 2,
        ..GenerationParams::default()
    };
    generator
        .generate(&[ChatMessage::new(Role::User, "ab")], &params, |_| Flow::Continue)
        .expect("and generates");
    let header = gguf_file::Content::read(&mut std::io::Cursor::new(&valid))
        .unwrap()
        .tensor_data_offset as usize;

    // Regression case: candle's header reader divides by `general.alignment`; a file that sets it
    // to 0 must be an error.
    let mut zero_alignment = valid.clone();
    plant_alignment_zero(&mut zero_alignment);
    std::fs::write(&path, &zero_alignment).unwrap();
    let err = Generator::load(&path, GeneratorOptions::default()).expect_err("alignment 0 is refused");
    assert!(err.to_string().contains("malformed"), "{err}");

    // Regression cases the fuzzer found (`tests/fixtures/fuzz/gguf-*`): each must be an error.
    let found = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    for entry in std::fs::read_dir(&found).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("gguf-"))
        {
            let outcome = std::panic::catch_unwind(|| Generator::load(&path, GeneratorOptions::default()));
            assert!(
                matches!(outcome, Ok(Err(_))),
                "{} must be refused with an error",
                path.display()
            );
        }
    }

    let case_path = dir.path().join("case.gguf");
    let cases = Fuzz::from_env("gguf").run(
        move |fuzz| fuzz.mutate(&valid, header),
        move |bytes| load_and_generate(bytes, &case_path),
    );
    assert!(cases > 0);
}

/// Adds `general.alignment = 0` to the tiny model's header.
fn plant_alignment_zero(bytes: &mut Vec<u8>) {
    let mut cursor = std::io::Cursor::new(bytes.as_slice());
    let content = gguf_file::Content::read(&mut cursor).unwrap();
    let mut metadata: Vec<(String, Value)> = content.metadata.into_iter().collect();
    metadata.push(("general.alignment".into(), Value::U32(0)));
    let mut tensors = Vec::new();
    for name in content.tensor_infos.keys() {
        let mut cursor = std::io::Cursor::new(bytes.as_slice());
        let tensor = gguf_file::Content::read(&mut cursor)
            .unwrap()
            .tensor(&mut cursor, name, &Device::Cpu)
            .unwrap();
        tensors.push((name.clone(), tensor));
    }
    let metadata_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &metadata_refs, &tensor_refs).unwrap();
    *bytes = out.into_inner();
}
