//! llama.cpp as a runtime: load a GGUF (ours or anyone's) and compute logits or greedy tokens,
//! through the `llama-cpp-2` bindings, which build the llama.cpp they vendor from source
//! (`llama-cpp-sys-2` 0.1.161). The KV cache is f32 and flash attention off so that logits can be
//! compared with an f32 reference (llama.cpp's default f16 cache is ~1e-3 off, and its CPU
//! flash-attention kernel rounds queries to f16).

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::OnceLock;

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use puzzle_types::error::{Error, Result};

/// llama.cpp's backend may be initialised once per process.
fn backend() -> Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp logs every load to stderr; PUZZLE_LLAMACPP_LOG=1 keeps that.
            if std::env::var_os("PUZZLE_LLAMACPP_LOG").is_none() {
                llama_cpp_2::send_logs_to_tracing(
                    llama_cpp_2::LogOptions::default().with_logs_enabled(false),
                );
            }
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::invalid(format!("llama.cpp backend: {e}")))
}

/// A GGUF loaded in llama.cpp.
pub struct LlamaCpp {
    model: LlamaModel,
    threads: i32,
}

impl LlamaCpp {
    /// Loads `path` on the CPU with `threads` threads.
    pub fn load(path: &Path, threads: usize) -> Result<Self> {
        let b = backend()?;
        let model =
            LlamaModel::load_from_file(b, path, &LlamaModelParams::default()).map_err(|e| {
                Error::invalid(format!("llama.cpp cannot load {}: {e}", path.display()))
            })?;
        Ok(LlamaCpp {
            model,
            threads: threads.max(1) as i32,
        })
    }

    /// `text` tokenized by llama.cpp from the GGUF's own tokenizer metadata (with BOS when the
    /// GGUF says to add it; special tokens in the text are parsed).
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), true, true)
            .into_iter()
            .map(|t| t.0 as u32)
            .collect()
    }

    /// The vocabulary size llama.cpp read.
    pub fn n_vocab(&self) -> usize {
        self.model.n_vocab().max(0) as usize
    }

    fn context(&self, n_ctx: usize) -> Result<llama_cpp_2::context::LlamaContext<'_>> {
        let n = n_ctx.max(16) as u32;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n))
            .with_n_batch(n)
            .with_n_ubatch(n)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads)
            .with_type_k(KvCacheType::F32)
            .with_type_v(KvCacheType::F32)
            // The CPU flash-attention kernel rounds Q to f16 (~3e-3 off an f32 reference).
            .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED);
        self.model
            .new_context(backend()?, params)
            .map_err(|e| Error::invalid(format!("llama.cpp context: {e}")))
    }

    /// The logits after every token of `tokens` (one forward pass of the whole sequence).
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let mut ctx = self.context(tokens.len())?;
        let mut batch = LlamaBatch::new(tokens.len().max(1), 1);
        for (i, &t) in tokens.iter().enumerate() {
            batch
                .add(LlamaToken(t as i32), i as i32, &[0], true)
                .map_err(|e| Error::invalid(format!("llama.cpp batch: {e}")))?;
        }
        ctx.decode(&mut batch)
            .map_err(|e| Error::invalid(format!("llama.cpp decode: {e}")))?;
        Ok((0..tokens.len())
            .map(|i| ctx.get_logits_ith(i as i32).to_vec())
            .collect())
    }

    /// `n` greedy tokens after `prompt`, decoding one token per step with the KV cache.
    pub fn greedy(&self, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
        let mut ctx = self.context(prompt.len() + n)?;
        let mut batch = LlamaBatch::new((prompt.len() + n).max(1), 1);
        let err = |e: String| Error::invalid(format!("llama.cpp: {e}"));
        for (i, &t) in prompt.iter().enumerate() {
            batch
                .add(LlamaToken(t as i32), i as i32, &[0], i + 1 == prompt.len())
                .map_err(|e| err(e.to_string()))?;
        }
        let mut out = Vec::with_capacity(n);
        for pos in prompt.len()..prompt.len() + n {
            ctx.decode(&mut batch).map_err(|e| err(e.to_string()))?;
            let logits = ctx.get_logits_ith(batch.n_tokens() - 1);
            let next = argmax(logits);
            out.push(next);
            batch.clear();
            batch
                .add(LlamaToken(next as i32), pos as i32, &[0], true)
                .map_err(|e| err(e.to_string()))?;
        }
        Ok(out)
    }
}

/// The index of the largest value (the first among equals).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}
