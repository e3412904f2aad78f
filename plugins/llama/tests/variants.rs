//! Training-free inits on the tiny HF fixtures: the parent's own variants reproduce the parent
//! subblock exactly; the linear inits equal the matrix products; pooling averages heads.

use std::path::Path;

use puzzle_core::burn::tensor::Device;
use puzzle_core::nn::ids_tensor;
use puzzle_core::score::swapped;
use puzzle_core::variant::VariantId;
use puzzle_core::variants::{LayerCalibration, VariantCatalog, build_subblock, layer_weights};
use puzzle_core::weights::{HostTensor, SafetensorsWeights, WeightSource};
use puzzle_llama_ops::LlamaVariants;

fn fixture() -> (puzzle_core::spec::ModelSpec, SafetensorsWeights) {
    puzzle_llama::link();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hf/tiny-llama");
    (
        puzzle_core::Plugins::builtin().read_spec(&dir).unwrap(),
        SafetensorsWeights::open(&dir).unwrap(),
    )
}

fn naive_matmul(a: &HostTensor, b: &HostTensor) -> Vec<f64> {
    let (m, k, n) = (a.shape[0], a.shape[1], b.shape[1]);
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|p| a.data[i * k + p] as f64 * b.data[p * n + j] as f64)
                .sum();
        }
    }
    out
}

#[test]
fn parent_variants_reproduce_the_parent_subblocks_exactly() {
    let (spec, w) = fixture();
    let device = Device::flex();
    let calib = LayerCalibration {
        ffn_abs_mean: Some(vec![1.0; 176]),
        tokens: 1,
    };
    for layer in 0..spec.layers.len() {
        let parent_layer = layer_weights(&w, layer).unwrap();
        for id in ["attn:gqa(kv=2)", "ffn:width(176)"] {
            let v: VariantId = id.parse().unwrap();
            let init = LlamaVariants
                .init(&v, &spec, layer, &parent_layer, &calib)
                .unwrap();
            // Same tensors, bit for bit.
            for (name, t) in &init.weights.tensors {
                assert_eq!(
                    t,
                    &parent_layer.read(name).unwrap(),
                    "layer {layer} {id} {name}"
                );
            }
            // Same function, against an independent path: the parent decoder loaded from the
            // whole checkpoint, and the same decoder with this layer's subblock rebuilt from the
            // init's tensors and spec, give bit-identical logits.
            let built = build_subblock(&spec, &init.spec, layer, &init.weights, &device).unwrap();
            let dec = puzzle_core::nn::Decoder::load(&spec, &w, &device).unwrap();
            let child = swapped(&dec, layer, vec![built]);
            let ids = ids_tensor(&[vec![3, 17, 42, 5, 99, 250, 7]], &device);
            assert_eq!(
                child.forward(ids.clone()).to_data(),
                dec.forward(ids).to_data(),
                "layer {layer} {id}"
            );
        }
    }
}

#[test]
fn linear_inits_equal_the_matrix_products() {
    let (spec, w) = fixture();
    let calib = LayerCalibration::default();
    let l = layer_weights(&w, 1).unwrap();
    let ffn = LlamaVariants
        .init(&"ffn:linear".parse().unwrap(), &spec, 1, &l, &calib)
        .unwrap();
    let want = naive_matmul(
        &l.read("mlp.down_proj.weight").unwrap(),
        &l.read("mlp.up_proj.weight").unwrap(),
    );
    let got = ffn.weights.read("mlp.linear_mlp.weight").unwrap();
    assert_eq!(got.shape, vec![64, 64]);
    for (g, w) in got.data.iter().zip(&want) {
        assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
    }
    // Attention: W_o (64 x 64, 4 heads of 16) times V (2 KV heads of 16 rows) repeated per group.
    let attn = LlamaVariants
        .init(&"attn:linear".parse().unwrap(), &spec, 1, &l, &calib)
        .unwrap();
    let v = l.read("self_attn.v_proj.weight").unwrap();
    let mut v_exp = Vec::new();
    for qh in 0..4 {
        let kvh = qh / 2;
        v_exp.extend_from_slice(&v.data[kvh * 16 * 64..(kvh + 1) * 16 * 64]);
    }
    let want = naive_matmul(
        &l.read("self_attn.o_proj.weight").unwrap(),
        &HostTensor::new(vec![64, 64], v_exp),
    );
    for (g, w) in attn
        .weights
        .read("self_attn.linear_attn.weight")
        .unwrap()
        .data
        .iter()
        .zip(&want)
    {
        assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
    }
    // Norms are kept; no-ops have no tensors.
    assert_eq!(
        attn.weights.read("input_layernorm.weight").unwrap(),
        l.read("input_layernorm.weight").unwrap()
    );
    let noop = LlamaVariants
        .init(&"ffn:noop".parse().unwrap(), &spec, 1, &l, &calib)
        .unwrap();
    assert!(noop.weights.tensors.is_empty());
}

#[test]
fn kv_pooling_averages_the_merged_heads() {
    let (spec, w) = fixture();
    let l = layer_weights(&w, 0).unwrap();
    let init = LlamaVariants
        .init(
            &"attn:gqa(kv=1)".parse().unwrap(),
            &spec,
            0,
            &l,
            &LayerCalibration::default(),
        )
        .unwrap();
    let k = l.read("self_attn.k_proj.weight").unwrap();
    let got = init.weights.read("self_attn.k_proj.weight").unwrap();
    assert_eq!(got.shape, vec![16, 64]);
    for i in 0..16 * 64 {
        assert!((got.data[i] - (k.data[i] + k.data[16 * 64 + i]) / 2.0).abs() < 1e-7);
    }
    // Widths and unknown variants are refused with the reason.
    let e = LlamaVariants
        .init(
            &"ffn:width(500)".parse().unwrap(),
            &spec,
            0,
            &l,
            &LayerCalibration::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("wider than the parent"), "{e}");
    let e = LlamaVariants
        .init(
            &"ffn:width(100)".parse().unwrap(),
            &spec,
            0,
            &l,
            &LayerCalibration::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("calibration"), "{e}");
    let e = LlamaVariants
        .spec(&"attn:gqa(kv=3)".parse().unwrap(), &spec)
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 KV heads"), "{e}");
}

#[test]
fn a_windowed_parent_layer_offers_its_own_attention_as_the_parent_variant() {
    use puzzle_core::spec::AttentionSpec;
    use puzzle_core::variant::SubblockKind;
    use puzzle_core::variants::{SpaceOptions, SubblockSpec};
    let (mut spec, w) = fixture();
    let AttentionSpec::Gqa { window, .. } = &mut spec.layers[1].attention else {
        panic!("the fixture's layer 1 is grouped-query attention")
    };
    *window = Some(16);
    let space = SpaceOptions::default();
    let ids: Vec<String> = LlamaVariants
        .enumerate(&spec, 1, SubblockKind::Attention, &space)
        .iter()
        .map(|v| v.to_string())
        .collect();
    assert!(
        ids.contains(&"attn:gqa(kv=2,w=16)".to_string())
            && ids.contains(&"attn:gqa(kv=1,w=16)".to_string()),
        "{ids:?}"
    );
    assert!(
        !ids.iter()
            .any(|i| i.starts_with("attn:gqa") && !i.contains("w=16")),
        "{ids:?}"
    );
    // The parent's own attention maps to that id and back, and its init is the parent's tensors.
    let own = spec.variant_of(1, SubblockKind::Attention);
    assert_eq!(own.to_string(), "attn:gqa(kv=2,w=16)");
    assert_eq!(
        LlamaVariants.spec(&own, &spec).unwrap(),
        SubblockSpec::Attention(spec.layers[1].attention.clone())
    );
    let parent_layer = layer_weights(&w, 1).unwrap();
    let calib = LayerCalibration {
        ffn_abs_mean: Some(vec![1.0; 176]),
        tokens: 1,
    };
    let init = LlamaVariants
        .init(&own, &spec, 1, &parent_layer, &calib)
        .unwrap();
    for (name, t) in &init.weights.tensors {
        assert_eq!(t, &parent_layer.read(name).unwrap(), "{name}");
    }
    // Unwindowed layers are unchanged, and a window too small to attend is refused by name.
    assert_eq!(
        spec.variant_of(0, SubblockKind::Attention).to_string(),
        "attn:gqa(kv=2)"
    );
    let bad: VariantId = "attn:gqa(kv=2,w=1)".parse().unwrap();
    let e = LlamaVariants.spec(&bad, &spec).unwrap_err().to_string();
    assert!(e.contains("gqa(kv=2,w=1)") && e.contains("window"), "{e}");
}
