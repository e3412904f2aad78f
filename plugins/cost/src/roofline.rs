//! Roofline latencies from a hardware profile (see the crate docs for what it ignores).

use puzzle_core::cost::{CostContext, CostModel, Costs, analytic_counts, analytic_non_block};
use puzzle_core::error::Result;
use puzzle_core::spec::{AttentionSpec, FfnSpec};
use puzzle_core::variants::SubblockSpec;

/// The roofline model.
pub struct RooflineCost;

/// One op group: FLOPs and bytes moved.
#[derive(Clone, Copy, Debug, Default)]
pub struct Work {
    pub flops: f64,
    pub bytes: f64,
}

struct Rates {
    flops: f64,
    bytes_per_s: f64,
    wb: f64,
    ab: f64,
    kb: f64,
}

impl Rates {
    fn of(ctx: &CostContext) -> Result<Rates> {
        Ok(Rates {
            flops: ctx.hardware.peak_flops(ctx.deploy.activation_dtype)?,
            bytes_per_s: ctx.hardware.memory_bandwidth_gbs * 1e9,
            wb: ctx.deploy.weight_dtype.bytes(),
            ab: ctx.deploy.activation_dtype.bytes(),
            kb: ctx.deploy.kv_dtype.bytes(),
        })
    }

    fn ms(&self, groups: &[Work]) -> f64 {
        groups
            .iter()
            .map(|w| (w.flops / self.flops).max(w.bytes / self.bytes_per_s))
            .sum::<f64>()
            * 1e3
    }
}

/// A GEMM of `tokens` rows through a `[inp, out]` weight.
fn gemm(tokens: f64, inp: f64, out: f64, r: &Rates) -> Work {
    Work {
        flops: 2.0 * tokens * inp * out,
        bytes: inp * out * r.wb + tokens * (inp + out) * r.ab,
    }
}

fn norm(tokens: f64, h: f64, r: &Rates) -> Work {
    Work {
        flops: 4.0 * tokens * h,
        bytes: 2.0 * tokens * h * r.ab + h * r.wb,
    }
}

/// Op groups of a subblock for `b` sequences of `new` tokens after `past` cached ones.
fn groups(
    ctx: &CostContext,
    s: &SubblockSpec,
    b: f64,
    past: f64,
    new: f64,
    r: &Rates,
) -> Vec<Work> {
    let p = ctx.parent;
    let h = p.hidden_size as f64;
    let tokens = b * new;
    let qd = (p.num_attention_heads * p.head_dim) as f64;
    match s {
        SubblockSpec::Attention(AttentionSpec::Gqa {
            num_kv_heads,
            window,
            ..
        }) => {
            let kvd = (*num_kv_heads * p.head_dim) as f64;
            // Positions attended per new token, summed (causal within the new tokens; a
            // sliding window caps both what is attended and what the cache holds).
            let w = window.map_or(f64::INFINITY, |w| w as f64);
            let attended: f64 = (0..new as usize)
                .map(|i| (past + i as f64 + 1.0).min(w))
                .sum();
            let past = past.min(w);
            vec![
                norm(tokens, h, r),
                gemm(tokens, h, qd + 2.0 * kvd, r),
                Work {
                    flops: 4.0 * b * qd * attended,
                    // Read the cache (past) and write the new keys/values.
                    bytes: b * (past + new) * 2.0 * kvd * r.kb + 2.0 * tokens * qd * r.ab,
                },
                gemm(tokens, qd, h, r),
            ]
        }
        SubblockSpec::Attention(AttentionSpec::Linear) | SubblockSpec::Ffn(FfnSpec::Linear) => {
            vec![norm(tokens, h, r), gemm(tokens, h, h, r)]
        }
        SubblockSpec::Ffn(FfnSpec::SwiGlu {
            intermediate_size, ..
        }) => {
            let i = *intermediate_size as f64;
            vec![
                norm(tokens, h, r),
                gemm(tokens, h, 2.0 * i, r),
                gemm(tokens, i, h, r),
            ]
        }
        SubblockSpec::Attention(AttentionSpec::NoOp) | SubblockSpec::Ffn(FfnSpec::NoOp) => vec![],
    }
}

impl CostModel for RooflineCost {
    fn name(&self) -> &'static str {
        "roofline"
    }

    fn entry(&self, ctx: &CostContext, _layer: usize, specs: &[SubblockSpec]) -> Result<Costs> {
        let mut c = analytic_counts(ctx, specs)?;
        let r = Rates::of(ctx)?;
        let (pl, mean) = (
            ctx.deploy.prefill_len as f64,
            ctx.deploy.mean_decode_context() as f64,
        );
        for &b in &ctx.deploy.batch_sizes {
            let bf = b as f64;
            let pre: Vec<Work> = specs
                .iter()
                .flat_map(|s| groups(ctx, s, bf, 0.0, pl, &r))
                .collect();
            let dec: Vec<Work> = specs
                .iter()
                .flat_map(|s| groups(ctx, s, bf, mean, 1.0, &r))
                .collect();
            c.prefill_ms.insert(b, r.ms(&pre));
            c.decode_ms.insert(b, r.ms(&dec));
        }
        Ok(c)
    }

    fn non_block(&self, ctx: &CostContext) -> Result<Costs> {
        let mut c = analytic_non_block(ctx)?;
        let r = Rates::of(ctx)?;
        let (h, v) = (ctx.parent.hidden_size as f64, ctx.parent.vocab_size as f64);
        for &b in &ctx.deploy.batch_sizes {
            let bf = b as f64;
            let embed = |tokens: f64| Work {
                flops: 0.0,
                bytes: tokens * h * (r.wb + r.ab),
            };
            // The head runs on the last position of each sequence only.
            let pre = [
                embed(bf * ctx.deploy.prefill_len as f64),
                norm(bf, h, &r),
                gemm(bf, h, v, &r),
            ];
            let dec = [embed(bf), norm(bf, h, &r), gemm(bf, h, v, &r)];
            c.prefill_ms.insert(b, r.ms(&pre));
            c.decode_ms.insert(b, r.ms(&dec));
        }
        Ok(c)
    }
}
