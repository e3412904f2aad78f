//! Every family's `config.json` parser (llama, both transformers dialects; decilm; qwen2),
//! then what a run computes from the spec: parameter counts, tensor shapes, FLOPs, KV size.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use puzzle_fuzz::bounded;
use puzzle_types::family::{family_for, static_families};

fuzz_target!(|data: &[u8]| bounded(data, || {
    puzzle_llama::link();
    puzzle_qwen2::link();
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let path = Path::new("config.json");
    let families = static_families();
    // Every family, not just the one that claims it: a parser must refuse what it cannot read.
    let claimed = family_for(&families, &v, path)
        .ok()
        .map(|f| f.name().to_string());
    for r in families.iter() {
        let Ok(spec) = r.item.parse_config(&v, path) else {
            continue;
        };
        let _ = (
            claimed.as_deref(),
            spec.num_params(),
            spec.non_block_params(),
        );
        let _ = spec.kv_elements_per_token();
        let _ = spec.matmul_macs_per_token();
        let _ = spec.forward_flops(8, 128, 64);
        let _ = spec.tensor_shapes();
        for layer in 0..spec.layers.len() {
            let _ = spec.kv_heads(layer);
        }
    }
}));
