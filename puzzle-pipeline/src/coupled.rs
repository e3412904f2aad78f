//! Coupled BLD after a decoupled search, as the paper ran it: decoupled BLD trains each
//! attention and FFN variant with the parent's other subblock beside it, so a layer that pairs
//! two replacements was never trained as a pair. After a search on the decoupled library, the
//! variants its solutions chose most often are paired and every pair is trained as a whole
//! block in every layer ("coupled"); the search then runs again on the library with them,
//! where a coupled block competes with the decoupled combination of the same two variants.
//!
//! ```text
//! bld (decoupled) -> cost -> score -> search   into decoupled/
//!   -> pairs of the most chosen -> bld (coupled) -> cost -> score -> search   into the run folder
//! ```

use std::collections::BTreeMap;

use puzzle_core::bld::Prominent;
use puzzle_core::realize::LayerChoice;
use puzzle_core::spec::ModelSpec;
use puzzle_core::variant::{SubblockKind, VariantId};

/// The pairs to train as whole blocks: the `p.attention` attention and `p.ffn` FFN variants
/// chosen most often over every layer of `solutions` (ties: the one chosen first, in solution
/// and layer order), each attention with each FFN, less the pairs that train nothing as a
/// pair: the parent's own block in every layer, and a whole no-op. Ordered attention-major,
/// most chosen first.
pub fn prominent_pairs(
    solutions: &[Vec<LayerChoice>],
    parent: &ModelSpec,
    p: Prominent,
) -> Vec<[VariantId; 2]> {
    let ranked = |kind: SubblockKind, n: usize| -> Vec<VariantId> {
        // id -> (count, first seen)
        let mut seen: BTreeMap<VariantId, (usize, usize)> = BTreeMap::new();
        let mut order = 0;
        for sol in solutions {
            for c in sol {
                let v = match kind {
                    SubblockKind::Attention => &c.attn,
                    SubblockKind::Ffn => &c.ffn,
                };
                let e = seen.entry(v.clone()).or_insert((0, order));
                e.0 += 1;
                order += 1;
            }
        }
        let mut v: Vec<(VariantId, (usize, usize))> = seen.into_iter().collect();
        v.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.1.1.cmp(&b.1.1)));
        v.into_iter().take(n).map(|(id, _)| id).collect()
    };
    let attns = ranked(SubblockKind::Attention, p.attention);
    let ffns = ranked(SubblockKind::Ffn, p.ffn);
    let parent_block = |a: &VariantId, f: &VariantId| {
        (0..parent.layers.len()).all(|l| {
            parent.variant_of(l, SubblockKind::Attention) == *a
                && parent.variant_of(l, SubblockKind::Ffn) == *f
        })
    };
    let mut out = Vec::new();
    for a in &attns {
        for f in &ffns {
            let noop = a.head() == "noop" && f.head() == "noop";
            if !noop && !parent_block(a, f) {
                out.push([a.clone(), f.clone()]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use puzzle_core::spec::{AttentionSpec, FfnSpec, LayerSpec, RopeScaling, RopeSpec};

    fn parent() -> ModelSpec {
        ModelSpec {
            family: "llama".into(),
            hidden_size: 64,
            vocab_size: 96,
            num_attention_heads: 4,
            head_dim: 16,
            rms_norm_eps: 1e-5,
            rope: RopeSpec {
                theta: 10000.0,
                scaling: RopeScaling::Default,
            },
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            bos_token_id: None,
            eos_token_ids: vec![],
            storage_dtype: None,
            layers: vec![
                LayerSpec {
                    attention: AttentionSpec::Gqa {
                        num_kv_heads: 4,
                        qkv_bias: false,
                        o_bias: false,
                        window: None,
                    },
                    ffn: FfnSpec::SwiGlu {
                        intermediate_size: 256,
                        bias: false,
                    },
                };
                3
            ],
        }
    }

    fn sol(layers: &[&str]) -> Vec<LayerChoice> {
        layers.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn ids(pairs: &[[VariantId; 2]]) -> Vec<String> {
        pairs.iter().map(|[a, f]| format!("{a}+{f}")).collect()
    }

    #[test]
    fn the_most_chosen_are_paired_and_pairs_that_train_nothing_are_left_out() {
        let solutions = vec![
            sol(&[
                "attn:gqa(kv=4) + ffn:width(256)",
                "attn:gqa(kv=2) + ffn:width(128)",
                "attn:noop + ffn:noop",
            ]),
            sol(&[
                "attn:gqa(kv=2) + ffn:width(128)",
                "attn:gqa(kv=2) + ffn:noop",
                "coupled attn:noop + ffn:width(64)",
            ]),
        ];
        // Attention: kv=2 three times, noop twice, kv=4 once. FFN: width(128) and noop twice
        // (width(128) seen first), then width(256) and width(64) once each.
        let pairs = prominent_pairs(
            &solutions,
            &parent(),
            Prominent {
                attention: 2,
                ffn: 2,
            },
        );
        assert_eq!(
            ids(&pairs),
            [
                "attn:gqa(kv=2)+ffn:width(128)",
                "attn:gqa(kv=2)+ffn:noop",
                "attn:noop+ffn:width(128)",
            ]
        );
        // With noop in: the whole no-op pair is dropped, the noop attention with an FFN kept.
        let pairs = prominent_pairs(
            &solutions,
            &parent(),
            Prominent {
                attention: 3,
                ffn: 4,
            },
        );
        let got = ids(&pairs);
        assert!(
            got.contains(&"attn:noop+ffn:width(128)".to_string()),
            "{got:?}"
        );
        assert!(!got.contains(&"attn:noop+ffn:noop".to_string()), "{got:?}");
        assert!(
            !got.contains(&"attn:gqa(kv=4)+ffn:width(256)".to_string()),
            "the parent's own block: {got:?}"
        );
        assert_eq!(got.len(), 3 * 4 - 2);
        // More asked for than were chosen: what there is.
        let one = prominent_pairs(
            &solutions[..1],
            &parent(),
            Prominent {
                attention: 9,
                ffn: 1,
            },
        );
        assert_eq!(
            ids(&one),
            ["attn:gqa(kv=2)+ffn:width(256)", "attn:noop+ffn:width(256)"]
        );
    }
}
