//! The pipeline's steps, one file each: typed input to typed output, touching storage only where
//! the module comment says.

pub mod answer_eval;
pub mod chunk;
pub mod dedup;
pub mod distil;
pub mod eval;
pub mod explore;
pub mod extract;
pub mod filter;
pub mod index;
pub mod judge;
pub mod model_eval;
pub mod publish;
pub mod qa;
pub mod quality;
pub mod rouge;
pub mod score;
pub mod shard;
pub mod split;
