//! `puzzle inspect MODEL`: the architecture as a table.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use puzzle_core::spec::{AttentionSpec, FfnSpec, RopeScaling};
use puzzle_core::weights::{SafetensorsWeights, WeightSource};

use crate::ui;

/// Show a checkpoint's architecture: per layer, what its attention and FFN subblocks are, their
/// sizes and parameter counts, and the totals (parameters, bytes, KV cache per token).
///
/// MODEL is a Hugging Face style folder (config.json + safetensors), a parent or a Puzzle child
/// (DeciLM / nemotron-nas format).
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Checkpoint folder.
    pub model: PathBuf,
    /// Print the resolved spec as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InspectArgs) -> Result<()> {
    let spec = crate::registry::plugins()
        .read_spec(&a.model)
        .with_context(|| format!("reading {}", a.model.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&spec)?);
        return Ok(());
    }
    // Bytes as stored: from the safetensors headers when the weights are there.
    let weights = SafetensorsWeights::open(&a.model).ok();
    let dtypes = weights
        .as_ref()
        .map(|w| w.dtypes().into_iter().collect::<Vec<_>>().join("+"))
        .unwrap_or_else(|| "no weights found".into());
    let elem_bytes = match spec.storage_dtype.as_deref() {
        Some("float32") => 4.0,
        _ => 2.0,
    };
    println!("{}  (family `{}`)", a.model.display(), spec.family);
    let rope = match &spec.rope.scaling {
        RopeScaling::Default => format!("theta {}", spec.rope.theta),
        RopeScaling::Linear { factor } => format!("theta {}, linear x{factor}", spec.rope.theta),
        RopeScaling::Llama3 { factor, .. } => {
            format!("theta {}, llama3 x{factor}", spec.rope.theta)
        }
    };
    println!(
        "hidden {} | vocab {} | {} query heads x {} | RoPE {} | max positions {} | head {} | storage {}",
        spec.hidden_size,
        spec.vocab_size,
        spec.num_attention_heads,
        spec.head_dim,
        rope,
        spec.max_position_embeddings,
        if spec.tie_word_embeddings {
            "tied"
        } else {
            "untied"
        },
        dtypes,
    );
    let mut t = ui::table(&[
        "layer",
        "attention",
        "KV heads",
        "attn params",
        "ffn",
        "width",
        "ffn params",
    ]);
    for (i, l) in spec.layers.iter().enumerate() {
        let (akind, kv) = match &l.attention {
            AttentionSpec::Gqa {
                num_kv_heads,
                qkv_bias,
                ..
            } => (
                if *qkv_bias { "gqa+bias" } else { "gqa" }.to_string(),
                num_kv_heads.to_string(),
            ),
            AttentionSpec::Linear => ("linear".into(), "-".into()),
            AttentionSpec::NoOp => ("no-op".into(), "-".into()),
        };
        let (fkind, width) = match &l.ffn {
            FfnSpec::SwiGlu {
                intermediate_size, ..
            } => ("swiglu".to_string(), intermediate_size.to_string()),
            FfnSpec::Linear => ("linear".into(), "-".into()),
            FfnSpec::NoOp => ("no-op".into(), "-".into()),
        };
        t.add_row(vec![
            i.to_string(),
            akind,
            kv,
            ui::count(spec.attention_params(&l.attention) as f64),
            fkind,
            width,
            ui::count(spec.ffn_params(&l.ffn) as f64),
        ]);
    }
    println!("{t}");
    let params = spec.num_params();
    let stored: usize = weights
        .as_ref()
        .map(|w| {
            w.names()
                .iter()
                .filter_map(|n| w.shape(n))
                .map(|s| s.iter().product::<usize>())
                .sum()
        })
        .unwrap_or(params);
    println!(
        "parameters {} ({} in the checkpoint) | weights {} at {} bytes/param | KV cache {}/token ({} elements, f16)",
        ui::count(params as f64),
        ui::count(stored as f64),
        ui::bytes(params as f64 * elem_bytes),
        elem_bytes,
        ui::bytes(spec.kv_elements_per_token() as f64 * 2.0),
        spec.kv_elements_per_token(),
    );
    Ok(())
}
