//! The GGUF reader as `puzzle import gguf` uses it: header, metadata, tensor infos, then the
//! config and tokenizer rebuilt from metadata, and every tensor dequantised.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use puzzle_core::gguf::GgufFile;
use puzzle_fuzz::bounded;
use puzzle_llama_ops::gguf_import::{
    config_from_metadata, tokenizer_from_metadata, unpermute_rows,
};

fuzz_target!(|data: &[u8]| bounded(data, || {
    let Ok(g) = GgufFile::from_bytes(Path::new("fuzz.gguf"), data.to_vec()) else {
        return;
    };
    if let Ok(config) = config_from_metadata(&g) {
        let heads = config["num_attention_heads"].as_u64().unwrap_or(1) as usize;
        for info in &g.tensors {
            if let Ok(t) = g.tensor_f32(&info.name) {
                let _ = unpermute_rows(&t, heads);
            }
        }
    }
    for info in &g.tensors {
        let _ = g.tensor_f32(&info.name);
    }
    if let Ok(tok) = tokenizer_from_metadata(&g) {
        let bytes = serde_json::to_vec(&tok).expect("a JSON value serialises");
        if let Ok(t) = puzzle_core::tokenizer::Tokenizer::from_bytes(&bytes, Path::new("fuzz.gguf"))
        {
            let _ = t.encode("Hello, world! 123", true);
        }
    }
}));
