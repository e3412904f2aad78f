//! The Llama family plugin: reads Hugging Face Llama configs (both the hub dialect and the
//! transformers-5 one), DeciLM / nemotron-nas configs (heterogeneous Puzzle children), and
//! imports llama.cpp GGUF files into Hugging Face folders.
//!
//! Linking this crate registers its families; a binary that wants them writes
//! `use puzzle_llama as _;`.

pub mod config;
pub mod decilm;
pub mod gguf_import;
pub mod variants;

pub use config::LlamaFamily;
pub use decilm::DeciLmFamily;
pub use variants::LlamaVariants;

inventory::submit! {
    puzzle_core::family::FamilyRegistration { family: &LlamaFamily, provider: "puzzle-llama" }
}
inventory::submit! {
    puzzle_core::family::FamilyRegistration { family: &DeciLmFamily, provider: "puzzle-llama" }
}
inventory::submit! {
    puzzle_core::variants::CatalogRegistration { catalog: &LlamaVariants, provider: "puzzle-llama" }
}

/// Forces the linker to keep this crate's registrations (call from tests and binaries that
/// otherwise name nothing in it).
pub fn link() {}
