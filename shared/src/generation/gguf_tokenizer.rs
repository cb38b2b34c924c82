//! A `tokenizers` tokenizer built from a GGUF file's own metadata.
//!
//! GGUF files carry their tokenizer as metadata (tokens, merges, token types, pre-tokenizer name).
//! candle's built-in conversion ignores the pre-tokenizer and gives wrong ids for SmolLM2's `smollm`
//! pre-tokenizer (digits are split one by one before the GPT-2 byte-level split). This builds the same
//! pipeline llama.cpp uses, from well-kept parts of the `tokenizers` crate.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Content;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use super::GenerationError;

/// GGUF token type of control tokens (`<|im_start|>`, `<|endoftext|>`…).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of user-defined tokens, also never split.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

fn metadata_error(key: &str, reason: impl std::fmt::Display) -> GenerationError {
    GenerationError::Format(format!("GGUF metadata {key}: {reason}"))
}

fn strings(content: &Content, key: &str) -> Result<Vec<String>, GenerationError> {
    let values = content
        .metadata
        .get(key)
        .ok_or_else(|| metadata_error(key, "missing"))?
        .to_vec()
        .map_err(|e| metadata_error(key, e))?;
    values
        .iter()
        .map(|v| v.to_string().cloned().map_err(|e| metadata_error(key, e)))
        .collect()
}

/// The special tokens a GGUF tokenizer declares.
#[derive(Debug, Clone, Default)]
pub struct SpecialTokens {
    /// End of sequence.
    pub eos: Option<u32>,
    /// Beginning of sequence.
    pub bos: Option<u32>,
    /// Whether the model expects BOS at the start of a prompt.
    pub add_bos: bool,
}

/// Builds the tokenizer described by `content`'s metadata.
pub fn from_gguf(content: &Content) -> Result<(Tokenizer, SpecialTokens), GenerationError> {
    let model = content
        .metadata
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if model != "gpt2" {
        return Err(GenerationError::Format(format!(
            "tokenizer model {model:?} is not supported: engram reads byte-level BPE (\"gpt2\") GGUF tokenizers"
        )));
    }
    let tokens = strings(content, "tokenizer.ggml.tokens")?;
    let merges = strings(content, "tokenizer.ggml.merges")?;
    let vocab: HashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| metadata_error("tokenizer.ggml.merges", format!("bad merge {m:?}")))
        })
        .collect::<Result<_, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<tokenizers::models::bpe::Vocab>(), merges)
        .build()
        .map_err(|e| GenerationError::Format(format!("building the BPE model: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);

    let pre = content
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .cloned();
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tokenizer: PreTokenizerWrapper = match pre.as_deref() {
        // llama.cpp's LLAMA_VOCAB_PRE_TYPE_{SMOLLM,STARCODER,REFACT}: single digits, then GPT-2 splits.
        Some("smollm") | Some("starcoder") | Some("refact") => {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        }
        None | Some("default") | Some("gpt-2") | Some("gpt2") => byte_level.into(),
        Some(other) => {
            return Err(GenerationError::Format(format!(
                "pre-tokenizer {other:?} is not supported yet (supported: smollm, starcoder, refact, gpt-2)"
            )));
        }
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    // Control tokens must never be split by BPE.
    if let Some(types) = content
        .metadata
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
    {
        let special: Vec<AddedToken> = types
            .iter()
            .zip(&tokens)
            .filter(|(t, _)| matches!(t.to_i32(), Ok(TOKEN_TYPE_CONTROL) | Ok(TOKEN_TYPE_USER_DEFINED)))
            .map(|(_, token)| AddedToken::from(token.clone(), true))
            .collect();
        tokenizer.add_special_tokens(&special);
    }
    let id = |key: &str| content.metadata.get(key).and_then(|v| v.to_u32().ok());
    let special = SpecialTokens {
        eos: id("tokenizer.ggml.eos_token_id"),
        bos: id("tokenizer.ggml.bos_token_id"),
        add_bos: content
            .metadata
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false),
    };
    Ok((tokenizer, special))
}
