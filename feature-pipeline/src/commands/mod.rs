//! One module per subcommand.

pub mod explore;
pub mod extract;
pub mod filter;
pub mod score;
pub mod status;
