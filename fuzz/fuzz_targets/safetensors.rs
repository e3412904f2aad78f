//! A `.safetensors` file: header, then every tensor read as f32 and integer tensors as i64.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use puzzle_core::weights::{SafetensorsWeights, WeightSource};
use puzzle_fuzz::bounded;

fuzz_target!(|data: &[u8]| bounded(data, || {
    let Ok(w) = SafetensorsWeights::from_bytes(Path::new("fuzz.safetensors"), data.to_vec()) else {
        return;
    };
    let _ = w.dtypes();
    let _ = w.file_metadata();
    for name in w.names() {
        let shape = w.shape(&name);
        if let Ok(t) = w.read(&name) {
            assert_eq!(Some(t.shape.clone()), shape);
            assert_eq!(t.numel(), t.data.len(), "`{name}`: shape and data agree");
        }
        let _ = w.read_i64(&name);
    }
}));
