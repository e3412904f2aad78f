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
    /// KV-cache type of the contexts [`LlamaCpp::request`] times in.
    serve_kv: KvCacheType,
}

/// The KV-cache types llama.cpp serves with that puzzle maps deployment dtypes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    F32,
    F16,
    Bf16,
    Q8_0,
}

impl KvType {
    fn cache(self) -> KvCacheType {
        match self {
            KvType::F32 => KvCacheType::F32,
            KvType::F16 => KvCacheType::F16,
            KvType::Bf16 => KvCacheType::BF16,
            KvType::Q8_0 => KvCacheType::Q8_0,
        }
    }
}

/// The llama.cpp this crate builds (the `llama-cpp-sys-2` version that vendors it).
pub const LLAMACPP_SOURCE: &str = "llama.cpp vendored by llama-cpp-sys-2 0.1.161";

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
            serve_kv: KvCacheType::F32,
        })
    }

    /// The KV-cache type requests are timed with (the deployment's `kv_dtype`).
    pub fn with_serving_kv(mut self, kv: KvType) -> Self {
        self.serve_kv = kv.cache();
        self
    }

    /// One request timed as a server runs it: `batch` sequences (one KV stream each) prefill
    /// `prefill` prompt tokens in one batch, then `decode_steps` steps decode one token per
    /// sequence, greedy on the host from each sequence's logits. The context is made before the
    /// clock starts (a server keeps it). Returns (prefill ms, total ms).
    pub fn request(&self, batch: usize, prefill: usize, decode_steps: usize) -> Result<(f64, f64)> {
        let err = |e: String| Error::invalid(format!("llama.cpp request: {e}"));
        let (b, p) = (batch.max(1), prefill.max(1));
        // Per sequence, rounded up as llama.cpp pads context sizes.
        let per_seq = (p + decode_steps + 1).div_ceil(256) * 256;
        let n_batch = (b * p) as u32;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new((b * per_seq) as u32))
            .with_n_seq_max(b as u32)
            .with_kv_unified(false)
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch.min(512))
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads)
            .with_type_k(self.serve_kv)
            .with_type_v(self.serve_kv);
        let mut ctx = self
            .model
            .new_context(backend()?, params)
            .map_err(|e| err(format!("context: {e}")))?;
        let vocab = self.n_vocab().max(1);
        let mut batch_in = LlamaBatch::new(b * p, b as i32);
        for s in 0..b {
            for i in 0..p {
                let t = ((s * p + i) * 7919 % vocab) as i32;
                batch_in
                    .add(LlamaToken(t), i as i32, &[s as i32], i + 1 == p)
                    .map_err(|e| err(e.to_string()))?;
            }
        }
        let t0 = std::time::Instant::now();
        ctx.decode(&mut batch_in).map_err(|e| err(e.to_string()))?;
        let mut next: Vec<u32> = (0..b)
            .map(|s| argmax(ctx.get_logits_ith((s * p + p - 1) as i32)))
            .collect();
        let t_prefill = t0.elapsed().as_secs_f64() * 1e3;
        let mut step = LlamaBatch::new(b, b as i32);
        for k in 0..decode_steps {
            step.clear();
            for (s, &t) in next.iter().enumerate() {
                step.add(LlamaToken(t as i32), (p + k) as i32, &[s as i32], true)
                    .map_err(|e| err(e.to_string()))?;
            }
            ctx.decode(&mut step).map_err(|e| err(e.to_string()))?;
            for (s, n) in next.iter_mut().enumerate() {
                *n = argmax(ctx.get_logits_ith(s as i32));
            }
        }
        Ok((t_prefill, t0.elapsed().as_secs_f64() * 1e3))
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
        self.generate(prompt, n, false)
    }

    /// Up to `n` greedy tokens after `prompt`, one decode step each with the KV cache; with
    /// `stop_at_end`, the first end-of-generation token of the GGUF's vocabulary ends it (and
    /// is kept).
    pub fn generate(&self, prompt: &[u32], n: usize, stop_at_end: bool) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(Error::invalid(
                "llama.cpp: an empty prompt (no tokens) cannot be continued",
            ));
        }
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
            if stop_at_end && self.is_end(next) {
                break;
            }
            batch.clear();
            batch
                .add(LlamaToken(next as i32), pos as i32, &[0], true)
                .map_err(|e| err(e.to_string()))?;
        }
        Ok(out)
    }

    /// Whether `t` ends generation (EOS, EOT, ... as the GGUF's vocabulary says).
    pub fn is_end(&self, t: u32) -> bool {
        self.model.vocab().is_eog(LlamaToken(t as i32))
    }

    /// The text of `tokens` (special tokens left out).
    pub fn detokenize(&self, tokens: &[u32]) -> String {
        if tokens.is_empty() {
            return String::new();
        }
        let t: Vec<LlamaToken> = tokens.iter().map(|&t| LlamaToken(t as i32)).collect();
        String::from_utf8_lossy(&self.model.vocab().detokenize(&t, true, false)).into_owned()
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
