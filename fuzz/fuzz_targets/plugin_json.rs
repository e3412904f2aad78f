//! The JSON documents a dynamic plugin hands the host: `describe()`, a solver's answer, a cost
//! model's costs, a catalog's variant ids and subblock specs. The first byte picks which; the
//! solver's answer is then checked by the host's search as a plugin's would be.
#![no_main]

use libfuzzer_sys::fuzz_target;
use puzzle_core::cost::Costs;
use puzzle_core::variants::SubblockSpec;
use puzzle_fuzz::{Answer, bounded, parent_spec, search};
use puzzle_pipeline::host::Provides;
use puzzle_types::search::{MipSolution, synthetic};
use puzzle_types::variant::VariantId;

fuzz_target!(|data: &[u8]| bounded(data, || {
    let Some((&which, doc)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            let _ = serde_json::from_slice::<Provides>(doc);
        }
        1 => {
            if let Ok(answer) = serde_json::from_slice::<MipSolution>(doc) {
                search(&synthetic::decoupled(7, 3, 2, 3), &Answer(answer));
            }
        }
        2 => {
            let _ = serde_json::from_slice::<Costs>(doc);
        }
        3 => {
            if let Ok(ids) = serde_json::from_slice::<Vec<VariantId>>(doc) {
                for id in ids {
                    let text = id.to_string();
                    let _ = text.parse::<VariantId>();
                }
            }
        }
        _ => {
            if let Ok(spec) = serde_json::from_slice::<SubblockSpec>(doc) {
                let _ = spec.kind();
                let parent = parent_spec();
                let _ = spec.params(parent);
                let _ = spec.tensor_shapes(parent);
            }
        }
    }
}));
