//! Block libraries: NVlabs/puzzle's `block_library.json` (with and without its parent stats),
//! Model-Optimizer's gathered choices, and our own `BlockTable` JSON; a table that reads is
//! then validated and searched as `puzzle search` would.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use puzzle_fuzz::{Brute, bounded, search, space};
use puzzle_types::search::nvidia;
use puzzle_types::search::table::BlockTable;

fuzz_target!(|data: &[u8]| bounded(data, || {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let path = Path::new("block_library.json");
    let mut tables = Vec::new();
    if let Ok(t) = serde_json::from_value::<BlockTable>(v.clone()) {
        tables.push(t);
    }
    if let Ok(t) = nvidia::read(&v, path, None) {
        tables.push(t);
    }
    // The same document as parent stats for a fixed library exercises that reader too.
    if let Some(stats) = v.get("parent") {
        let _ = nvidia::read(&v, path, Some(stats));
    }
    for t in tables {
        if t.validate().is_err() {
            continue;
        }
        if let Some(p) = t.parent_choice() {
            for k in t.common_keys() {
                let _ = t.total(&p, &k);
            }
        }
        if space(&t) <= 4096 {
            search(&t, &Brute);
        }
    }
}));
