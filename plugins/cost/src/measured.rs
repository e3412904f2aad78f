//! Latencies measured in context, in the deployment's engine, so that block sums predict whole
//! models.
//!
//! Timing a subblock alone misses what a real model pays around it (per-layer overheads,
//! caches, the engine's graph): block sums of isolated timings were off by up to 2x. Here every
//! entry is timed *inside the parent*: the model is the parent with that variant in place of the
//! parent's subblock in half of the layers of the same shape, timed round-robin with the parent
//! itself, and its cost is the paired difference per replaced layer. Why half: one layer's
//! difference is too small to measure on a busy machine (`n` copies give `n` times the
//! signal), while replacing every layer moves the model far from the children the search
//! weighs (a 2x child keeps about half the parent's cost) and over-estimated savings: on the
//! tiny parent in llama.cpp at batch 8, all-layer deltas mispredicted 5 random children by
//! 16% on average, half-layer deltas by 6% (`puzzle cost --validate 5`).
//!
//! ```text
//! delta(v)   = (median over rounds of T(parent with v in the group's layers) / T(parent) - 1)
//!              x median T(parent) / |group|
//! share(k)   = -delta(no-op of kind k)                the parent's own subblock of kind k
//! cost(v)    = max(0, share(kinds of v) + delta(v))   (a no-op costs exactly 0)
//! non_block  = max(0, T(parent) - sum over layers of max(0, share(attention)) + max(0, share(FFN)))
//! ```
//!
//! so that `non_block + sum of the parent's own entries = T(parent)` exactly and any child is
//! predicted as `T(parent) + sum of its deltas`, unless a `max` acted: they act only when timing
//! noise exceeds a block's own time (a time is never negative, and a negative one would let
//! the search "buy" speed that does not exist). What this leaves out is interaction between
//! layers (a no-op FFN the engine re-expresses only next to an attention, for example).
//! Timings use random weights of the right shapes: engines do not branch on values. Deltas are
//! ratios to the parent timed in the same round, not differences: on a shared machine the
//! speed of everything drifts by tens of percent over the minutes a table takes (measured: the
//! tiny parent's batch-1 request 291 ms in the cost stage, 221 ms in the check right after),
//! and a ratio is unmoved by a drift that slows parent and replacement alike.

use std::collections::BTreeMap;

use puzzle_core::cost::{
    CostContext, CostModel, CostWorkload, Costs, analytic_counts, analytic_non_block,
};
use puzzle_core::error::{Context as _, Error, Result};
use puzzle_core::eval::speed::{Served, median};
use puzzle_core::progress::{Progress, Silent};
use puzzle_core::spec::{AttentionSpec, FfnSpec, LayerSpec, ModelSpec};
use puzzle_core::train::init::random_weights;
use puzzle_core::variants::SubblockSpec;

/// The in-context measured model.
pub struct MeasuredCost;

/// Timed rounds per model (after one warm-up round); each round times the parent too.
const ROUNDS: usize = 7;
/// Models loaded and timed together with the parent (bounds memory for large parents).
const CHUNK: usize = 4;

/// A replacement: these subblocks in place of the parent's in these layers.
#[derive(Clone, Debug, PartialEq)]
struct Replacement {
    layers: Vec<usize>,
    specs: Vec<SubblockSpec>,
}

impl Replacement {
    fn spec(&self, parent: &ModelSpec) -> ModelSpec {
        let mut s = parent.clone();
        for &l in &self.layers {
            for sub in &self.specs {
                match sub {
                    SubblockSpec::Attention(a) => s.layers[l].attention = a.clone(),
                    SubblockSpec::Ffn(f) => s.layers[l].ffn = f.clone(),
                }
            }
        }
        s
    }

    /// `attn:gqa(kv=2) in 6 layers`.
    fn label(&self, parent: &ModelSpec) -> String {
        let s = self.spec(parent);
        let ids: Vec<String> = self
            .specs
            .iter()
            .map(|x| s.variant_of(self.layers[0], x.kind()).to_string())
            .collect();
        let n = self.layers.len();
        format!(
            "{} in {n} layer{}",
            ids.join(" + "),
            if n == 1 { "" } else { "s" }
        )
    }
}

/// Per batch size: (prefill ms, decode-step ms).
type PerBatch = BTreeMap<usize, (f64, f64)>;

/// The middle half of the layers whose parent subblocks of `specs`' kinds equal layer
/// `layer`'s: the layers the replacement is timed in. (Half also keeps some attention with a KV
/// cache when the replacement removes it: llama.cpp cannot run a model without one.)
fn group(parent: &ModelSpec, layer: usize, specs: &[SubblockSpec]) -> Vec<usize> {
    let same = |a: &LayerSpec, b: &LayerSpec| {
        specs.iter().all(|s| match s {
            SubblockSpec::Attention(_) => a.attention == b.attention,
            SubblockSpec::Ffn(_) => a.ffn == b.ffn,
        })
    };
    let g: Vec<usize> = (0..parent.layers.len())
        .filter(|&g| same(&parent.layers[g], &parent.layers[layer]))
        .collect();
    // The middle half of the group, the same for every layer of it (one measurement serves
    // them all): see the module's note on context.
    let n = g.len().div_ceil(2);
    let start = (g.len() - n) / 2;
    g[start..start + n].to_vec()
}

/// Whether `specs` are the parent's own subblocks at `layer` (no measurement needed).
fn is_parent(parent: &ModelSpec, layer: usize, specs: &[SubblockSpec]) -> bool {
    specs.iter().all(|s| match s {
        SubblockSpec::Attention(a) => *a == parent.layers[layer].attention,
        SubblockSpec::Ffn(f) => *f == parent.layers[layer].ffn,
    })
}

fn noop_of(s: &SubblockSpec) -> SubblockSpec {
    match s {
        SubblockSpec::Attention(_) => SubblockSpec::Attention(AttentionSpec::NoOp),
        SubblockSpec::Ffn(_) => SubblockSpec::Ffn(FfnSpec::NoOp),
    }
}

/// Every measurement one table needs, then the arithmetic above.
struct Plan<'c, 'a> {
    ctx: &'c CostContext<'a>,
    todo: Vec<Replacement>,
    /// Per replacement (same order as `todo`): the per-layer paired deltas (while measuring:
    /// the median ratio of its time to the parent's).
    deltas: Vec<PerBatch>,
    parent: PerBatch,
}

impl<'c, 'a> Plan<'c, 'a> {
    fn new(ctx: &'c CostContext<'a>) -> Self {
        Plan {
            ctx,
            todo: Vec::new(),
            deltas: Vec::new(),
            parent: PerBatch::new(),
        }
    }

    /// Registers the replacement of `specs` at `layer`'s group (once), and its kinds' no-ops.
    fn want(&mut self, layer: usize, specs: &[SubblockSpec]) {
        let p = self.ctx.parent;
        let mut add = |specs: Vec<SubblockSpec>| {
            if is_parent(p, layer, &specs) {
                return;
            }
            let r = Replacement {
                layers: group(p, layer, &specs),
                specs,
            };
            if !self.todo.contains(&r) {
                self.todo.push(r);
            }
        };
        add(specs.to_vec());
        for s in specs {
            add(vec![noop_of(s)]);
        }
    }

    fn load(&self, spec: &ModelSpec, seed: u64) -> Result<Box<dyn Served>> {
        let engine = self
            .ctx
            .engine
            .as_ref()
            .map_err(|e| Error::invalid(e.clone()))?;
        let w = random_weights(spec, 0.02, seed);
        puzzle_core::engine::load_timed(*engine, spec, &w, self.ctx.deploy, &self.ctx.device)
    }

    /// Times every wanted replacement against the parent, `CHUNK` models at a time.
    fn measure(&mut self, progress: &mut dyn Progress) -> Result<()> {
        let d = self.ctx.deploy;
        let engine = self.ctx.deploy.engine;
        let parent = self
            .load(self.ctx.parent, 0)
            .context(format!("timing the parent in {engine}"))?;
        progress.start("cost", self.todo.len().max(1) as u64);
        let mut parent_rounds: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
        let mut done = 0;
        for chunk in self.todo.chunks(CHUNK) {
            let models = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    self.load(&r.spec(self.ctx.parent), 1 + (done + i) as u64)
                        .context(format!("timing {} in {engine}", r.label(self.ctx.parent)))
                })
                .collect::<Result<Vec<_>>>()?;
            let mut per: Vec<PerBatch> = vec![PerBatch::new(); chunk.len()];
            for &b in &d.batch_sizes {
                let mut rows: Vec<Vec<(f64, f64)>> = vec![Vec::new(); chunk.len() + 1];
                for round in 0..=ROUNDS {
                    let mut t = vec![step_times(parent.as_ref(), b, d)?];
                    for m in &models {
                        t.push(step_times(m.as_ref(), b, d)?);
                    }
                    if round > 0 {
                        for (row, x) in rows.iter_mut().zip(t) {
                            row.push(x);
                        }
                    }
                }
                parent_rounds.entry(b).or_default().extend(&rows[0]);
                for (i, row) in per.iter_mut().enumerate() {
                    // Paired per round, as a ratio to the parent timed beside it: the machine
                    // running everything slower for a while (another tenant, a throttled
                    // clock) scales both alike, so chunks timed minutes apart stay comparable.
                    // Converted to ms against the parent's median over every chunk below.
                    let ratio = |f: fn(&(f64, f64)) -> f64| {
                        median(
                            rows[0]
                                .iter()
                                .zip(&rows[i + 1])
                                .map(|(p, m)| if f(p) > 0.0 { f(m) / f(p) } else { 1.0 })
                                .collect(),
                        )
                    };
                    row.insert(b, (ratio(|x| x.0), ratio(|x| x.1)));
                }
            }
            self.deltas.extend(per);
            done += chunk.len();
            progress.set(done as u64, &chunk[chunk.len() - 1].label(self.ctx.parent));
        }
        if self.todo.is_empty() {
            for &b in &d.batch_sizes {
                for _ in 0..ROUNDS {
                    parent_rounds
                        .entry(b)
                        .or_default()
                        .push(step_times(parent.as_ref(), b, d)?);
                }
            }
        }
        self.parent = parent_rounds
            .into_iter()
            .map(|(b, v)| {
                (
                    b,
                    (
                        median(v.iter().map(|x| x.0).collect()),
                        median(v.iter().map(|x| x.1).collect()),
                    ),
                )
            })
            .collect();
        // Ratios to per-layer deltas in ms of the parent's median.
        for (r, per) in self.todo.iter().zip(&mut self.deltas) {
            let n = r.layers.len() as f64;
            for (b, (p, d)) in per.iter_mut() {
                let (tp, td) = self.parent[b];
                *p = (*p - 1.0) * tp / n;
                *d = (*d - 1.0) * td / n;
            }
        }
        progress.finish();
        Ok(())
    }

    /// The paired per-layer delta of `specs` at `layer` (zero for the parent's own).
    fn delta(&self, layer: usize, specs: &[SubblockSpec]) -> PerBatch {
        let p = self.ctx.parent;
        if is_parent(p, layer, specs) {
            return self.parent.keys().map(|&b| (b, (0.0, 0.0))).collect();
        }
        let r = Replacement {
            layers: group(p, layer, specs),
            specs: specs.to_vec(),
        };
        let i = self.todo.iter().position(|t| *t == r).expect("wanted");
        self.deltas[i].clone()
    }

    /// The parent's own subblocks of `specs`' kinds at `layer`: minus their no-ops' deltas.
    /// Unclamped, so that a no-op's cost (`share + delta(no-op)`) is exactly 0 whatever the noise.
    fn share(&self, layer: usize, specs: &[SubblockSpec]) -> PerBatch {
        let mut out: PerBatch = self.parent.keys().map(|&b| (b, (0.0, 0.0))).collect();
        for s in specs {
            for (b, (p, d)) in self.delta(layer, &[noop_of(s)]) {
                let e = out.entry(b).or_default();
                e.0 -= p;
                e.1 -= d;
            }
        }
        out
    }

    fn entry(&self, layer: usize, specs: &[SubblockSpec]) -> Result<Costs> {
        let mut c = analytic_counts(self.ctx, specs)?;
        let share = self.share(layer, specs);
        for (b, (p, d)) in self.delta(layer, specs) {
            let (sp, sd) = share[&b];
            // A time is never negative; a negative sum is timing noise larger than the block.
            c.prefill_ms.insert(b, (sp + p).max(0.0));
            c.decode_ms.insert(b, (sd + d).max(0.0));
        }
        Ok(c)
    }

    fn non_block(&self) -> Result<Costs> {
        let mut c = analytic_non_block(self.ctx)?;
        for (&b, &(p, d)) in &self.parent {
            c.prefill_ms.insert(b, p);
            c.decode_ms.insert(b, d);
        }
        let p = self.ctx.parent;
        for (l, layer) in p.layers.iter().enumerate() {
            let own = [
                SubblockSpec::Attention(layer.attention.clone()),
                SubblockSpec::Ffn(layer.ffn.clone()),
            ];
            // Each own subblock's entry is its share clamped at 0 (`entry`), so the same
            // clamped shares leave the parent's total exact.
            for kind in &own {
                for (b, (sp, sd)) in self.share(l, std::slice::from_ref(kind)) {
                    *c.prefill_ms.get_mut(&b).expect("same batches") -= sp.max(0.0);
                    *c.decode_ms.get_mut(&b).expect("same batches") -= sd.max(0.0);
                }
            }
        }
        // Shares summing past the whole parent are noise too: the embeddings and head cost
        // something, never less than nothing.
        for v in c.prefill_ms.values_mut().chain(c.decode_ms.values_mut()) {
            *v = v.max(0.0);
        }
        Ok(c)
    }
}

/// One request's (prefill ms, ms per decode step) at batch `b` of the deployment's workload:
/// `generation_len` decode steps after the prefill, as `Costs::runtime_ms` adds them up.
fn step_times(
    m: &dyn Served,
    b: usize,
    d: &puzzle_core::deploy::DeploymentProfile,
) -> Result<(f64, f64)> {
    let (p, t) = m.request(b, d.prefill_len, d.generation_len)?;
    Ok((p, (t - p) / d.generation_len as f64))
}

impl MeasuredCost {
    fn plan_for<'c, 'a>(
        ctx: &'c CostContext<'a>,
        entries: &[(usize, Vec<SubblockSpec>)],
        progress: &mut dyn Progress,
    ) -> Result<Plan<'c, 'a>> {
        let mut plan = Self::wanted(ctx, entries);
        plan.measure(progress)?;
        Ok(plan)
    }

    /// Every replacement a table of `entries` times, not yet measured.
    fn wanted<'c, 'a>(
        ctx: &'c CostContext<'a>,
        entries: &[(usize, Vec<SubblockSpec>)],
    ) -> Plan<'c, 'a> {
        let mut plan = Plan::new(ctx);
        for (l, specs) in entries {
            plan.want(*l, specs);
        }
        // The non-block part needs every layer's own shares.
        for (l, layer) in ctx.parent.layers.iter().enumerate() {
            plan.want(
                l,
                &[
                    SubblockSpec::Attention(layer.attention.clone()),
                    SubblockSpec::Ffn(layer.ffn.clone()),
                ],
            );
        }
        plan
    }
}

impl CostModel for MeasuredCost {
    fn name(&self) -> &'static str {
        "measured"
    }

    fn entry(&self, ctx: &CostContext, layer: usize, specs: &[SubblockSpec]) -> Result<Costs> {
        Self::plan_for(ctx, &[(layer, specs.to_vec())], &mut Silent)?.entry(layer, specs)
    }

    fn non_block(&self, ctx: &CostContext) -> Result<Costs> {
        Self::plan_for(ctx, &[], &mut Silent)?.non_block()
    }

    fn table(
        &self,
        ctx: &CostContext,
        entries: &[(usize, Vec<SubblockSpec>)],
        progress: &mut dyn Progress,
    ) -> Result<(Costs, Vec<Costs>)> {
        let plan = Self::plan_for(ctx, entries, progress)?;
        let costs = entries
            .iter()
            .map(|(l, s)| plan.entry(*l, s))
            .collect::<Result<_>>()?;
        Ok((plan.non_block()?, costs))
    }

    fn workload(
        &self,
        ctx: &CostContext,
        entries: &[(usize, Vec<SubblockSpec>)],
    ) -> Result<CostWorkload> {
        let todo = Self::wanted(ctx, entries).todo.len();
        // As `Plan::measure` runs: per chunk and batch size, a warm-up and ROUNDS timed rounds
        // of the parent and the chunk's models; a parent alone when nothing is replaced.
        let requests = if todo == 0 {
            ROUNDS
        } else {
            (ROUNDS + 1) * (todo + todo.div_ceil(CHUNK))
        };
        Ok(CostWorkload {
            requests_per_batch_size: requests,
            models: todo + 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use puzzle_core::burn::tensor::Device;
    use puzzle_core::deploy::{DeploymentProfile, resolve_hardware};
    use puzzle_core::engine::Engine;
    use puzzle_core::kinds::Dtype;
    use puzzle_core::spec::LlamaShape;
    use puzzle_core::weights::WeightSource;
    use std::sync::atomic::Ordering::SeqCst;

    /// Batch 1, 4 prompt + 3 generated tokens, f32 weights.
    fn deploy() -> DeploymentProfile {
        DeploymentProfile {
            batch_sizes: vec![1],
            prefill_len: 4,
            generation_len: 3,
            weight_dtype: Dtype::Fp32,
            ..Default::default()
        }
    }

    fn spec(layers: usize) -> ModelSpec {
        ModelSpec {
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            ..ModelSpec::uniform_llama(LlamaShape {
                hidden: 16,
                vocab: 32,
                heads: 2,
                head_dim: 8,
                kv_heads: 2,
                intermediate: 64,
                layers,
            })
        }
    }

    /// Models an engine has loaded so far, shared with its models (a drifting machine's clock).
    type Loads = std::sync::Arc<std::sync::atomic::AtomicUsize>;

    /// A request whose every phase takes the model's `clock` milliseconds; with `drift`, times
    /// 1.0, 1.4 or 1.8 by how many models the engine has loaded.
    struct Timed {
        ms: f64,
        drift: Option<Loads>,
        requests: Loads,
    }
    impl Served for Timed {
        fn request(&self, _b: usize, _p: usize, steps: usize) -> Result<(f64, f64)> {
            self.requests
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let k = self
                .drift
                .as_ref()
                .map_or(0, |l| l.load(std::sync::atomic::Ordering::SeqCst));
            let t = self.ms * (1.0 + 0.4 * (k % 3) as f64);
            Ok((t, t * (1 + steps) as f64))
        }
    }
    /// An engine's exact, known time of a model: 10 ms of overhead, 2 ms per attention plus
    /// 0.5 per KV head, 1 per linear attention, FFN width / 32 ms, 0.5 per linear FFN.
    fn clock(s: &ModelSpec) -> f64 {
        let mut t = 10.0;
        for l in &s.layers {
            t += match l.attention {
                AttentionSpec::Gqa { num_kv_heads, .. } => 2.0 + 0.5 * num_kv_heads as f64,
                AttentionSpec::Linear => 1.0,
                AttentionSpec::NoOp => 0.0,
            };
            t += match l.ffn {
                FfnSpec::SwiGlu {
                    intermediate_size, ..
                } => intermediate_size as f64 / 32.0,
                FfnSpec::Linear => 0.5,
                FfnSpec::NoOp => 0.0,
            };
        }
        t
    }
    /// An engine whose time of a model is the given function of its spec; with `drift`, one
    /// that runs everything slower after every few models loaded, as a shared machine does when
    /// a neighbour starts (the same model takes longer in a later chunk).
    struct ClockEngine {
        clock: fn(&ModelSpec) -> f64,
        drift: Option<Loads>,
        /// Models loaded and requests served, whatever the drift.
        loads: Loads,
        requests: Loads,
    }
    impl ClockEngine {
        fn steady(clock: fn(&ModelSpec) -> f64) -> Self {
            ClockEngine {
                clock,
                drift: None,
                loads: Loads::default(),
                requests: Loads::default(),
            }
        }
    }
    impl Engine for ClockEngine {
        fn kind(&self) -> puzzle_core::kinds::EngineKind {
            puzzle_core::kinds::EngineKind::Burn
        }
        fn describe(&self, _: &Device) -> String {
            "clockwork".into()
        }
        fn load(
            &self,
            spec: &ModelSpec,
            _: &dyn WeightSource,
            _: &DeploymentProfile,
            _: &Device,
        ) -> Result<Box<dyn Served>> {
            if let Some(l) = &self.drift {
                l.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Box::new(Timed {
                ms: (self.clock)(spec),
                drift: self.drift.clone(),
                requests: self.requests.clone(),
            }))
        }
    }

    #[test]
    fn block_sums_reproduce_an_additive_engine_exactly() {
        let parent = spec(3);
        let deploy = deploy();
        let hw = resolve_hardware("cpu-dev", std::path::Path::new(".")).unwrap();
        let ctx = CostContext {
            parent: &parent,
            deploy: &deploy,
            hardware: &hw,
            device: Device::flex(),
            engine: Ok(&ClockEngine::steady(clock)),
        };
        let kv1 = SubblockSpec::Attention(AttentionSpec::Gqa {
            num_kv_heads: 1,
            qkv_bias: false,
            o_bias: false,
            window: None,
        });
        let lin = SubblockSpec::Attention(AttentionSpec::Linear);
        let w32 = SubblockSpec::Ffn(FfnSpec::SwiGlu {
            intermediate_size: 32,
            bias: false,
        });
        let nof = SubblockSpec::Ffn(FfnSpec::NoOp);
        let entries: Vec<(usize, Vec<SubblockSpec>)> = (0..3)
            .flat_map(|l| {
                [kv1.clone(), lin.clone(), w32.clone(), nof.clone()].map(|s| (l, vec![s]))
            })
            .collect();
        let (nb, costs) = MeasuredCost.table(&ctx, &entries, &mut Silent).unwrap();
        // Child: layer 0 kv=1 + w32, layer 1 linear + parent FFN, layer 2 parent + no-op.
        let mut child = parent.clone();
        child.layers[0].attention = AttentionSpec::Gqa {
            num_kv_heads: 1,
            qkv_bias: false,
            o_bias: false,
            window: None,
        };
        child.layers[0].ffn = FfnSpec::SwiGlu {
            intermediate_size: 32,
            bias: false,
        };
        child.layers[1].attention = AttentionSpec::Linear;
        child.layers[2].ffn = FfnSpec::NoOp;
        let find = |l: usize, s: &SubblockSpec| {
            let i = entries
                .iter()
                .position(|(el, es)| *el == l && es[0] == *s)
                .unwrap();
            costs[i].decode_ms[&1]
        };
        let parent_attn = MeasuredCost
            .entry(&ctx, 1, &[SubblockSpec::Ffn(parent.layers[1].ffn.clone())])
            .unwrap();
        let own_attn = MeasuredCost
            .entry(
                &ctx,
                2,
                &[SubblockSpec::Attention(parent.layers[2].attention.clone())],
            )
            .unwrap();
        let predicted = nb.decode_ms[&1]
            + find(0, &kv1)
            + find(0, &w32)
            + find(1, &lin)
            + parent_attn.decode_ms[&1]
            + own_attn.decode_ms[&1]
            + find(2, &nof);
        assert!(
            (predicted - clock(&child)).abs() < 1e-9,
            "{predicted} vs {}",
            clock(&child)
        );
        // The parent's own entries and the non-block part add up to the parent.
        let own: f64 = (0..3)
            .map(|l| {
                MeasuredCost
                    .entry(
                        &ctx,
                        l,
                        &[
                            SubblockSpec::Attention(parent.layers[l].attention.clone()),
                            SubblockSpec::Ffn(parent.layers[l].ffn.clone()),
                        ],
                    )
                    .unwrap()
                    .decode_ms[&1]
            })
            .sum();
        assert!((nb.decode_ms[&1] + own - clock(&parent)).abs() < 1e-9);
        // A no-op costs nothing; a parent attention 2 + 0.5 x 2 = 3 ms.
        assert_eq!(find(1, &nof), 0.0);
        assert!((own_attn.decode_ms[&1] - 3.0).abs() < 1e-9);
        assert!((nb.decode_ms[&1] - 10.0).abs() < 1e-9);
    }

    #[test]
    fn replacements_are_timed_in_half_the_layers_of_the_same_shape() {
        let mut p = spec(4);
        p.layers[1].ffn = FfnSpec::SwiGlu {
            intermediate_size: 32,
            bias: false,
        };
        let f = [SubblockSpec::Ffn(FfnSpec::NoOp)];
        assert_eq!(group(&p, 0, &f), vec![0, 2]);
        assert_eq!(group(&p, 3, &f), vec![0, 2]);
        assert_eq!(group(&p, 1, &f), vec![1]);
        // A no-op attention in half the layers leaves the rest their KV cache.
        let a = [SubblockSpec::Attention(AttentionSpec::NoOp)];
        assert_eq!(group(&p, 1, &a), vec![1, 2]);
        assert_eq!(group(&p, 0, &a), vec![1, 2]);
        let lin = [SubblockSpec::Attention(AttentionSpec::Linear)];
        assert_eq!(group(&p, 1, &lin), vec![1, 2]);
        let kv1 = [SubblockSpec::Attention(AttentionSpec::Gqa {
            num_kv_heads: 1,
            qkv_bias: false,
            o_bias: false,
            window: None,
        })];
        assert_eq!(group(&p, 1, &kv1), vec![1, 2]);
        assert_eq!(group(&p, 3, &kv1), vec![1, 2]);
    }

    /// Noise can make a no-op look slower than the block it removes: its cost stays exactly 0,
    /// no cost goes negative, and the parent still adds up.
    #[test]
    fn a_no_op_timed_slower_than_its_block_costs_nothing_and_nothing_goes_negative() {
        // As `clock`, but a no-op FFN "takes" 5 ms, more than the parent's 2 ms FFN.
        fn slow_noop(s: &ModelSpec) -> f64 {
            clock(s)
                + 5.0
                    * s.layers
                        .iter()
                        .filter(|l| matches!(l.ffn, FfnSpec::NoOp))
                        .count() as f64
        }
        let parent = spec(3);
        let deploy = deploy();
        let hw = resolve_hardware("cpu-dev", std::path::Path::new(".")).unwrap();
        let engine = ClockEngine::steady(slow_noop);
        let ctx = CostContext {
            parent: &parent,
            deploy: &deploy,
            hardware: &hw,
            device: Device::flex(),
            engine: Ok(&engine),
        };
        let own_ffn = SubblockSpec::Ffn(parent.layers[0].ffn.clone());
        let own_attn = SubblockSpec::Attention(parent.layers[0].attention.clone());
        let w32 = SubblockSpec::Ffn(FfnSpec::SwiGlu {
            intermediate_size: 32,
            bias: false,
        });
        let entries: Vec<(usize, Vec<SubblockSpec>)> = (0..3)
            .flat_map(|l| {
                [
                    SubblockSpec::Ffn(FfnSpec::NoOp),
                    w32.clone(),
                    own_ffn.clone(),
                    own_attn.clone(),
                ]
                .map(|s| (l, vec![s]))
            })
            .collect();
        let (nb, costs) = MeasuredCost.table(&ctx, &entries, &mut Silent).unwrap();
        for ((l, s), c) in entries.iter().zip(&costs) {
            let ms = c.decode_ms[&1];
            assert!(ms >= 0.0, "layer {l} {s:?}: {ms}");
            if s[0] == SubblockSpec::Ffn(FfnSpec::NoOp) {
                assert_eq!(ms, 0.0, "a no-op costs nothing");
            }
        }
        let own: f64 = entries
            .iter()
            .zip(&costs)
            .filter(|((_, s), _)| s[0] == own_ffn || s[0] == own_attn)
            .map(|(_, c)| c.decode_ms[&1])
            .sum();
        let total = nb.decode_ms[&1] + own;
        assert!((total - slow_noop(&parent)).abs() < 1e-9, "{total}");
    }

    /// `puzzle plan`'s count of what a table asks of the engine is what measuring it does.
    #[test]
    fn the_planned_workload_is_what_the_table_loads_and_times() {
        let parent = spec(3);
        let deploy = DeploymentProfile {
            batch_sizes: vec![1, 4],
            ..deploy()
        };
        let hw = resolve_hardware("cpu-dev", std::path::Path::new(".")).unwrap();
        let engine = ClockEngine::steady(clock);
        let ctx = CostContext {
            parent: &parent,
            deploy: &deploy,
            hardware: &hw,
            device: Device::flex(),
            engine: Ok(&engine),
        };
        let subs = [
            SubblockSpec::Attention(AttentionSpec::Linear),
            SubblockSpec::Ffn(FfnSpec::NoOp),
            SubblockSpec::Ffn(FfnSpec::SwiGlu {
                intermediate_size: 32,
                bias: false,
            }),
        ];
        for n_layers in [0, 1, 3] {
            let entries: Vec<(usize, Vec<SubblockSpec>)> = (0..n_layers)
                .flat_map(|l| subs.clone().map(|s| (l, vec![s])))
                .collect();
            let (loads, requests) = (engine.loads.clone(), engine.requests.clone());
            let (l0, r0) = (loads.load(SeqCst), requests.load(SeqCst));
            let planned = MeasuredCost.workload(&ctx, &entries).unwrap();
            assert_eq!((loads.load(SeqCst), requests.load(SeqCst)), (l0, r0));
            MeasuredCost.table(&ctx, &entries, &mut Silent).unwrap();
            assert_eq!(loads.load(SeqCst) - l0, planned.models, "{n_layers} layers");
            assert_eq!(
                requests.load(SeqCst) - r0,
                planned.requests_per_batch_size * deploy.batch_sizes.len(),
                "{n_layers} layers"
            );
        }
    }

    /// Chunks timed at different machine speeds still give block sums whose speed-ups are the
    /// engine's (differences in ms would mix the speeds: 1.3% off here).
    #[test]
    fn a_machine_that_slows_down_between_chunks_leaves_speed_ups_exact() {
        let parent = spec(4);
        let deploy = deploy();
        let hw = resolve_hardware("cpu-dev", std::path::Path::new(".")).unwrap();
        let engine = ClockEngine {
            drift: Some(Loads::default()),
            ..ClockEngine::steady(clock)
        };
        let ctx = CostContext {
            parent: &parent,
            deploy: &deploy,
            hardware: &hw,
            device: Device::flex(),
            engine: Ok(&engine),
        };
        let kv1 = AttentionSpec::Gqa {
            num_kv_heads: 1,
            qkv_bias: false,
            o_bias: false,
            window: None,
        };
        let w32 = FfnSpec::SwiGlu {
            intermediate_size: 32,
            bias: false,
        };
        let subs = [
            SubblockSpec::Attention(kv1.clone()),
            SubblockSpec::Attention(AttentionSpec::Linear),
            SubblockSpec::Ffn(w32.clone()),
            SubblockSpec::Ffn(FfnSpec::Linear),
        ];
        let entries: Vec<(usize, Vec<SubblockSpec>)> = (0..4)
            .flat_map(|l| subs.clone().map(|s| (l, vec![s])))
            .chain((0..4).flat_map(|l| {
                let own = &parent.layers[l];
                [
                    (l, vec![SubblockSpec::Attention(own.attention.clone())]),
                    (l, vec![SubblockSpec::Ffn(own.ffn.clone())]),
                ]
            }))
            .collect();
        let (nb, costs) = MeasuredCost.table(&ctx, &entries, &mut Silent).unwrap();
        let cost = |l: usize, s: SubblockSpec| {
            let i = entries
                .iter()
                .position(|(el, es)| *el == l && es[0] == s)
                .unwrap();
            costs[i].decode_ms[&1]
        };
        let predict = |m: &ModelSpec| {
            nb.decode_ms[&1]
                + (0..4)
                    .map(|l| {
                        cost(l, SubblockSpec::Attention(m.layers[l].attention.clone()))
                            + cost(l, SubblockSpec::Ffn(m.layers[l].ffn.clone()))
                    })
                    .sum::<f64>()
        };
        let mut child = parent.clone();
        child.layers[0].attention = kv1;
        child.layers[1].attention = AttentionSpec::Linear;
        child.layers[1].ffn = w32;
        child.layers[3].ffn = FfnSpec::Linear;
        let predicted = predict(&parent) / predict(&child);
        let exact = clock(&parent) / clock(&child);
        assert!(
            (predicted / exact - 1.0).abs() < 1e-9,
            "predicted speed-up {predicted}, engine's {exact}"
        );
    }
}
