//! Fine-tuning the SLM: LoRA supervised fine-tuning with candle's autograd.
//!
//! - `examples`: dataset rows → the model's chat template → token ids, loss on answers only;
//! - `model`: the llama training forward pass over the frozen base, adapters beside each projection;
//! - `ops`: the custom ops (with their own backward) candle lacks for that pass; `gemm` their product;
//! - `lora`: the adapters; `peft`: PEFT's file layout; `merge`: the merged model (HF and GGUF);
//! - `optimizer`: AdamW with saveable state; `trainer`: the loop, schedule and checkpoints.
//!
//! The service never trains; this lives with the feature pipeline (`commands/train.rs` runs it).

pub mod examples;
mod gemm;
pub mod lora;
pub mod merge;
pub mod model;
pub mod ops;
pub mod optimizer;
pub mod peft;
pub mod report;
pub mod trainer;

#[cfg(test)]
mod tests;
