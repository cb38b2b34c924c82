//! One module per subcommand.

pub mod dataset;
pub mod eval;
pub mod explore;
pub mod extract;
pub mod filter;
pub mod index;
pub mod models;
pub mod run;
pub mod runs;
pub mod score;
pub mod status;
