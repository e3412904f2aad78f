//! Tensor code: primitives, subblocks and the decoder (burn, f32 compute).

pub mod blocks;
pub mod decoder;
pub mod primitives;

pub use blocks::{AttentionBlock, FfnBlock, ForwardCtx, LayerKv, Loader, NoOp, Subblock};
pub use decoder::{Decoder, ForwardTrace, KvCache, Layer, ids_tensor};
pub use primitives::{Linear, RmsNorm, RopeTables};
