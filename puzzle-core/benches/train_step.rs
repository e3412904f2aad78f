//! Where a training step of the tiny parent's architecture spends its time (forward, backward,
//! optimiser), with model-FLOPs utilisation against the GEMM rate measured in the same run.
//!
//! Run: `cargo bench -p puzzle-core --bench train_step`

mod common;

use std::time::Instant;

use common::{gemm_rate, tiny_parent_spec};

use puzzle_core::burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use puzzle_core::nn::Decoder;
use puzzle_core::train::init::random_weights;
use puzzle_core::train::loss::cross_entropy;
use puzzle_core::train::optim::{AdamW, AdamWConfig};

fn main() {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let spec = tiny_parent_spec();
    let (b, t) = (16usize, 256usize);
    let gemm = gemm_rate(&device);
    let mut model = Decoder::load(&spec, &random_weights(&spec, 0.02, 1), &ad).unwrap();
    let mut opt = AdamW::new(AdamWConfig::default());
    let ids: Vec<i64> = (0..b * (t + 1))
        .map(|i| ((i * 7919) % 4096) as i64)
        .collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t + 1]), &ad);
    let (mut f, mut bw, mut o) = (vec![], vec![], vec![]);
    for step in 0..6 {
        let t0 = Instant::now();
        let logits = model.forward(ids.clone().narrow(1, 0, t));
        let loss = cross_entropy(logits, ids.clone().narrow(1, 1, t));
        let _ = loss.clone().into_scalar::<f32>();
        let t1 = Instant::now();
        let grads = loss.backward();
        let t2 = Instant::now();
        model = opt.step(model, &grads, 1e-3).0;
        let _ = model
            .embed_tokens
            .val()
            .inner()
            .slice([0..1, 0..1])
            .into_data();
        let t3 = Instant::now();
        if step > 0 {
            f.push((t1 - t0).as_secs_f64());
            bw.push((t2 - t1).as_secs_f64());
            o.push((t3 - t2).as_secs_f64());
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (f, bw, o) = (mean(&f), mean(&bw), mean(&o));
    let total = f + bw + o;
    let flops = 3.0 * spec.forward_flops(b, 0, t);
    println!(
        "# training step, tiny-parent architecture ({} params), batch {b} x {t}",
        spec.num_params()
    );
    println!("f32 GEMM 1024^3: {gemm:.1} GFLOP/s");
    println!("forward  {:>7.1} ms ({:.0}%)", f * 1e3, 100.0 * f / total);
    println!("backward {:>7.1} ms ({:.0}%)", bw * 1e3, 100.0 * bw / total);
    println!("AdamW    {:>7.1} ms ({:.0}%)", o * 1e3, 100.0 * o / total);
    println!(
        "step {:.1} ms: {:.0} tokens/s, {:.1} GFLOP/s, MFU {:.1}%",
        total * 1e3,
        (b * t) as f64 / total,
        flops / total / 1e9,
        100.0 * flops / total / 1e9 / gemm
    );
    // Where the time goes: each piece forward and backward alone, one layer's worth.
    {
        use puzzle_core::nn::Subblock;
        let x = Tensor::<3>::random([b, t, 256], Distribution::Default, &ad).require_grad();
        let ctx = model.context(b, 0, t, &[]);
        let layer = &model.layers[0];
        let time = |name: &str, f: &dyn Fn() -> Tensor<3>| {
            let _ = f().sum().backward();
            let t0 = Instant::now();
            let y = f();
            let _ = y.clone().slice([0..1, 0..1, 0..1]).into_data();
            let t1 = Instant::now();
            let _ = y.sum().backward();
            println!(
                "{name:>10}: fwd {:.1} ms, bwd {:.1} ms",
                (t1 - t0).as_secs_f64() * 1e3,
                t1.elapsed().as_secs_f64() * 1e3
            );
        };
        time("attn", &|| layer.attention.forward(x.clone(), &ctx, None));
        time("ffn", &|| layer.ffn.forward(x.clone(), &ctx, None));
        time("head", &|| model.logits(x.clone()));
        time("norm", &|| model.final_norm(x.clone()));
        time("rope", &|| {
            let q = x.clone().reshape([b, t, 8, 32]).swap_dims(1, 2);
            ctx.rope.apply(q).swap_dims(1, 2).reshape([b, t, 256])
        });
        let q = Tensor::<4>::random([b, 8, t, 32], Distribution::Default, &ad).require_grad();
        let k = Tensor::<4>::random([b, 4, t, 32], Distribution::Default, &ad).require_grad();
        time("sdpa", &|| {
            puzzle_core::nn::primitives::causal_attention(
                q.clone(),
                k.clone(),
                k.clone(),
                None,
                None,
            )
            .swap_dims(1, 2)
            .reshape([b, t, 256])
        });
        let logits = Tensor::<3>::random([b, t, 4096], Distribution::Default, &ad).require_grad();
        let tg = ids.clone().narrow(1, 1, t);
        let t0 = Instant::now();
        let l = cross_entropy(logits.clone(), tg.clone());
        let _ = l.clone().into_scalar::<f32>();
        let t1 = Instant::now();
        let _ = l.backward();
        println!(
            "{:>10}: fwd {:.1} ms, bwd {:.1} ms",
            "xent",
            (t1 - t0).as_secs_f64() * 1e3,
            t1.elapsed().as_secs_f64() * 1e3
        );
    }
}
