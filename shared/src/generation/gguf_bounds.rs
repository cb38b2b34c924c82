//! A GGUF file's header checked against the file before any tensor is read.
//!
//! A model file is input from outside (an upload to the registry, a path in the config). Its
//! header declares every tensor's shape, type and offset, and a reader that trusts them allocates
//! what a shape claims and seeks where an offset points. So before anything is allocated: every
//! shape's element count must not overflow, its bytes (by its type's block size) must lie inside
//! the file from its offset on, and candle's own header reader runs under `catch_unwind`, so that
//! an arithmetic panic in it on a crafted header (an alignment of 0, say) is a clear error, not a
//! crashed service.

use std::fs::File;
use std::io::{Seek, SeekFrom};

use candle_core::quantized::gguf_file::Content;

/// Reads `file`'s GGUF header (candle's reader, its panics caught) and checks every tensor fits
/// inside the file. The reason on failure is the file's problem, in words.
pub fn read_checked(file: &mut File) -> Result<Content, String> {
    let length = file
        .seek(SeekFrom::End(0))
        .and_then(|length| file.seek(SeekFrom::Start(0)).map(|_| length))
        .map_err(|e| e.to_string())?;
    let content = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(file)))
        .map_err(|_| "not a GGUF file: its header is malformed (the reader failed on it)".to_string())?
        .map_err(|e| format!("not a GGUF file: {e}"))?;
    check_tensors(&content, length)?;
    Ok(content)
}

/// Every tensor's data inside a file of `length` bytes.
pub fn check_tensors(content: &Content, length: u64) -> Result<(), String> {
    for (name, info) in &content.tensor_infos {
        let elements = info
            .shape
            .dims()
            .iter()
            .try_fold(1u64, |count, &dim| count.checked_mul(dim as u64))
            .ok_or_else(|| {
                format!(
                    "tensor {name}'s shape {:?} overflows: the file is damaged",
                    info.shape.dims()
                )
            })?;
        if elements == 0 {
            // candle would read it through a dangling pointer cast to its block type.
            return Err(format!("tensor {name} has no elements: the file is damaged"));
        }
        let block = info.ggml_dtype.block_size() as u64;
        if block == 0 || !elements.is_multiple_of(block) {
            return Err(format!(
                "tensor {name} has {elements} elements, not a whole number of {:?} blocks: the file is damaged",
                info.ggml_dtype
            ));
        }
        let bytes = (elements / block)
            .checked_mul(info.ggml_dtype.type_size() as u64)
            .ok_or_else(|| format!("tensor {name}'s size overflows: the file is damaged"))?;
        let end = content
            .tensor_data_offset
            .checked_add(info.offset)
            .and_then(|start| start.checked_add(bytes));
        match end {
            Some(end) if end <= length => {}
            _ => {
                return Err(format!(
                    "tensor {name} ({bytes} bytes at offset {}) reaches past the end of the {length}-byte file: the file is truncated or damaged",
                    content.tensor_data_offset.saturating_add(info.offset)
                ));
            }
        }
    }
    Ok(())
}
