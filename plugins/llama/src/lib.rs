//! The Llama family plugin: reads Hugging Face Llama configs (both the hub dialect and the
//! transformers-5 one) and DeciLM / nemotron-nas configs (heterogeneous Puzzle children), and
//! writes children's configs. Tensor-free: it depends on `puzzle-types` alone; the Llama
//! variant catalog and GGUF import are in `puzzle-llama-ops`.
//!
//! Linking this crate registers its families; a binary that wants them writes
//! `use puzzle_llama as _;`.

pub mod config;
pub mod decilm;
pub mod llama;

pub use decilm::DeciLmFamily;
pub use llama::LlamaFamily;

inventory::submit! {
    puzzle_types::family::FamilyRegistration { family: &LlamaFamily, provider: "puzzle-llama" }
}
inventory::submit! {
    puzzle_types::family::FamilyRegistration { family: &DeciLmFamily, provider: "puzzle-llama" }
}

/// Forces the linker to keep this crate's registrations (call from tests and binaries that
/// otherwise name nothing in it).
pub fn link() {}
