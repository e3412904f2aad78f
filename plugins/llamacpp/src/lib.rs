//! llama.cpp as a runtime: load a GGUF (ours or anyone's) and compute logits or greedy tokens,
//! through llama.cpp's C API as `llama-cpp-sys-2` 0.1.161 binds it (it builds the llama.cpp it
//! vendors from source). The KV cache is f32 and flash attention off so that logits can be
//! compared with an f32 reference (llama.cpp's default f16 cache is ~1e-3 off, and its CPU
//! flash-attention kernel rounds queries to f16).
//!
//! Why the raw binding and not the `llama-cpp-2` wrapper: that crate turns on the sys crate's
//! `common` feature unconditionally, which compiles llama.cpp's `common` library and
//! cpp-httplib (57 of the 128 C++ files, none of which we call) inside the first command's build.
//! The handful of calls we make are wrapped in [`raw`] below, each with its ownership rule.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, OnceLock};

use puzzle_types::error::{Error, Result};

mod raw;

use raw::{Batch, Context, ContextParams, Model, ThreadPool};

/// The process's llama.cpp worker pool (its thread count with it), held by whoever computes.
static POOL: Mutex<Option<(i32, ThreadPool)>> = Mutex::new(None);

/// The process's worker pool, locked: at most one graph computes at a time.
struct Pool(Option<MutexGuard<'static, Option<(i32, ThreadPool)>>>);

impl Pool {
    fn get(&self) -> Option<&ThreadPool> {
        self.0.as_ref().and_then(|g| g.as_ref()).map(|(_, p)| p)
    }
}

impl Drop for Pool {
    /// The caller's contexts are gone (declared after the pool, dropped before it): the
    /// workers sleep until the next request instead of polling beside whatever runs next.
    fn drop(&mut self) {
        if let Some(p) = self.get() {
            p.pause();
        }
    }
}

/// One pool for every model of the process, as a server has one: a pool per model would leave
/// the idle models' workers spinning (ggml polls for new work for a while after each graph)
/// beside the one being timed, on the same cores. Made on first use with `threads` workers
/// (remade when a model asks for another count).
fn shared_pool(threads: i32) -> Result<Pool> {
    let mut g = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if g.as_ref().is_none_or(|(n, _)| *n != threads) {
        // The old pool (if any) is freed first: no context uses it while the lock is held.
        *g = None;
        let pool =
            ThreadPool::new(threads).map_err(|e| Error::invalid(format!("llama.cpp: {e}")))?;
        *g = Some((threads, pool));
    }
    Ok(Pool(Some(g)))
}

/// llama.cpp's backend may be initialised once per process.
fn backend() {
    static BACKEND: OnceLock<()> = OnceLock::new();
    // llama.cpp logs every load to stderr; PUZZLE_LLAMACPP_LOG=1 keeps that.
    BACKEND.get_or_init(|| raw::init_backend(std::env::var_os("PUZZLE_LLAMACPP_LOG").is_some()));
}

/// A GGUF loaded in llama.cpp.
pub struct LlamaCpp {
    model: Model,
    threads: i32,
    /// Whether contexts compute on the process's worker pool ([`shared_pool`]); `false`: on
    /// a pool made per graph, llama.cpp's fallback ([`LlamaCpp::with_pool_per_graph`]).
    pooled: bool,
    /// KV-cache type of the contexts [`LlamaCpp::request`] times in.
    serve_kv: KvType,
}

/// The KV-cache types llama.cpp serves with that puzzle maps deployment dtypes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    F32,
    F16,
    Bf16,
    Q8_0,
}

/// The llama.cpp this crate builds (the `llama-cpp-sys-2` version that vendors it).
pub const LLAMACPP_SOURCE: &str = "llama.cpp vendored by llama-cpp-sys-2 0.1.161";

impl LlamaCpp {
    /// Loads `path` on the CPU with `threads` threads.
    pub fn load(path: &Path, threads: usize) -> Result<Self> {
        backend();
        let model = Model::load(path).map_err(|e| {
            Error::invalid(format!("llama.cpp cannot load {}: {e}", path.display()))
        })?;
        Ok(LlamaCpp {
            model,
            threads: threads.max(1) as i32,
            pooled: true,
            serve_kv: KvType::F32,
        })
    }

    /// Computes every graph on a pool of threads made for it and joined after it, as llama.cpp
    /// does when no pool is attached and OpenMP is not built in (`raw::ThreadPool` says why
    /// that is not how a server runs). For the `serve` benchmark's baseline.
    pub fn with_pool_per_graph(mut self) -> Self {
        self.pooled = false;
        self
    }

    /// The worker pool this model's contexts compute on, held until they are gone.
    fn pool(&self) -> Result<Pool> {
        if !self.pooled {
            return Ok(Pool(None));
        }
        shared_pool(self.threads)
    }

    /// The KV-cache type requests are timed with (the deployment's `kv_dtype`).
    pub fn with_serving_kv(mut self, kv: KvType) -> Self {
        self.serve_kv = kv;
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
        let n_batch = b * p;
        let pool = self.pool()?;
        let mut ctx = self
            .model
            .context(
                &ContextParams {
                    n_ctx: b * per_seq,
                    n_seq_max: b,
                    kv_unified: Some(false),
                    n_batch,
                    n_ubatch: n_batch.min(512),
                    threads: self.threads,
                    kv: self.serve_kv,
                    flash_attention: None,
                },
                pool.get(),
            )
            .map_err(err)?;
        let vocab = self.n_vocab().max(1);
        let mut batch_in = Batch::new(b * p, b);
        for s in 0..b {
            for i in 0..p {
                let t = ((s * p + i) * 7919 % vocab) as i32;
                batch_in
                    .add(t, i as i32, s as i32, i + 1 == p)
                    .map_err(err)?;
            }
        }
        let t0 = std::time::Instant::now();
        ctx.decode(&batch_in).map_err(err)?;
        let mut next = Vec::with_capacity(b);
        for s in 0..b {
            next.push(argmax(ctx.logits_ith(s * p + p - 1).map_err(err)?));
        }
        let t_prefill = t0.elapsed().as_secs_f64() * 1e3;
        let mut step = Batch::new(b, b);
        for k in 0..decode_steps {
            step.clear();
            for (s, &t) in next.iter().enumerate() {
                step.add(t as i32, (p + k) as i32, s as i32, true)
                    .map_err(err)?;
            }
            ctx.decode(&step).map_err(err)?;
            for (s, n) in next.iter_mut().enumerate() {
                *n = argmax(ctx.logits_ith(s).map_err(err)?);
            }
        }
        Ok((t_prefill, t0.elapsed().as_secs_f64() * 1e3))
    }

    /// `text` tokenized by llama.cpp from the GGUF's own tokenizer metadata (with BOS when the
    /// GGUF says to add it; special tokens in the text are parsed).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let t = self
            .model
            .tokenize(text.as_bytes(), true, true)
            .map_err(|e| Error::invalid(format!("llama.cpp tokenize: {e}")))?;
        Ok(t.into_iter().map(|t| t as u32).collect())
    }

    /// The vocabulary size llama.cpp read.
    pub fn n_vocab(&self) -> usize {
        self.model.n_vocab()
    }

    /// A context for one sequence of up to `n_ctx` tokens, decoded in one batch, f32 KV cache.
    /// Its graphs run on `pool` when given (the caller holds the lock for the context's life).
    fn context<'a>(&'a self, n_ctx: usize, pool: Option<&'a ThreadPool>) -> Result<Context<'a>> {
        let n = n_ctx.max(16);
        self.model
            .context(
                &ContextParams {
                    n_ctx: n,
                    n_seq_max: 1,
                    kv_unified: None,
                    n_batch: n,
                    n_ubatch: n,
                    threads: self.threads,
                    kv: KvType::F32,
                    // The CPU flash-attention kernel rounds Q to f16 (~3e-3 off an f32 reference).
                    flash_attention: Some(false),
                },
                pool,
            )
            .map_err(|e| Error::invalid(format!("llama.cpp context: {e}")))
    }

    /// The logits after every token of `tokens` (one forward pass of the whole sequence).
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let err = |e: String| Error::invalid(format!("llama.cpp: {e}"));
        let pool = self.pool()?;
        let mut ctx = self.context(tokens.len(), pool.get())?;
        let mut batch = Batch::new(tokens.len().max(1), 1);
        for (i, &t) in tokens.iter().enumerate() {
            batch.add(t as i32, i as i32, 0, true).map_err(err)?;
        }
        ctx.decode(&batch).map_err(err)?;
        (0..tokens.len())
            .map(|i| ctx.logits_ith(i).map(<[f32]>::to_vec).map_err(err))
            .collect()
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
        let pool = self.pool()?;
        let mut ctx = self.context(prompt.len() + n, pool.get())?;
        let mut batch = Batch::new((prompt.len() + n).max(1), 1);
        let err = |e: String| Error::invalid(format!("llama.cpp: {e}"));
        for (i, &t) in prompt.iter().enumerate() {
            batch
                .add(t as i32, i as i32, 0, i + 1 == prompt.len())
                .map_err(err)?;
        }
        let mut out = Vec::with_capacity(n);
        for pos in prompt.len()..prompt.len() + n {
            ctx.decode(&batch).map_err(err)?;
            let next = argmax(ctx.logits_ith(batch.len() - 1).map_err(err)?);
            out.push(next);
            if stop_at_end && self.is_end(next) {
                break;
            }
            batch.clear();
            batch.add(next as i32, pos as i32, 0, true).map_err(err)?;
        }
        Ok(out)
    }

    /// Whether `t` ends generation (EOS, EOT, ... as the GGUF's vocabulary says).
    pub fn is_end(&self, t: u32) -> bool {
        i32::try_from(t).is_ok_and(|t| self.model.is_eog(t))
    }

    /// The text of `tokens` (special tokens left out).
    pub fn detokenize(&self, tokens: &[u32]) -> Result<String> {
        if tokens.is_empty() {
            return Ok(String::new());
        }
        let t: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        let bytes = self
            .model
            .detokenize(&t, true, false)
            .map_err(|e| Error::invalid(format!("llama.cpp detokenize: {e}")))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// llama.cpp's own quantisation schemes, as `llama-quantize` names them. The K types store
/// super-blocks of 256 values; the `_S`/`_M`/`_L` mixes keep some tensors (attention V, FFN
/// down, the output) in a wider type, as llama.cpp decides per tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quant {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2K,
    Q3KS,
    Q3KM,
    Q3KL,
    Q4KS,
    Q4KM,
    Q5KS,
    Q5KM,
    Q6K,
}

impl Quant {
    pub const ALL: [Quant; 13] = [
        Quant::Q4_0,
        Quant::Q4_1,
        Quant::Q5_0,
        Quant::Q5_1,
        Quant::Q2K,
        Quant::Q3KS,
        Quant::Q3KM,
        Quant::Q3KL,
        Quant::Q4KS,
        Quant::Q4KM,
        Quant::Q5KS,
        Quant::Q5KM,
        Quant::Q6K,
    ];

    /// `llama-quantize`'s name, lower case (`q4_k_m`).
    pub fn name(self) -> &'static str {
        match self {
            Quant::Q4_0 => "q4_0",
            Quant::Q4_1 => "q4_1",
            Quant::Q5_0 => "q5_0",
            Quant::Q5_1 => "q5_1",
            Quant::Q2K => "q2_k",
            Quant::Q3KS => "q3_k_s",
            Quant::Q3KM => "q3_k_m",
            Quant::Q3KL => "q3_k_l",
            Quant::Q4KS => "q4_k_s",
            Quant::Q4KM => "q4_k_m",
            Quant::Q5KS => "q5_k_s",
            Quant::Q5KM => "q5_k_m",
            Quant::Q6K => "q6_k",
        }
    }

    fn ftype(self) -> llama_cpp_sys_2::llama_ftype {
        use llama_cpp_sys_2 as sys;
        match self {
            Quant::Q4_0 => sys::LLAMA_FTYPE_MOSTLY_Q4_0,
            Quant::Q4_1 => sys::LLAMA_FTYPE_MOSTLY_Q4_1,
            Quant::Q5_0 => sys::LLAMA_FTYPE_MOSTLY_Q5_0,
            Quant::Q5_1 => sys::LLAMA_FTYPE_MOSTLY_Q5_1,
            Quant::Q2K => sys::LLAMA_FTYPE_MOSTLY_Q2_K,
            Quant::Q3KS => sys::LLAMA_FTYPE_MOSTLY_Q3_K_S,
            Quant::Q3KM => sys::LLAMA_FTYPE_MOSTLY_Q3_K_M,
            Quant::Q3KL => sys::LLAMA_FTYPE_MOSTLY_Q3_K_L,
            Quant::Q4KS => sys::LLAMA_FTYPE_MOSTLY_Q4_K_S,
            Quant::Q4KM => sys::LLAMA_FTYPE_MOSTLY_Q4_K_M,
            Quant::Q5KS => sys::LLAMA_FTYPE_MOSTLY_Q5_K_S,
            Quant::Q5KM => sys::LLAMA_FTYPE_MOSTLY_Q5_K_M,
            Quant::Q6K => sys::LLAMA_FTYPE_MOSTLY_Q6_K,
        }
    }
}

impl std::fmt::Display for Quant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Quant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let want = s.to_ascii_lowercase();
        Quant::ALL
            .into_iter()
            .find(|q| q.name() == want)
            .ok_or_else(|| {
                let names: Vec<&str> = Quant::ALL.iter().map(|q| q.name()).collect();
                Error::invalid(format!(
                    "`{s}` is not one of llama.cpp's quantisation types ({})",
                    names.join(", ")
                ))
            })
    }
}

/// Quantises the GGUF `input` (f32, f16 or bf16 matrices, as our export writes them) into
/// `output` with llama.cpp's own quantiser, `threads` threads. `output` is replaced atomically:
/// a failed or killed quantisation leaves it as it was.
pub fn quantize(input: &Path, output: &Path, q: Quant, threads: usize) -> Result<()> {
    backend();
    if !input.is_file() {
        return Err(Error::invalid(format!(
            "cannot quantise {}: no such file",
            input.display()
        )));
    }
    let threads = i32::try_from(threads.max(1)).unwrap_or(i32::MAX);
    puzzle_types::fsutil::write_atomic_via_path(output, |tmp| {
        raw::quantize(input, tmp, q.ftype(), threads).map_err(|e| {
            Error::invalid(format!(
                "quantising {} to {q} for {}: {e}",
                input.display(),
                output.display()
            ))
        })
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_gguf_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not.gguf");
        std::fs::write(&path, b"this is not a GGUF file").unwrap();
        let e = LlamaCpp::load(&path, 1).err().expect("must not load");
        assert!(e.to_string().contains("not.gguf"), "{e}");
    }

    #[test]
    fn a_full_batch_is_an_error_not_an_overrun() {
        let mut b = Batch::new(2, 1);
        b.add(1, 0, 0, false).unwrap();
        b.add(2, 1, 0, true).unwrap();
        assert_eq!(b.len(), 2);
        assert!(b.add(3, 2, 0, true).unwrap_err().contains("full"));
        b.clear();
        assert_eq!(b.len(), 0);
        b.add(3, 0, 0, true).unwrap();
    }

    #[test]
    fn argmax_takes_the_first_of_equals() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, -1.0]), 1);
        assert_eq!(argmax(&[]), 0);
    }
}
