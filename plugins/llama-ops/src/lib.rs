//! The tensor half of the Llama plugin: the Llama variant catalog (`gqa`, `width`, `linear`,
//! `noop` and their training-free inits), llama.cpp GGUF import into Hugging Face folders and
//! GGUF export of Llama and DeciLM (Puzzle child) folders for llama.cpp.
//! The families themselves (config parsing, child configs) are `puzzle-llama`.
//!
//! Linking this crate registers the catalog (and, through `puzzle-llama`, the families).

#[cfg(feature = "llamacpp")]
pub mod engine;
pub mod gguf_export;
pub mod gguf_import;
pub mod variants;

pub use variants::LlamaVariants;

inventory::submit! {
    puzzle_core::variants::CatalogRegistration { catalog: &LlamaVariants, provider: "puzzle-llama-ops" }
}

/// Forces the linker to keep this crate's registrations and `puzzle-llama`'s.
pub fn link() {
    puzzle_llama::link();
}
