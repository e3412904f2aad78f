//! What each variant costs (Puzzle stage 4): parameters, bytes, KV cache, and prefill/decode
//! latency per batch size, from pluggable [`CostModel`]s, collected in `costs.json`.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::deploy::{DeploymentProfile, HardwareProfile};
use crate::engine::Engine;
use crate::error::Result;
use crate::progress::Progress;
use crate::spec::{AttentionSpec, ModelSpec};
use crate::variants::SubblockSpec;
use puzzle_types::registry::Registry;

/// Costs of one library entry (or of the non-block part of a model).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Costs {
    pub params: usize,
    pub param_bytes: f64,
    /// KV-cache bytes per token of one sequence.
    pub kv_bytes_per_token: f64,
    /// KV-cache bytes of one sequence of the deployment's prefill + generation length (less
    /// than `kv_bytes_per_token` times the length for sliding-window attention).
    #[serde(default)]
    pub kv_bytes_per_sequence: f64,
    /// Batch size -> milliseconds to prefill `prefill_len` tokens per sequence.
    #[serde(with = "batch_map")]
    pub prefill_ms: BTreeMap<usize, f64>,
    /// Batch size -> milliseconds of one decode step at the mean generation context.
    #[serde(with = "batch_map")]
    pub decode_ms: BTreeMap<usize, f64>,
}

/// JSON object keys are strings: batch sizes go out as `"8"` and come back as numbers.
mod batch_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(m: &BTreeMap<usize, f64>, s: S) -> Result<S::Ok, S::Error> {
        let as_str: BTreeMap<String, f64> = m.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        as_str.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<usize, f64>, D::Error> {
        let m = BTreeMap::<String, f64>::deserialize(d)?;
        m.into_iter()
            .map(|(k, v)| {
                k.parse().map(|k| (k, v)).map_err(|_| {
                    serde::de::Error::custom(format!("batch size `{k}` is not a number"))
                })
            })
            .collect()
    }
}

impl Costs {
    /// Adds another entry's costs (e.g. attention + FFN of a layer).
    pub fn add(&mut self, o: &Costs) {
        self.params += o.params;
        self.param_bytes += o.param_bytes;
        self.kv_bytes_per_token += o.kv_bytes_per_token;
        self.kv_bytes_per_sequence += o.kv_bytes_per_sequence;
        for (b, v) in &o.prefill_ms {
            *self.prefill_ms.entry(*b).or_default() += v;
        }
        for (b, v) in &o.decode_ms {
            *self.decode_ms.entry(*b).or_default() += v;
        }
    }

    /// Milliseconds to serve a batch of `b`: prefill plus `generation_len` decode steps.
    pub fn runtime_ms(&self, b: usize, deploy: &DeploymentProfile) -> Option<f64> {
        Some(self.prefill_ms.get(&b)? + deploy.generation_len as f64 * self.decode_ms.get(&b)?)
    }
}

/// What a cost model sees.
pub struct CostContext<'a> {
    pub parent: &'a ModelSpec,
    pub deploy: &'a DeploymentProfile,
    pub hardware: &'a HardwareProfile,
    /// The device the program runs on (for measuring).
    pub device: Device,
    /// The deployment's engine (`deploy.engine`), for models that time in it; the error says
    /// why this build cannot run it (e.g. `vllm`: plan with `roofline`, measure elsewhere).
    pub engine: std::result::Result<&'a dyn Engine, String>,
}

/// The contract of a cost model: costs of one entry's subblocks (1, or an attention + FFN
/// pair) and of the non-block part, for the context's deployment. Counts and bytes must be
/// exact; latencies are per batch size of the deployment (empty when the model does not time).
pub trait CostModel: Send + Sync + 'static {
    /// Registry name (`analytic`, `measured`, `roofline`).
    fn name(&self) -> &'static str;
    /// One entry.
    fn entry(&self, ctx: &CostContext, layer: usize, specs: &[SubblockSpec]) -> Result<Costs>;
    /// Embeddings, final norm, head and sampling.
    fn non_block(&self, ctx: &CostContext) -> Result<Costs>;
    /// The non-block part and every entry of `entries` (layer, subblocks), in order. A model
    /// that times entries together (in context, against the parent) overrides this; the
    /// default asks [`CostModel::entry`] one by one.
    fn table(
        &self,
        ctx: &CostContext,
        entries: &[(usize, Vec<SubblockSpec>)],
        progress: &mut dyn Progress,
    ) -> Result<(Costs, Vec<Costs>)> {
        progress.start("cost", entries.len() as u64 + 1);
        let non_block = self.non_block(ctx)?;
        let mut out = Vec::with_capacity(entries.len());
        for (i, (layer, specs)) in entries.iter().enumerate() {
            out.push(self.entry(ctx, *layer, specs)?);
            progress.set(i as u64 + 2, &format!("L{layer}"));
        }
        progress.finish();
        Ok((non_block, out))
    }

    /// What [`CostModel::table`] would ask of the deployment's engine for these entries,
    /// without running it (`puzzle plan`). A model that does not time returns zeros.
    fn workload(
        &self,
        _ctx: &CostContext,
        _entries: &[(usize, Vec<SubblockSpec>)],
    ) -> Result<CostWorkload> {
        Ok(CostWorkload::default())
    }
}

/// The engine work of one cost table: timed requests (a prefill of `prefill_len` tokens then
/// `generation_len` decode steps) at each of the deployment's batch sizes, and models loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CostWorkload {
    pub requests_per_batch_size: usize,
    pub models: usize,
}

/// A cost model registered by a static plugin.
pub struct CostModelRegistration {
    pub model: &'static dyn CostModel,
    pub provider: &'static str,
    pub description: &'static str,
}

inventory::collect!(CostModelRegistration);

impl puzzle_types::registry::Named for dyn CostModel {
    fn name(&self) -> &str {
        CostModel::name(self)
    }
}

/// The statically linked cost models (their `inventory` submissions), as a registry.
pub fn static_cost_models() -> Registry<dyn CostModel> {
    let mut r = Registry::new("cost model");
    for m in inventory::iter::<CostModelRegistration> {
        r.add(m.model, m.provider, m.description)
            .expect("two static cost models share a name");
    }
    r
}

/// Exact counts and bytes of an entry: parameters at the weight dtype, KV cache at the KV dtype.
pub fn analytic_counts(ctx: &CostContext, specs: &[SubblockSpec]) -> Result<Costs> {
    let wb = ctx.deploy.weight_dtype.bytes();
    let kb = ctx.deploy.kv_dtype.bytes();
    let mut c = Costs::default();
    for s in specs {
        let p = s.params(ctx.parent);
        c.params += p;
        c.param_bytes += p as f64 * wb;
        if let SubblockSpec::Attention(AttentionSpec::Gqa {
            num_kv_heads,
            window,
            ..
        }) = s
        {
            let per_token = (2 * num_kv_heads * ctx.parent.head_dim) as f64 * kb;
            let seq = ctx.deploy.prefill_len + ctx.deploy.generation_len;
            c.kv_bytes_per_token += per_token;
            c.kv_bytes_per_sequence += per_token * window.map_or(seq, |w| w.min(seq)) as f64;
        }
    }
    Ok(c)
}

/// Exact counts and bytes of the non-block part.
pub fn analytic_non_block(ctx: &CostContext) -> Result<Costs> {
    let p = ctx.parent.non_block_params();
    Ok(Costs {
        params: p,
        param_bytes: p as f64 * ctx.deploy.weight_dtype.bytes(),
        ..Default::default()
    })
}

/// One row of `costs.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CostEntry {
    pub layer: usize,
    /// The library entry id (`attn:gqa(kv=2)`, or `attn:..+ffn:..` for a coupled block).
    pub variant: String,
    #[serde(flatten)]
    pub costs: Costs,
}

/// `costs.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CostTable {
    /// The cost model that produced the latencies.
    pub model: String,
    pub deployment: DeploymentProfile,
    pub hardware: HardwareProfile,
    pub non_block: Costs,
    pub entries: Vec<CostEntry>,
    /// Parent fingerprint, config hash, device description.
    pub provenance: BTreeMap<String, String>,
}

impl CostTable {
    /// Reads `costs.json`.
    pub fn load(path: &Path) -> Result<Self> {
        crate::fsutil::read_json(path)
    }

    /// The entry of `(layer, variant)`.
    pub fn get(&self, layer: usize, variant: &str) -> Option<&Costs> {
        self.entries
            .iter()
            .find(|e| e.layer == layer && e.variant == variant)
            .map(|e| &e.costs)
    }
}

impl crate::artifact::Recorded for CostTable {
    type Inputs = BTreeMap<String, String>;
    fn inputs(&self) -> BTreeMap<String, String> {
        self.provenance.clone()
    }
}
