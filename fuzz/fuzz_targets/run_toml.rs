//! The run config: TOML, validation and path resolution against the embedded tiny example
//! (materialised once), so configs that parse reach the checks on the files they name.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use puzzle_fuzz::bounded;
use puzzle_pipeline::config::RunConfig;

fn example() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("puzzle-fuzz-run-toml-{}", std::process::id()));
        puzzle_zoo::materialize_tiny_example(&dir).expect("write the tiny example")
    })
}

fuzz_target!(|data: &[u8]| bounded(data, || {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = RunConfig::from_toml(text, example()) {
        let _ = c.run_dir();
        let _ = RunConfig::hash_of(&c);
    }
}));
