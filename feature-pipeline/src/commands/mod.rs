//! One module per subcommand.

pub mod bench_train;
pub mod dataset;
pub mod eval;
pub mod eval_answers;
pub mod eval_model;
pub mod explore;
pub mod extract;
pub mod filter;
pub mod index;
pub mod inputs;
pub mod models;
pub mod run;
pub mod runs;
pub mod score;
pub mod status;
pub mod train;
