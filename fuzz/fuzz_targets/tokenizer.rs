//! `tokenizer.json` loading, then a round trip of a fixed text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use puzzle_core::tokenizer::Tokenizer;
use puzzle_fuzz::bounded;

fuzz_target!(|data: &[u8]| bounded(data, || {
    let Ok(t) = Tokenizer::from_bytes(data, Path::new("tokenizer.json")) else {
        return;
    };
    let _ = t.vocab_size();
    if let Ok(ids) = t.encode(
        "In the beginning God created the heaven and the earth.",
        true,
    ) {
        let _ = t.decode(&ids, false);
    }
}));
