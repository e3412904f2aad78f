//! llama.cpp as the deployment's engine (`deployment.engine = "llamacpp"`): a model is written
//! as a GGUF by our exporter (with llama.cpp's limits re-expressed exactly, so it is timed as it
//! will be served), loaded by the llama.cpp that `puzzle-llamacpp` builds, and timed there at
//! the deployment's weight and KV-cache types, on every core of this machine, with one worker
//! pool kept across requests as a server keeps it (`puzzle_llamacpp`'s `shared_pool`). `int4` weights
//! are llama.cpp's Q4_K_M, made by llama.cpp's own quantiser from our f32 GGUF, as a user
//! serving a 4-bit model would make them.

use puzzle_core::burn::tensor::Device;
use puzzle_core::deploy::DeploymentProfile;
use puzzle_core::engine::{Engine, EngineRegistration};
use puzzle_core::error::{Error, Result};
use puzzle_core::eval::speed::Served;
use puzzle_core::gguf::GgmlType;
use puzzle_core::kinds::{Dtype, EngineKind};
use puzzle_core::spec::{AttentionSpec, ModelSpec};
use puzzle_core::weights::WeightSource;
use puzzle_llamacpp::{KvType, LLAMACPP_SOURCE, LlamaCpp, Quant, quantize};

use crate::gguf_export::{Vocab, write_model_gguf};

/// The llama.cpp engine.
pub struct LlamaCppEngine;

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How a deployment's weights are stored in the GGUF that is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightStorage {
    /// Written by our exporter in this type.
    Ours(GgmlType),
    /// Our f32 export, quantised by llama.cpp's quantiser.
    LlamaCpp(Quant),
}

/// The GGUF storage of a deployment's weight dtype.
pub fn weight_type(d: Dtype) -> Result<WeightStorage> {
    Ok(match d {
        Dtype::Fp32 | Dtype::Tf32 => WeightStorage::Ours(GgmlType::F32),
        Dtype::Bf16 => WeightStorage::Ours(GgmlType::Bf16),
        Dtype::Fp16 => WeightStorage::Ours(GgmlType::F16),
        Dtype::Int8 | Dtype::Fp8 => WeightStorage::Ours(GgmlType::Q8_0),
        // The 4-bit type llama.cpp users serve (its README's and quantiser's recommendation).
        Dtype::Int4 => WeightStorage::LlamaCpp(Quant::Q4KM),
        other => {
            return Err(Error::invalid(format!(
                "deployment.weight_dtype = \"{other}\": llama.cpp weights are f32, bf16, fp16, int8 (Q8_0) or int4 (llama.cpp's Q4_K_M) here"
            )));
        }
    })
}

fn kv_type(d: Dtype) -> Result<KvType> {
    Ok(match d {
        Dtype::Fp32 | Dtype::Tf32 => KvType::F32,
        Dtype::Bf16 => KvType::Bf16,
        Dtype::Fp16 => KvType::F16,
        Dtype::Int8 | Dtype::Fp8 => KvType::Q8_0,
        other => {
            return Err(Error::invalid(format!(
                "deployment.kv_dtype = \"{other}\": llama.cpp's KV cache is f32, bf16, fp16 or int8 (Q8_0) here"
            )));
        }
    })
}

/// A model loaded in llama.cpp, with the folder its GGUF lives in (llama.cpp maps the file).
struct Loaded {
    model: LlamaCpp,
    _dir: tempfile::TempDir,
}

impl Served for Loaded {
    fn request(&self, batch: usize, prefill: usize, decode_steps: usize) -> Result<(f64, f64)> {
        self.model.request(batch, prefill, decode_steps)
    }
}

impl Engine for LlamaCppEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::LlamaCpp
    }

    fn describe(&self, _device: &Device) -> String {
        // The pool is named: tables timed with a pool per graph (before) are re-measured.
        format!("{LLAMACPP_SOURCE}, CPU, {} threads in one pool", threads())
    }

    fn load(
        &self,
        spec: &ModelSpec,
        weights: &dyn WeightSource,
        deploy: &DeploymentProfile,
        _device: &Device,
    ) -> Result<Box<dyn Served>> {
        let (ty, kv) = (weight_type(deploy.weight_dtype)?, kv_type(deploy.kv_dtype)?);
        if !spec
            .layers
            .iter()
            .any(|l| matches!(l.attention, AttentionSpec::Gqa { .. }))
        {
            return Err(Error::invalid(
                "llama.cpp cannot serve a model without any KV-cache attention layer (it fails to allocate an empty KV cache)",
            ));
        }
        if kv == KvType::Q8_0 && !spec.head_dim.is_multiple_of(32) {
            return Err(Error::invalid(format!(
                "deployment.kv_dtype = \"{}\": llama.cpp's Q8_0 KV cache needs a head size that is a multiple of 32 (this model's head size {})",
                deploy.kv_dtype, spec.head_dim
            )));
        }
        let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
        let path = dir.path().join("model.gguf");
        match ty {
            WeightStorage::Ours(ty) => {
                write_model_gguf(spec, weights, Vocab::None, "timed", &path, ty)?;
            }
            WeightStorage::LlamaCpp(q) => {
                let f32 = dir.path().join("f32.gguf");
                write_model_gguf(spec, weights, Vocab::None, "timed", &f32, GgmlType::F32)?;
                quantize(&f32, &path, q, threads())?;
                std::fs::remove_file(&f32).map_err(|e| Error::io(&f32, e))?;
            }
        }
        let model = LlamaCpp::load(&path, threads())?.with_serving_kv(kv);
        Ok(Box::new(Loaded { model, _dir: dir }))
    }
}

inventory::submit! {
    EngineRegistration {
        engine: &LlamaCppEngine,
        provider: "puzzle-llama-ops",
        description: "llama.cpp (built from source), models written by our GGUF export and timed in it",
    }
}
