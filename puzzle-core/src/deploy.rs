//! Deployment profiles (data, from `puzzle-types`) and the built-in hardware profiles of the
//! model zoo, which the data layer below cannot see.

use std::path::Path;

pub use puzzle_types::deploy::*;

use crate::error::{Error, Result};

/// A built-in hardware profile by name (`h100-sxm`, `h200`, `a100-80gb`, `l40s`, `cpu-dev`) or a
/// TOML file path relative to `base`.
pub fn resolve_hardware(name_or_path: &str, base: &Path) -> Result<HardwareProfile> {
    if let Some(t) = puzzle_zoo::hardware(name_or_path) {
        return HardwareProfile::parse(t, &format!("built-in profile `{name_or_path}`"));
    }
    let p = base.join(name_or_path);
    if !p.is_file() {
        return Err(Error::invalid(format!(
            "hardware `{name_or_path}` is neither a built-in profile ({}) nor a file",
            puzzle_zoo::HARDWARE
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    HardwareProfile::parse(
        &crate::fsutil::read_to_string(&p)?,
        &p.display().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use puzzle_types::kinds::Dtype;

    #[test]
    fn built_in_profiles_parse() {
        for (name, _) in puzzle_zoo::HARDWARE {
            let h = resolve_hardware(name, Path::new(".")).unwrap();
            assert!(
                h.memory_bandwidth_gbs > 0.0 && h.peak_flops(Dtype::Bf16).unwrap() > 0.0,
                "{name}"
            );
        }
        let h = resolve_hardware("h100-sxm", Path::new(".")).unwrap();
        assert_eq!(h.peak_flops(Dtype::Fp8).unwrap(), 1979e12);
        assert!(resolve_hardware("tpu-v9", Path::new(".")).is_err());
    }
}
