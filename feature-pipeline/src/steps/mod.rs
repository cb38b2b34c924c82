//! The pipeline's steps, one file each: typed input to typed output, touching storage only where
//! the module comment says.

pub mod dedup;
pub mod explore;
pub mod extract;
pub mod filter;
pub mod score;
