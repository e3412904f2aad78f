pub mod bld;
pub mod cost;
pub mod eval;
pub mod generate;
pub mod import;
pub mod inspect;
pub mod search;
pub mod train;
