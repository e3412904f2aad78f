//! A plugin built "against another ABI version": it reports `ABI_VERSION + 1`, as a plugin
//! compiled for a future puzzle would. Loading it must fail with both versions named.

use abi_stable::export_root_module;
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{RResult, RString, RVec};
use puzzle_plugin_abi::{
    ABI_VERSION, NamedTensor, PluginMod, PluginModRef, ScorePart, unsupported,
};

#[export_root_module]
fn root_module() -> PluginModRef {
    PluginMod {
        abi_version,
        describe,
        solve,
        cost,
        score,
        catalog_enumerate: catalog,
        catalog_spec: catalog,
        catalog_init,
    }
    .leak_into_prefix()
}

extern "C" fn abi_version() -> u32 {
    ABI_VERSION + 1
}
extern "C" fn describe() -> RString {
    r#"{"name": "from-the-future", "solvers": ["dfs"]}"#.into()
}
extern "C" fn solve(n: RString, _: RString, _: RString) -> RResult<RString, RString> {
    unsupported("solver", n.as_str())
}
extern "C" fn cost(n: RString, _: RString) -> RResult<RString, RString> {
    unsupported("cost model", n.as_str())
}
extern "C" fn score(n: RString, _: RVec<f32>, _: RVec<f32>) -> RResult<ScorePart, RString> {
    unsupported("scorer", n.as_str())
}
extern "C" fn catalog(n: RString, _: RString) -> RResult<RString, RString> {
    unsupported("catalog", n.as_str())
}
extern "C" fn catalog_init(
    n: RString,
    _: RString,
    _: RVec<NamedTensor>,
) -> RResult<RVec<NamedTensor>, RString> {
    unsupported("catalog", n.as_str())
}
