//! Owned handles over the few llama.cpp C calls we make (`llama-cpp-sys-2`'s bindgen output).
//! Each handle frees what it owns in `Drop`; a context borrows its model, so it cannot outlive
//! it. Errors are strings the caller prefixes with what it was doing.

use std::ffi::{CString, c_char, c_void};
use std::marker::PhantomData;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Mutex;

use llama_cpp_sys_2 as sys;

use crate::KvType;

/// The last error lines llama.cpp logged while its log was quiet: its library calls report why
/// they failed only there (a failed quantisation returns 1), so errors quote them.
static ERRORS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Takes the error lines llama.cpp logged since the last call, joined (empty if none).
pub fn take_errors() -> String {
    let mut e = ERRORS.lock().unwrap_or_else(|e| e.into_inner());
    let s = e.join(" ");
    e.clear();
    s
}

/// Starts llama.cpp's backend; unless `log`, its (and ggml's) log lines are dropped, except
/// error lines, which [`take_errors`] hands to the error that follows them.
pub fn init_backend(log: bool) {
    unsafe extern "C" fn quiet(level: sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
        if level != sys::GGML_LOG_LEVEL_ERROR || text.is_null() {
            return;
        }
        // SAFETY: llama.cpp passes a NUL-terminated string that lives for the call.
        let line = unsafe { std::ffi::CStr::from_ptr(text) }.to_string_lossy();
        let line = line.trim().trim_matches('=').trim();
        if line.is_empty() {
            return;
        }
        let mut e = ERRORS.lock().unwrap_or_else(|e| e.into_inner());
        // A bound, should nobody take them.
        if e.len() >= 16 {
            e.remove(0);
        }
        e.push(line.to_string());
    }
    // SAFETY: plain initialisation calls, made once per process (the caller's OnceLock); the
    // callback copies its text out and lives for the program.
    unsafe {
        if !log {
            sys::llama_log_set(Some(quiet), std::ptr::null_mut());
            sys::ggml_log_set(Some(quiet), std::ptr::null_mut());
        }
        sys::llama_backend_init();
    }
}

/// A loaded model.
pub struct Model {
    ptr: NonNull<sys::llama_model>,
    vocab: NonNull<sys::llama_vocab>,
}

// SAFETY: after loading, llama.cpp only reads the model (contexts keep their own state); the
// llama-cpp-2 wrapper makes the same claim.
unsafe impl Send for Model {}
unsafe impl Sync for Model {}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from llama_model_load_from_file and is freed once; every context
        // borrowing it has been dropped (lifetimes).
        unsafe { sys::llama_model_free(self.ptr.as_ptr()) }
    }
}

/// llama.cpp's quantiser (the library call behind `llama-quantize`): reads the GGUF `input`
/// and writes `output` with its matrices in `ftype`, choosing per tensor as llama.cpp does (the
/// `_M` mixes keep some tensors wider; a row length a block type cannot hold falls back to a
/// type that can). `output` is written by llama.cpp itself, not atomically.
pub fn quantize(
    input: &Path,
    output: &Path,
    ftype: sys::llama_ftype,
    threads: i32,
) -> Result<(), String> {
    let c = |p: &Path| -> Result<CString, String> {
        let s = p
            .to_str()
            .ok_or_else(|| format!("{} is not UTF-8", p.display()))?;
        CString::new(s).map_err(|_| format!("{} contains a NUL byte", p.display()))
    };
    let (i, o) = (c(input)?, c(output)?);
    // SAFETY: returns a plain struct of defaults (null pointers for imatrix and overrides).
    let mut params = unsafe { sys::llama_model_quantize_default_params() };
    params.nthread = threads;
    params.ftype = ftype;
    take_errors();
    // SAFETY: both paths are valid C strings for the call and `params` is a complete struct
    // whose pointers are the defaults' nulls.
    let rc = unsafe { sys::llama_model_quantize(i.as_ptr(), o.as_ptr(), &params) };
    if rc == 0 {
        Ok(())
    } else {
        let why = take_errors();
        Err(if why.is_empty() {
            format!("llama.cpp's quantiser failed (code {rc}; PUZZLE_LLAMACPP_LOG=1 shows its log)")
        } else {
            format!("llama.cpp's quantiser failed: {why}")
        })
    }
}

/// A pool of CPU worker threads that llama.cpp's graphs run on, kept across graphs.
///
/// Why: this build has no OpenMP (the sys crate's `openmp` feature is off), and without an
/// attached pool ggml makes a disposable one for every graph it computes: it starts and joins
/// `threads - 1` threads per decode step. llama.cpp's own tools attach a pool (`llama-cli`)
/// or run on OpenMP's persistent team (the default cmake build), so timing with disposable
/// pools measures a per-step cost no server pays, and one that varies with how quickly the
/// machine starts a thread (`cargo bench -p puzzle-llama-ops --features llamacpp --bench serve` compares both).
pub struct ThreadPool {
    ptr: NonNull<sys::ggml_threadpool>,
}

// SAFETY: the pool is a handle to worker threads that ggml synchronises itself; we hand it to
// one graph computation at a time (the lock of `crate::shared_pool`).
unsafe impl Send for ThreadPool {}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        // SAFETY: made by ggml_threadpool_new, freed once, after every context it was attached
        // to (contexts borrow it: `Context::attach`).
        unsafe { sys::ggml_threadpool_free(self.ptr.as_ptr()) }
    }
}

impl ThreadPool {
    /// `threads` workers (the caller's thread is one of them) with ggml's default polling, as
    /// `llama-cli` makes its pool.
    pub fn new(threads: i32) -> Result<ThreadPool, String> {
        // SAFETY: returns a plain struct of defaults for `threads` threads.
        let mut params = unsafe { sys::ggml_threadpool_params_default(threads.max(1)) };
        // SAFETY: `params` is a complete struct for the call; ggml copies what it keeps.
        let ptr = unsafe { sys::ggml_threadpool_new(&mut params) };
        NonNull::new(ptr)
            .map(|ptr| ThreadPool { ptr })
            .ok_or_else(|| format!("ggml could not start a pool of {threads} threads"))
    }

    /// Puts the workers to sleep until the next graph (whose kickoff wakes them): after a
    /// graph they otherwise poll for new work for a while, on cores that whatever runs next
    /// (the next model's request, or our own tensor code) needs.
    pub fn pause(&self) {
        // SAFETY: a live pool; ggml takes the pool's own mutex.
        unsafe { sys::ggml_threadpool_pause(self.ptr.as_ptr()) }
    }
}

/// What a context is made with.
pub struct ContextParams {
    pub n_ctx: usize,
    pub n_seq_max: usize,
    /// `None`: llama.cpp's default.
    pub kv_unified: Option<bool>,
    pub n_batch: usize,
    pub n_ubatch: usize,
    pub threads: i32,
    pub kv: KvType,
    /// `None`: llama.cpp decides (its default, "auto").
    pub flash_attention: Option<bool>,
}

fn to_i32(what: &str, n: usize) -> Result<i32, String> {
    i32::try_from(n).map_err(|_| format!("{what} {n} exceeds llama.cpp's 32-bit limit"))
}

fn to_u32(what: &str, n: usize) -> Result<u32, String> {
    u32::try_from(n).map_err(|_| format!("{what} {n} exceeds llama.cpp's 32-bit limit"))
}

/// The output of a llama.cpp call that fills a caller's buffer of `cap` items and returns the
/// count written, or minus the count it needs when they do not fit: called with `first` items of
/// room, then once more with what it asked for.
fn grown<T: Clone + Default>(
    what: &str,
    first: usize,
    mut call: impl FnMut(&mut [T], i32) -> i32,
) -> Result<Vec<T>, String> {
    let mut out = vec![T::default(); first];
    for _ in 0..2 {
        let cap = to_i32(&format!("{what} buffer"), out.len())?;
        let n = call(&mut out, cap);
        if n >= 0 {
            out.truncate(n as usize);
            return Ok(out);
        }
        if n == i32::MIN {
            return Err(format!(
                "the {what} output exceeds llama.cpp's 32-bit limit"
            ));
        }
        out.resize((-n) as usize, T::default());
    }
    Err(format!("llama.cpp kept asking for a larger {what} buffer"))
}

impl Model {
    /// Loads a GGUF with llama.cpp's default model parameters (CPU, memory-mapped).
    pub fn load(path: &Path) -> Result<Model, String> {
        let s = path
            .to_str()
            .ok_or_else(|| "the path is not UTF-8".to_string())?;
        let c = CString::new(s).map_err(|_| "the path contains a NUL byte".to_string())?;
        take_errors();
        // SAFETY: `c` is a valid C string for the call; the default parameters hold no pointers
        // we own.
        let ptr = unsafe {
            sys::llama_model_load_from_file(c.as_ptr(), sys::llama_model_default_params())
        };
        let ptr = NonNull::new(ptr).ok_or_else(|| match take_errors() {
            why if why.is_empty() => {
                "llama.cpp returned no model (run with PUZZLE_LLAMACPP_LOG=1 for its reason)"
                    .to_string()
            }
            why => format!("llama.cpp returned no model: {why}"),
        })?;
        // SAFETY: a loaded model always has a vocabulary, owned by the model.
        let vocab = unsafe { sys::llama_model_get_vocab(ptr.as_ptr()) };
        let Some(vocab) = NonNull::new(vocab as *mut sys::llama_vocab) else {
            // SAFETY: freeing the model just loaded, once.
            unsafe { sys::llama_model_free(ptr.as_ptr()) };
            return Err("the model has no vocabulary".into());
        };
        Ok(Model { ptr, vocab })
    }

    /// The number of tokens in the vocabulary (the length of every logits row).
    pub fn n_vocab(&self) -> usize {
        // SAFETY: `vocab` lives as long as the model.
        unsafe { sys::llama_vocab_n_tokens(self.vocab.as_ptr()) }.max(0) as usize
    }

    /// Whether `t` ends generation.
    pub fn is_eog(&self, t: i32) -> bool {
        // SAFETY: llama.cpp checks the id against its vocabulary's attributes.
        t >= 0
            && (t as usize) < self.n_vocab()
            && unsafe { sys::llama_vocab_is_eog(self.vocab.as_ptr(), t) }
    }

    /// llama.cpp's tokenization of `text`.
    pub fn tokenize(
        &self,
        text: &[u8],
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<i32>, String> {
        let len = to_i32("text length", text.len())?;
        grown("token", text.len() + 2, |out: &mut [i32], cap| {
            // SAFETY: `text` and `out` are valid for the lengths passed (`cap` is out's length).
            unsafe {
                sys::llama_tokenize(
                    self.vocab.as_ptr(),
                    text.as_ptr().cast(),
                    len,
                    out.as_mut_ptr(),
                    cap,
                    add_special,
                    parse_special,
                )
            }
        })
    }

    /// The bytes of `tokens`.
    pub fn detokenize(
        &self,
        tokens: &[i32],
        remove_special: bool,
        unparse_special: bool,
    ) -> Result<Vec<u8>, String> {
        let n_tokens = to_i32("token count", tokens.len())?;
        grown("text", tokens.len() * 8 + 16, |out: &mut [u8], cap| {
            // SAFETY: `tokens` and `out` are valid for the lengths passed (`cap` is out's length).
            unsafe {
                sys::llama_detokenize(
                    self.vocab.as_ptr(),
                    tokens.as_ptr(),
                    n_tokens,
                    out.as_mut_ptr().cast(),
                    cap,
                    remove_special,
                    unparse_special,
                )
            }
        })
    }

    /// A new inference context over this model, computing on `pool` when given (which must
    /// outlive it) or else on a pool ggml makes per graph.
    pub fn context<'a>(
        &'a self,
        p: &ContextParams,
        pool: Option<&'a ThreadPool>,
    ) -> Result<Context<'a>, String> {
        // SAFETY: returns a plain struct of defaults.
        let mut c = unsafe { sys::llama_context_default_params() };
        c.n_ctx = to_u32("context size", p.n_ctx)?;
        c.n_seq_max = to_u32("sequence count", p.n_seq_max)?;
        if let Some(u) = p.kv_unified {
            c.kv_unified = u;
        }
        c.n_batch = to_u32("batch size", p.n_batch)?;
        c.n_ubatch = to_u32("micro-batch size", p.n_ubatch)?;
        c.n_threads = p.threads;
        c.n_threads_batch = p.threads;
        let kv = match p.kv {
            KvType::F32 => sys::GGML_TYPE_F32,
            KvType::F16 => sys::GGML_TYPE_F16,
            KvType::Bf16 => sys::GGML_TYPE_BF16,
            KvType::Q8_0 => sys::GGML_TYPE_Q8_0,
        };
        c.type_k = kv;
        c.type_v = kv;
        if let Some(fa) = p.flash_attention {
            c.flash_attn_type = if fa {
                sys::LLAMA_FLASH_ATTN_TYPE_ENABLED
            } else {
                sys::LLAMA_FLASH_ATTN_TYPE_DISABLED
            };
        }
        // Making a context may write to the model (llama.cpp adjusts its n_ctx_train in some
        // cases), so contexts are made one at a time across the process.
        static MAKING: Mutex<()> = Mutex::new(());
        let _one = MAKING.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the model is alive for the context's lifetime ('_), nothing else touches it
        // while the lock is held, and the parameters are a complete struct.
        let ptr = unsafe { sys::llama_init_from_model(self.ptr.as_ptr(), c) };
        let ptr = NonNull::new(ptr).ok_or_else(|| {
            format!(
                "llama.cpp made no context of {} tokens (run with PUZZLE_LLAMACPP_LOG=1 for its reason)",
                p.n_ctx
            )
        })?;
        let mut ctx = Context {
            ptr,
            n_vocab: self.n_vocab(),
            _model: PhantomData,
        };
        if let Some(pool) = pool {
            ctx.attach(pool);
        }
        Ok(ctx)
    }
}

/// An inference context: the KV cache and the logits of the last decode.
pub struct Context<'m> {
    ptr: NonNull<sys::llama_context>,
    n_vocab: usize,
    _model: PhantomData<&'m Model>,
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        // SAFETY: made by llama_init_from_model, freed once.
        unsafe { sys::llama_free(self.ptr.as_ptr()) }
    }
}

impl<'m> Context<'m> {
    /// Runs this context's graphs on `pool` (batch and single-token graphs alike) instead of
    /// a pool made per graph. The pool outlives the context (`'m`).
    fn attach(&mut self, pool: &'m ThreadPool) {
        // SAFETY: both handles are alive for the context's lifetime; llama.cpp keeps the
        // pointers and never frees the pool (`~llama_context` does not touch it), and we free
        // it only after every context using it is gone.
        unsafe {
            sys::llama_attach_threadpool(self.ptr.as_ptr(), pool.ptr.as_ptr(), pool.ptr.as_ptr())
        }
    }
}

impl Context<'_> {
    /// Runs the batch through the model, appending to the KV cache.
    pub fn decode(&mut self, batch: &Batch) -> Result<(), String> {
        // SAFETY: the batch's arrays hold `n_tokens` filled entries (Batch::add).
        match unsafe { sys::llama_decode(self.ptr.as_ptr(), batch.raw) } {
            0 => Ok(()),
            1 => Err("decode: no KV-cache slot for the batch (context too small)".into()),
            2 => Err("decode: aborted".into()),
            -1 => Err("decode: invalid batch (empty, or a token or position out of range)".into()),
            c => Err(format!("decode failed with code {c}")),
        }
    }

    /// The logits of the `i`-th token of the last decoded batch (one that asked for logits).
    pub fn logits_ith(&self, i: usize) -> Result<&[f32], String> {
        let idx = to_i32("logits index", i)?;
        // SAFETY: llama.cpp returns null for an index without logits; otherwise a row of
        // n_vocab floats that lives until the next decode (the &self borrow).
        let p = unsafe { sys::llama_get_logits_ith(self.ptr.as_ptr(), idx) };
        if p.is_null() {
            return Err(format!("no logits for batch position {i}"));
        }
        // SAFETY: see above.
        Ok(unsafe { std::slice::from_raw_parts(p, self.n_vocab) })
    }
}

/// A batch of tokens, each in one sequence.
pub struct Batch {
    raw: sys::llama_batch,
    cap: usize,
}

impl Drop for Batch {
    fn drop(&mut self) {
        // SAFETY: made by llama_batch_init, freed once.
        unsafe { sys::llama_batch_free(self.raw) }
    }
}

impl Batch {
    /// Room for `cap` tokens, each in one of up to `n_seq_max` sequences.
    pub fn new(cap: usize, n_seq_max: usize) -> Batch {
        let cap = cap.max(1);
        // SAFETY: allocates arrays of `cap` entries (token ids, not embeddings: embd = 0), each
        // with room for `n_seq_max` sequence ids.
        let raw = unsafe {
            sys::llama_batch_init(
                i32::try_from(cap).unwrap_or(i32::MAX),
                0,
                i32::try_from(n_seq_max.max(1)).unwrap_or(i32::MAX),
            )
        };
        Batch {
            raw,
            cap: cap.min(i32::MAX as usize),
        }
    }

    /// The number of tokens added since the last clear.
    pub fn len(&self) -> usize {
        self.raw.n_tokens as usize
    }

    /// Empties the batch (the allocation is kept).
    pub fn clear(&mut self) {
        self.raw.n_tokens = 0;
    }

    /// Appends `token` at position `pos` of sequence `seq`; `logits`: whether the decode keeps
    /// its logits.
    pub fn add(&mut self, token: i32, pos: i32, seq: i32, logits: bool) -> Result<(), String> {
        let i = self.len();
        if i >= self.cap {
            return Err(format!("batch full ({} tokens)", self.cap));
        }
        // SAFETY: i < cap, the arrays' length; seq_id[i] has room for at least one id.
        unsafe {
            *self.raw.token.add(i) = token;
            *self.raw.pos.add(i) = pos;
            *self.raw.n_seq_id.add(i) = 1;
            *(*self.raw.seq_id.add(i)) = seq;
            *self.raw.logits.add(i) = i8::from(logits);
        }
        self.raw.n_tokens += 1;
        Ok(())
    }
}
