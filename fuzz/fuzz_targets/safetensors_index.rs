//! `model.safetensors.index.json`: its `weight_map`, whose shard names must stay inside the
//! checkpoint's folder.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use puzzle_core::weights::read_index;
use puzzle_fuzz::bounded;

fuzz_target!(|data: &[u8]| bounded(data, || {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(map) = read_index(&v, Path::new("model.safetensors.index.json")) {
        for file in map.values() {
            let p = Path::new(file);
            assert!(
                p.components().count() == 1 && p.file_name().is_some(),
                "{file:?} escapes the folder"
            );
        }
    }
}));
