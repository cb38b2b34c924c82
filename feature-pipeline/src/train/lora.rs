//! LoRA adapters: a low-rank update `ΔW = (alpha / r) · B · A` beside each frozen projection, the
//! only weights training changes.
//!
//! `A` (`r x in`) starts as PEFT starts it (uniform in ±1/√in, kaiming-uniform with a = √5) and `B`
//! (`out x r`) at zero, so the adapted model starts exactly as its base. Adapters are saved in
//! PEFT's layout (`peft.rs`) and merged into the base weights for serving (`merge`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Result, Tensor, Var};
use engram_shared::generation::llama::Part;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// A projection of a llama block that can carry an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Projection {
    /// Attention query.
    Q,
    /// Attention key.
    K,
    /// Attention value.
    V,
    /// Attention output.
    O,
    /// MLP gate.
    Gate,
    /// MLP up.
    Up,
    /// MLP down.
    Down,
}

impl Projection {
    /// All seven, in block order.
    pub const ALL: [Projection; 7] = [
        Projection::Q,
        Projection::K,
        Projection::V,
        Projection::O,
        Projection::Gate,
        Projection::Up,
        Projection::Down,
    ];

    /// The module's name in transformers' llama (PEFT's `target_modules`).
    pub fn module(self) -> &'static str {
        match self {
            Projection::Q => "q_proj",
            Projection::K => "k_proj",
            Projection::V => "v_proj",
            Projection::O => "o_proj",
            Projection::Gate => "gate_proj",
            Projection::Up => "up_proj",
            Projection::Down => "down_proj",
        }
    }

    /// The module's path inside a layer (`self_attn.q_proj`, `mlp.down_proj`).
    pub fn path(self) -> String {
        match self {
            Projection::Q | Projection::K | Projection::V | Projection::O => format!("self_attn.{}", self.module()),
            _ => format!("mlp.{}", self.module()),
        }
    }

    /// The base tensor it adapts in layer `layer`.
    pub fn part(self, layer: usize) -> Part {
        match self {
            Projection::Q => Part::Q(layer),
            Projection::K => Part::K(layer),
            Projection::V => Part::V(layer),
            Projection::O => Part::O(layer),
            Projection::Gate => Part::Gate(layer),
            Projection::Up => Part::Up(layer),
            Projection::Down => Part::Down(layer),
        }
    }
}

impl fmt::Display for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.module().trim_end_matches("_proj"))
    }
}

impl FromStr for Projection {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let name = s.trim().to_ascii_lowercase();
        let name = name.trim_end_matches("_proj");
        Projection::ALL
            .into_iter()
            .find(|p| p.module().trim_end_matches("_proj") == name)
            .ok_or_else(|| format!("unknown projection {s:?}: use q, k, v, o, gate, up, down"))
    }
}

/// An adapter's shape: rank, scale numerator and where it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// The rank `r`.
    pub rank: usize,
    /// `alpha`: updates are scaled by `alpha / r`.
    pub alpha: f64,
    /// Dropout on the adapter's input while training.
    pub dropout: f64,
    /// The projections adapted, in every layer.
    pub targets: Vec<Projection>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 16,
            alpha: 16.0,
            dropout: 0.0,
            targets: Projection::ALL.to_vec(),
        }
    }
}

impl LoraConfig {
    /// The update's scale, `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// One projection's pair of low-rank matrices.
#[derive(Debug, Clone)]
pub struct Pair {
    /// `A`, `r x in`.
    pub a: Var,
    /// `B`, `out x r`.
    pub b: Var,
}

/// The adapters of every adapted projection of every layer.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// Their shape.
    pub config: LoraConfig,
    /// Per layer, per projection.
    pub layers: Vec<BTreeMap<Projection, Pair>>,
}

impl Adapter {
    /// Fresh adapters for `layers` layers, `shape(projection)` giving each base matrix's
    /// `(out, in)`; `A` drawn from `seed`, `B` zero.
    pub fn new(
        config: LoraConfig,
        layers: usize,
        shape: impl Fn(Projection) -> (usize, usize),
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        if config.rank == 0 {
            candle_core::bail!("LoRA rank must be at least 1");
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut all = Vec::with_capacity(layers);
        for _ in 0..layers {
            let mut pairs = BTreeMap::new();
            for &projection in &config.targets {
                let (out, input) = shape(projection);
                let bound = 1.0 / (input as f64).sqrt();
                let a: Vec<f32> = (0..config.rank * input)
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (config.rank, input), device)?)?;
                let b = Var::zeros((out, config.rank), DType::F32, device)?;
                pairs.insert(projection, Pair { a, b });
            }
            all.push(pairs);
        }
        Ok(Adapter { config, layers: all })
    }

    /// Every trainable matrix, in a fixed order (layer, projection, A then B).
    pub fn vars(&self) -> Vec<Var> {
        self.layers
            .iter()
            .flat_map(|pairs| pairs.values().flat_map(|p| [p.a.clone(), p.b.clone()]))
            .collect()
    }

    /// Named tensors in a fixed order, for checkpoints: `{layer}.{projection}.{a|b}`.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        let mut named = Vec::new();
        for (i, pairs) in self.layers.iter().enumerate() {
            for (projection, pair) in pairs {
                named.push((format!("{i}.{}.a", projection.module()), pair.a.as_tensor().clone()));
                named.push((format!("{i}.{}.b", projection.module()), pair.b.as_tensor().clone()));
            }
        }
        named
    }

    /// Sets every matrix from `tensors` named as [`Adapter::named`] names them.
    pub fn set_named(&self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        for (name, current) in self.named() {
            let value = tensors
                .get(&name)
                .ok_or_else(|| candle_core::Error::Msg(format!("the checkpoint lacks adapter tensor {name}")))?;
            if value.dims() != current.dims() {
                candle_core::bail!(
                    "adapter tensor {name} is {:?}, expected {:?}",
                    value.dims(),
                    current.dims()
                );
            }
        }
        for (i, pairs) in self.layers.iter().enumerate() {
            for (projection, pair) in pairs {
                pair.a.set(&tensors[&format!("{i}.{}.a", projection.module())])?;
                pair.b.set(&tensors[&format!("{i}.{}.b", projection.module())])?;
            }
        }
        Ok(())
    }

    /// Trainable parameters.
    pub fn parameters(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// The adapter's contribution `scale · (x · Aᵀ) · Bᵀ` for `projection` of `layer`, if adapted.
    /// `dropout` (training only) drops the adapter's input.
    pub fn delta(&self, layer: usize, projection: Projection, x: &Tensor, dropout: bool) -> Result<Option<Tensor>> {
        let Some(pair) = self.layers.get(layer).and_then(|p| p.get(&projection)) else {
            return Ok(None);
        };
        let x = if dropout && self.config.dropout > 0.0 {
            candle_nn::ops::dropout(x, self.config.dropout as f32)?
        } else {
            x.clone()
        };
        let low = x.matmul(&pair.a.as_tensor().t()?)?;
        let delta = low.matmul(&pair.b.as_tensor().t()?)?;
        Ok(Some((delta * self.config.scale())?))
    }

    /// `ΔW = scale · B · A` for `projection` of `layer` (`out x in`), if adapted.
    pub fn update(&self, layer: usize, projection: Projection) -> Result<Option<Tensor>> {
        let Some(pair) = self.layers.get(layer).and_then(|p| p.get(&projection)) else {
            return Ok(None);
        };
        let product = pair.b.as_tensor().matmul(pair.a.as_tensor())?;
        Ok(Some((product * self.config.scale())?))
    }
}
