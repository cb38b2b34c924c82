//! Quantized weights rearranged so that one SIMD register holds sixteen rows at once.
//!
//! ggml stores a matrix row by row, block by block; a dot product over one row then ends each
//! block with a horizontal sum, a scale conversion and a broadcast for every row. Here sixteen rows
//! are interleaved instead: for each block of 32 columns, the bytes of the sixteen rows are laid out
//! so that the 16-bit lanes `2r, 2r+1` of a register are row `r`'s pair of columns. A pair-wise
//! multiply-add against two columns of the vector (broadcast to every lane) then adds into sixteen
//! row sums at once, the sixteen scales of a block convert in one instruction, and no horizontal
//! sum is left. Each 16-bit word packs several pairs' values, so that shifts and masks within the
//! word (no cross-lane shuffles) unpack them. The rearrangement is made once, at load time, and
//! holds exactly the stored values in the same number of bytes (rows are padded to a multiple of
//! 16 with zeros).
//!
//! Layout, per group of 16 rows `g` and block `b` (groups outermost, so a group's blocks are
//! contiguous), in runs of 64 bytes (32 words; word `2r + j` belongs to row `r`):
//! - `Q4_1`: 256 bytes, four runs; run `L`, word `2r + j`, nibble `n` (bits `4n..4n+4`) is row
//!   `r`'s weight `2p + j` for the pair `p = 4L + n`;
//! - `Q8_0`: 512 bytes, eight runs; run `L`, word `2r + j`, byte `h` (low, high) is row `r`'s
//!   weight `2p + j` for the pair `p = 2L + h`;
//! - the sixteen rows' f16 scales `d` (and for `Q4_1` their minimums `m`) in `scales` (`mins`), at
//!   `(g * blocks + b) * 16 + r`.
//!
//! The vector side is an [`Activation`]: the vector rounded to 16-bit integers per block of 32.

use half::f16;

use super::BLOCK;

/// Rows interleaved per group.
pub const GROUP: usize = 16;
const Q4_1_BLOCK_BYTES: usize = 20;
const Q8_0_BLOCK_BYTES: usize = 34;

/// The stored block format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    /// `d * q + m`, `q` in 0..16.
    Q4_1,
    /// `d * q`, `q` in -128..128.
    Q8_0,
}

impl BlockFormat {
    /// Bytes of one ggml block of 32 weights.
    pub fn ggml_block_bytes(self) -> usize {
        match self {
            BlockFormat::Q4_1 => Q4_1_BLOCK_BYTES,
            BlockFormat::Q8_0 => Q8_0_BLOCK_BYTES,
        }
    }

    /// Bytes of quantized values per group and block here.
    pub fn group_block_bytes(self) -> usize {
        match self {
            BlockFormat::Q4_1 => GROUP * BLOCK / 2,
            BlockFormat::Q8_0 => GROUP * BLOCK,
        }
    }
}

/// 64 bytes on a 64-byte boundary: one cache line, one aligned 512-bit load.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A quantized matrix in the interleaved layout.
#[derive(Debug, Clone)]
pub struct Blocks {
    /// The block format.
    pub format: BlockFormat,
    /// Output features.
    pub rows: usize,
    /// Input features, a multiple of 32.
    pub cols: usize,
    /// The quantized values, `groups * blocks * group_block_bytes`, in cache lines (a run of 64
    /// bytes is one aligned load).
    quants: Vec<Line>,
    /// Scales, `groups * blocks * 16`.
    pub scales: Vec<f16>,
    /// Minimums (`Q4_1`), as `scales`; empty for `Q8_0`.
    pub mins: Vec<f16>,
}

impl Blocks {
    /// Rearranges `rows x cols` weights stored as ggml blocks (row-major, `cols / 32` blocks a row).
    pub fn from_ggml(format: BlockFormat, rows: usize, cols: usize, ggml: &[u8]) -> Result<Self, String> {
        if rows == 0 || cols == 0 {
            return Err(format!("a {rows} x {cols} matrix holds nothing"));
        }
        if !cols.is_multiple_of(BLOCK) {
            return Err(format!("{cols} columns is not a multiple of the block size {BLOCK}"));
        }
        let blocks = cols / BLOCK;
        let expected = rows
            .checked_mul(blocks)
            .and_then(|n| n.checked_mul(format.ggml_block_bytes()))
            .ok_or_else(|| format!("{rows} x {cols} {format:?} weights overflow: the file is damaged"))?;
        if ggml.len() != expected {
            return Err(format!(
                "{rows} x {cols} {format:?} weights take {expected} bytes, the tensor has {}",
                ggml.len()
            ));
        }
        let groups = rows.div_ceil(GROUP);
        let mut out = Blocks {
            format,
            rows,
            cols,
            quants: vec![Line([0; 64]); groups * blocks * format.group_block_bytes() / 64],
            scales: vec![f16::ZERO; groups * blocks * GROUP],
            mins: match format {
                BlockFormat::Q4_1 => vec![f16::ZERO; groups * blocks * GROUP],
                BlockFormat::Q8_0 => Vec::new(),
            },
        };
        for (row, stored) in ggml.chunks_exact(blocks * format.ggml_block_bytes()).enumerate() {
            let (g, lane) = (row / GROUP, row % GROUP);
            for (b, block) in stored.chunks_exact(format.ggml_block_bytes()).enumerate() {
                let at = g * blocks + b;
                out.scales[at * GROUP + lane] = f16::from_le_bytes([block[0], block[1]]);
                if format == BlockFormat::Q4_1 {
                    out.mins[at * GROUP + lane] = f16::from_le_bytes([block[2], block[3]]);
                }
                let quants =
                    &mut out.quants_mut()[at * format.group_block_bytes()..(at + 1) * format.group_block_bytes()];
                match format {
                    BlockFormat::Q4_1 => {
                        for k in 0..BLOCK {
                            let byte = block[4 + k % 16];
                            let q = if k < 16 { byte & 0x0F } else { byte >> 4 };
                            let (at, shift) = q4_position(lane, k);
                            quants[at] |= q << shift;
                        }
                    }
                    BlockFormat::Q8_0 => {
                        for k in 0..BLOCK {
                            quants[q8_position(lane, k)] = block[2 + k];
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Blocks of 32 per row.
    pub fn blocks(&self) -> usize {
        self.cols / BLOCK
    }

    /// Groups of 16 rows (the last one padded).
    pub fn groups(&self) -> usize {
        self.rows.div_ceil(GROUP)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.quants.len() * 64 + 2 * (self.scales.len() + self.mins.len())
    }

    /// The quantized values as bytes.
    pub fn quants(&self) -> &[u8] {
        // SAFETY: `Line` is 64 plain bytes without padding; the slice covers exactly the lines.
        unsafe { std::slice::from_raw_parts(self.quants.as_ptr() as *const u8, self.quants.len() * 64) }
    }

    fn quants_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `quants`, and the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.quants.as_mut_ptr() as *mut u8, self.quants.len() * 64) }
    }

    /// The quantized values, scales and minimums of group `g`.
    pub fn group(&self, g: usize) -> (&[u8], &[f16], &[f16]) {
        let per_group = self.blocks() * GROUP;
        let bytes = self.blocks() * self.format.group_block_bytes();
        let mins = match self.format {
            BlockFormat::Q4_1 => &self.mins[g * per_group..(g + 1) * per_group],
            BlockFormat::Q8_0 => &self.mins[..],
        };
        (
            &self.quants()[g * bytes..(g + 1) * bytes],
            &self.scales[g * per_group..(g + 1) * per_group],
            mins,
        )
    }

    /// Row `row`, dequantized exactly into `out` (length `cols`).
    pub fn row_into(&self, row: usize, out: &mut [f32]) {
        let (g, lane) = (row / GROUP, row % GROUP);
        let (quants, scales, mins) = self.group(g);
        let bytes = self.format.group_block_bytes();
        for (b, values) in out.chunks_exact_mut(BLOCK).enumerate() {
            let block = &quants[b * bytes..(b + 1) * bytes];
            let d = scales[b * GROUP + lane].to_f32();
            match self.format {
                BlockFormat::Q4_1 => {
                    let m = mins[b * GROUP + lane].to_f32();
                    for (k, value) in values.iter_mut().enumerate() {
                        let (at, shift) = q4_position(lane, k);
                        *value = d * f32::from((block[at] >> shift) & 0x0F) + m;
                    }
                }
                BlockFormat::Q8_0 => {
                    for (k, value) in values.iter_mut().enumerate() {
                        *value = d * f32::from(block[q8_position(lane, k)] as i8);
                    }
                }
            }
        }
    }
}

/// Where row `lane`'s weight `k` of a block lies in a `Q4_1` group block: byte and bit shift.
#[inline(always)]
pub fn q4_position(lane: usize, k: usize) -> (usize, u32) {
    let (p, j) = (k / 2, k % 2);
    let (run, n) = (p / 4, p % 4);
    (64 * run + 2 * (2 * lane + j) + n / 2, 4 * (n % 2) as u32)
}

/// Where row `lane`'s weight `k` of a block lies in a `Q8_0` group block.
#[inline(always)]
pub fn q8_position(lane: usize, k: usize) -> usize {
    let (p, j) = (k / 2, k % 2);
    64 * (p / 2) + 2 * (2 * lane + j) + p % 2
}

/// A vector prepared for products with [`Blocks`]: rounded to 16-bit integers per block of 32,
/// each block scaled so its largest magnitude is 32767 (error at most 1/65534 of that magnitude,
/// 256 times finer than llama.cpp's 8-bit rounding), with the exact per-block sums for `Q4_1`'s
/// `m Σx` term and the vector itself for f32 weights.
#[derive(Debug, Clone)]
pub struct Activation {
    /// The vector as given.
    pub x: Vec<f32>,
    /// Rounded values.
    pub values: Vec<i16>,
    /// Per-block scales: `x ≈ values * scale`.
    pub scales: Vec<f32>,
    /// Per-block sums of `x`.
    pub sums: Vec<f32>,
}

impl Activation {
    /// Prepares `x`.
    pub fn new(x: &[f32]) -> Self {
        let mut values = Vec::with_capacity(x.len().next_multiple_of(BLOCK));
        let mut scales = Vec::with_capacity(x.len() / BLOCK + 1);
        let mut sums = Vec::with_capacity(x.len() / BLOCK + 1);
        for block in x.chunks(BLOCK) {
            sums.push(block.iter().sum());
            let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            if max == 0.0 || !max.is_finite() {
                scales.push(if max.is_finite() { 0.0 } else { f32::NAN });
                values.extend(std::iter::repeat_n(0i16, block.len()));
            } else {
                let inverse = 32767.0 / max;
                scales.push(max / 32767.0);
                values.extend(block.iter().map(|v| (v * inverse).round() as i16));
            }
        }
        values.resize(x.len().next_multiple_of(BLOCK), 0);
        Activation {
            x: x.to_vec(),
            values,
            scales,
            sums,
        }
    }
}

/// Group `g` of `blocks` times the vector, in plain Rust: the same integer block sums as the SIMD
/// paths, for machines without them (and as their reference in tests).
pub fn group_product(blocks: &Blocks, g: usize, x: &Activation) -> [f32; GROUP] {
    let (quants, scales, mins) = blocks.group(g);
    let bytes = blocks.format.group_block_bytes();
    let mut out = [0f32; GROUP];
    let mut offset = [0f32; GROUP];
    for b in 0..blocks.blocks() {
        let block = &quants[b * bytes..(b + 1) * bytes];
        let xq = &x.values[b * BLOCK..(b + 1) * BLOCK];
        // Walked in the layout's order, sixteen rows side by side (vectorizable as it stands).
        let mut dot = [0i32; GROUP];
        for (run, words) in block.chunks_exact(64).enumerate() {
            let word = |i: usize| u16::from_le_bytes([words[2 * i], words[2 * i + 1]]);
            match blocks.format {
                BlockFormat::Q4_1 => {
                    for n in 0..4 {
                        let p = 4 * run + n;
                        let (x0, x1) = (i32::from(xq[2 * p]), i32::from(xq[2 * p + 1]));
                        for (lane, dot) in dot.iter_mut().enumerate() {
                            let q0 = i32::from((word(2 * lane) >> (4 * n)) & 0x0F);
                            let q1 = i32::from((word(2 * lane + 1) >> (4 * n)) & 0x0F);
                            *dot += q0 * x0 + q1 * x1;
                        }
                    }
                }
                BlockFormat::Q8_0 => {
                    for h in 0..2 {
                        let p = 2 * run + h;
                        let (x0, x1) = (i32::from(xq[2 * p]), i32::from(xq[2 * p + 1]));
                        for (lane, dot) in dot.iter_mut().enumerate() {
                            let q0 = i32::from((word(2 * lane) >> (8 * h)) as u8 as i8);
                            let q1 = i32::from((word(2 * lane + 1) >> (8 * h)) as u8 as i8);
                            *dot += q0 * x0 + q1 * x1;
                        }
                    }
                }
            }
        }
        for lane in 0..GROUP {
            if blocks.format == BlockFormat::Q4_1 {
                offset[lane] = mins[b * GROUP + lane].to_f32().mul_add(x.sums[b], offset[lane]);
            }
            // Fused, as the SIMD paths do, so that all give the same bits.
            out[lane] = (dot[lane] as f32).mul_add(scales[b * GROUP + lane].to_f32() * x.scales[b], out[lane]);
        }
    }
    for (o, m) in out.iter_mut().zip(offset) {
        *o += m;
    }
    out
}

/// Group `g`, dequantized exactly column by column: column `k`'s sixteen rows go to
/// `out[k * stride..k * stride + 16]` (the layout a tiled matmul reads as its right-hand side).
/// Plain Rust, written so the compiler can vectorize it for whatever the caller enables.
#[inline(always)]
pub fn dequantize_group(blocks: &Blocks, g: usize, out: &mut [f32], stride: usize) {
    let (quants, scales, mins) = blocks.group(g);
    let bytes = blocks.format.group_block_bytes();
    assert!(out.len() >= (blocks.cols - 1) * stride + GROUP);
    for b in 0..blocks.blocks() {
        let block = &quants[b * bytes..(b + 1) * bytes];
        let d: [f32; GROUP] = std::array::from_fn(|r| scales[b * GROUP + r].to_f32());
        match blocks.format {
            BlockFormat::Q4_1 => {
                let m: [f32; GROUP] = std::array::from_fn(|r| mins[b * GROUP + r].to_f32());
                for k in 0..BLOCK {
                    let column = &mut out[(b * BLOCK + k) * stride..][..GROUP];
                    for r in 0..GROUP {
                        let (at, shift) = q4_position(r, k);
                        column[r] = d[r] * f32::from((block[at] >> shift) & 0x0F) + m[r];
                    }
                }
            }
            BlockFormat::Q8_0 => {
                for k in 0..BLOCK {
                    let column = &mut out[(b * BLOCK + k) * stride..][..GROUP];
                    for r in 0..GROUP {
                        column[r] = d[r] * f32::from(block[q8_position(r, k)] as i8);
                    }
                }
            }
        }
    }
}
