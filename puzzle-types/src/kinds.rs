//! Closed sets of names that configs and tables use, as enums parsed once at the edge (config
//! files, table keys) with errors that name the bad value; serialised as the same strings, so
//! config hashes and JSON artifacts are unchanged.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Declares a string-backed enum: `FromStr` listing the known names on error, `Display`, serde
/// as the string.
macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident, $what:literal, { $($(#[$vm:meta])* $v:ident = $s:literal $(| $alias:literal)*),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub enum $name { $($(#[$vm])* $v),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];

            /// The canonical name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                match s {
                    $($s $(| $alias)* => Ok($name::$v),)+
                    other => Err(Error::invalid(format!(
                        concat!($what, " `{}` is unknown ({})"),
                        other,
                        [$($s),+].join(", ")
                    ))),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self, Error> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.as_str().to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum!(
    /// A number format of the deployment (weights, activations, KV cache).
    Dtype, "dtype", {
        Fp32 = "fp32" | "f32",
        Tf32 = "tf32",
        Bf16 = "bf16",
        Fp16 = "fp16",
        Fp8 = "fp8",
        Int8 = "int8",
        Int4 = "int4",
        Fp4 = "fp4",
    }
);

impl Dtype {
    /// Bytes per element.
    pub fn bytes(self) -> f64 {
        match self {
            Dtype::Fp8 | Dtype::Int8 => 1.0,
            Dtype::Bf16 | Dtype::Fp16 => 2.0,
            Dtype::Fp32 | Dtype::Tf32 => 4.0,
            Dtype::Int4 | Dtype::Fp4 => 0.5,
        }
    }
}

named_enum!(
    /// A baseline Puzzle is compared with at matched measured speed.
    BaselineKind, "baseline kind", {
        /// The same (attention, FFN) variant in every layer, pruned (Minitron-style).
        Uniform = "uniform",
        /// The layers of least block influence removed (ShortGPT-style).
        LayerRemoval = "layer_removal",
    }
);

named_enum!(
    /// A speed metric measured end to end (tokens per second; higher is faster).
    SpeedMetric, "speed metric", {
        /// Generated tokens per second over a whole request (prefill + decode).
        Throughput = "throughput",
        /// Generated tokens per second of the decode steps alone.
        DecodeThroughput = "decode_throughput",
    }
);

named_enum!(
    /// The engine that serves the child (`deployment.engine`): what it can run decides the
    /// search space, and its measured speed decides whether a target is met.
    EngineKind, "engine", {
        /// puzzle's own burn runtime.
        Burn = "burn",
        /// llama.cpp (GGUF, `llama` / `deci` graphs).
        LlamaCpp = "llamacpp" | "llama.cpp",
        /// vLLM (`DeciLMForCausalLM`).
        Vllm = "vllm",
        /// TensorRT-LLM.
        TrtLlm = "trtllm" | "tensorrt-llm",
    }
);

impl SpeedMetric {
    /// The metric and batch size of a table key such as `decode_throughput@b8`; `None` for keys
    /// that are not an end-to-end speed at a batch size.
    pub fn from_key(key: &str) -> Option<(SpeedMetric, usize)> {
        let (base, b) = key.split_once("@b")?;
        Some((base.parse().ok()?, b.parse().ok()?))
    }

    /// The table key of this metric at batch `b`.
    pub fn key(self, b: usize) -> String {
        format!("{}@b{b}", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_values_are_named_with_the_known_ones() {
        for d in Dtype::ALL {
            assert_eq!(d.as_str().parse::<Dtype>().unwrap(), *d);
        }
        assert_eq!("f32".parse::<Dtype>().unwrap(), Dtype::Fp32);
        assert_eq!(Dtype::Int4.bytes(), 0.5);
        let e = "fp7".parse::<Dtype>().unwrap_err().to_string();
        assert!(e.contains("dtype `fp7` is unknown (fp32, tf32"), "{e}");
        let e = "ShortGPT".parse::<BaselineKind>().unwrap_err().to_string();
        assert_eq!(
            e,
            "baseline kind `ShortGPT` is unknown (uniform, layer_removal)"
        );
        // Serialised as the plain string, so hashes of configs do not change.
        assert_eq!(
            serde_json::to_string(&BaselineKind::LayerRemoval).unwrap(),
            "\"layer_removal\""
        );
        let v: Vec<Dtype> = serde_json::from_str("[\"bf16\", \"fp8\"]").unwrap();
        assert_eq!(v, [Dtype::Bf16, Dtype::Fp8]);
        assert!(serde_json::from_str::<Dtype>("\"x\"").is_err());
    }

    #[test]
    fn speed_keys_parse_into_metric_and_batch() {
        assert_eq!(
            SpeedMetric::from_key("decode_throughput@b8"),
            Some((SpeedMetric::DecodeThroughput, 8))
        );
        assert_eq!(
            SpeedMetric::from_key("throughput@b1"),
            Some((SpeedMetric::Throughput, 1))
        );
        assert_eq!(SpeedMetric::from_key("runtime_ms@b1"), None);
        assert_eq!(SpeedMetric::from_key("decode_throughput"), None);
        assert_eq!(SpeedMetric::from_key("throughput@bx"), None);
        assert_eq!(SpeedMetric::DecodeThroughput.key(4), "decode_throughput@b4");
    }
}
