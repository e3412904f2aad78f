//! Latencies timed on the running device.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use puzzle_core::burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use puzzle_core::cost::{CostContext, CostModel, Costs, analytic_counts, analytic_non_block};
use puzzle_core::error::Result;
use puzzle_core::nn::{ForwardCtx, LayerKv, RopeTables, Subblock as _};
use puzzle_core::spec::ModelSpec;
use puzzle_core::train::init::normal;
use puzzle_core::variants::{Subblock, SubblockSpec, build_subblock};
use puzzle_core::weights::{HostTensor, MemoryWeights};
use rand::{SeedableRng, rngs::StdRng};

/// The measured model. Results are cached per distinct subblock shape within a process.
pub struct MeasuredCost;

/// Copies of a subblock in the timed stack: enough that per-call overhead is amortised and the
/// weights are not all cache-resident, as in a real model.
const STACK: usize = 4;
const WARMUP: usize = 2;
const REPEATS: usize = 7;

/// Per batch size: (batch, ms).
type Timings = Vec<(usize, f64)>;

static CACHE: Mutex<Option<HashMap<String, (Timings, Timings)>>> = Mutex::new(None);

fn random_weights(parent: &ModelSpec, s: &SubblockSpec, seed: u64) -> MemoryWeights {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut w = MemoryWeights::new("timing weights");
    for (name, shape) in s.tensor_shapes(parent) {
        let n: usize = shape.iter().product();
        let data = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else {
            (0..n).map(|_| normal(&mut rng) * 0.02).collect()
        };
        w.insert(name, HostTensor::new(shape, data));
    }
    w
}

fn sync(t: Tensor<3>) {
    // Reading one element forces the computation to complete.
    let _ = t.slice([0..1, 0..1, 0..1]).into_data();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ctx_for(parent: &ModelSpec, b: usize, past: usize, new: usize, device: &Device) -> ForwardCtx {
    let inv = parent.rope.inv_freq(parent.head_dim);
    let positions = vec![(past..past + new).collect::<Vec<_>>()];
    let _ = b;
    ForwardCtx {
        rope: RopeTables::new(&inv, &positions, device),
        key_mask: None,
    }
}

/// Median milliseconds of one pass through the stack, divided by its depth.
fn time_stack(stack: &[Vec<Subblock>], run: &dyn Fn(&[Subblock]) -> Tensor<3>) -> f64 {
    let go = || {
        let t0 = Instant::now();
        for copy in stack {
            sync(run(copy));
        }
        t0.elapsed().as_secs_f64() * 1e3 / stack.len() as f64
    };
    for _ in 0..WARMUP {
        go();
    }
    median((0..REPEATS).map(|_| go()).collect())
}

fn forward(subs: &[Subblock], x: Tensor<3>, ctx: &ForwardCtx, kv: Option<&LayerKv>) -> Tensor<3> {
    let mut x = x;
    for s in subs {
        x = match s {
            Subblock::Attention(a) => {
                let mut cache = kv.cloned();
                a.forward(x, ctx, cache.as_mut())
            }
            Subblock::Ffn(f) => f.forward(x, ctx, None),
        };
    }
    x
}

impl CostModel for MeasuredCost {
    fn name(&self) -> &'static str {
        "measured"
    }

    fn entry(&self, ctx: &CostContext, layer: usize, specs: &[SubblockSpec]) -> Result<Costs> {
        let mut c = analytic_counts(ctx, specs)?;
        let key = format!("{:?}|{:?}|{:?}", specs, ctx.deploy, ctx.parent.hidden_size);
        if let Some((pre, dec)) = CACHE
            .lock()
            .expect("cache lock")
            .get_or_insert_with(HashMap::new)
            .get(&key)
        {
            c.prefill_ms = pre.iter().copied().collect();
            c.decode_ms = dec.iter().copied().collect();
            return Ok(c);
        }
        let p = ctx.parent;
        let d = &ctx.device;
        let stack: Vec<Vec<Subblock>> = (0..STACK)
            .map(|i| {
                specs
                    .iter()
                    .enumerate()
                    .map(|(j, s)| {
                        build_subblock(p, s, layer, &random_weights(p, s, (i * 7 + j) as u64), d)
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        let kv_heads = specs.iter().find_map(|s| match s {
            SubblockSpec::Attention(puzzle_core::spec::AttentionSpec::Gqa {
                num_kv_heads, ..
            }) => Some(*num_kv_heads),
            _ => None,
        });
        let (pl, mean) = (ctx.deploy.prefill_len, ctx.deploy.mean_decode_context());
        let mut pre = Vec::new();
        let mut dec = Vec::new();
        for &b in &ctx.deploy.batch_sizes {
            let x = Tensor::<3>::random([b, pl, p.hidden_size], Distribution::Normal(0.0, 1.0), d);
            let c0 = ctx_for(p, b, 0, pl, d);
            pre.push((
                b,
                time_stack(&stack, &|s| {
                    forward(s, x.clone(), &c0, Some(&LayerKv::default()))
                }),
            ));
            let x1 = Tensor::<3>::random([b, 1, p.hidden_size], Distribution::Normal(0.0, 1.0), d);
            let c1 = ctx_for(p, b, mean, 1, d);
            let cache = kv_heads.map(|k| LayerKv {
                k: Some(Tensor::random(
                    [b, k, mean, p.head_dim],
                    Distribution::Default,
                    d,
                )),
                v: Some(Tensor::random(
                    [b, k, mean, p.head_dim],
                    Distribution::Default,
                    d,
                )),
            });
            dec.push((
                b,
                time_stack(&stack, &|s| forward(s, x1.clone(), &c1, cache.as_ref())),
            ));
        }
        CACHE
            .lock()
            .expect("cache lock")
            .get_or_insert_with(HashMap::new)
            .insert(key, (pre.clone(), dec.clone()));
        c.prefill_ms = pre.into_iter().collect();
        c.decode_ms = dec.into_iter().collect();
        Ok(c)
    }

    fn non_block(&self, ctx: &CostContext) -> Result<Costs> {
        let mut c = analytic_non_block(ctx)?;
        let p = ctx.parent;
        let d = &ctx.device;
        // Embedding table and head of the parent's shape, random values.
        let embed = Tensor::<2>::random(
            [p.vocab_size, p.hidden_size],
            Distribution::Normal(0.0, 0.02),
            d,
        );
        let head = (!p.tie_word_embeddings).then(|| {
            Tensor::<2>::random(
                [p.hidden_size, p.vocab_size],
                Distribution::Normal(0.0, 0.02),
                d,
            )
        });
        let norm_w = Tensor::<1>::ones([p.hidden_size], d);
        for &b in &ctx.deploy.batch_sizes {
            for (tokens, map) in [
                (ctx.deploy.prefill_len, &mut c.prefill_ms),
                (1, &mut c.decode_ms),
            ] {
                let ids: Vec<i64> = (0..b * tokens)
                    .map(|i| (i * 7919 % p.vocab_size) as i64)
                    .collect();
                let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, tokens]), d);
                let inv = p.rope.inv_freq(p.head_dim);
                let start = if tokens == 1 {
                    ctx.deploy.mean_decode_context()
                } else {
                    0
                };
                let run = || {
                    // Per-step work outside the blocks: rotary tables for the new positions.
                    let rope = RopeTables::new(&inv, &[(start..start + tokens).collect()], d);
                    let _ = rope.cos.slice([0..1, 0..1, 0..1, 0..1]).into_data();
                    let x = embed
                        .clone()
                        .select(0, ids.clone().reshape([b * tokens]))
                        .reshape([b, tokens, p.hidden_size]);
                    // The head runs on the last position of each sequence (as generation does).
                    let last = x.narrow(1, tokens - 1, 1).reshape([b, p.hidden_size]);
                    let var = last.clone().square().mean_dim(1);
                    let h = last / (var + 1e-5).sqrt() * norm_w.clone().unsqueeze::<2>();
                    let logits = match &head {
                        Some(w) => h.matmul(w.clone()),
                        None => h.matmul(embed.clone().transpose()),
                    };
                    // Greedy sampling on the host, as `generate` does.
                    let _ = logits.argmax(1).into_data();
                };
                let times: Vec<f64> = (0..WARMUP + REPEATS)
                    .map(|_| {
                        let t0 = Instant::now();
                        run();
                        t0.elapsed().as_secs_f64() * 1e3
                    })
                    .skip(WARMUP)
                    .collect();
                map.insert(b, median(times));
            }
        }
        Ok(c)
    }
}
