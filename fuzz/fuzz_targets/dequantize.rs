//! Every dequantiser on raw blocks: the first four bytes pick the ggml type, the rest are its
//! blocks (whole blocks only, as the GGUF reader guarantees).
#![no_main]

use libfuzzer_sys::fuzz_target;
use puzzle_core::gguf::{GgmlType, dequantize};
use puzzle_fuzz::bounded;

fuzz_target!(|data: &[u8]| bounded(data, || {
    let Some((id, raw)) = data.split_first_chunk::<4>() else {
        return;
    };
    let ty = GgmlType::from_id(u32::from_le_bytes(*id) % 32);
    let Some((per, bytes)) = ty.block() else {
        return;
    };
    let blocks = raw.len() / bytes;
    let out = dequantize(ty, &raw[..blocks * bytes], blocks * per);
    assert_eq!(out.len(), blocks * per, "{ty:?}: one value per element");
}));
