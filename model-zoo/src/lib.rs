//! Data compiled into the binary so that `puzzle` runs anywhere without the repository:
//! hardware profiles (TOML, values from vendor datasheets), and later the tiny parent, the
//! corpora and the task suite.

/// Hardware profiles by name: `(name, TOML)`.
pub const HARDWARE: &[(&str, &str)] = &[
    ("h100-sxm", include_str!("../hardware/h100-sxm.toml")),
    ("h200", include_str!("../hardware/h200.toml")),
    ("a100-80gb", include_str!("../hardware/a100-80gb.toml")),
    ("l40s", include_str!("../hardware/l40s.toml")),
    ("cpu-dev", include_str!("../hardware/cpu-dev.toml")),
];

/// The TOML of a built-in hardware profile.
pub fn hardware(name: &str) -> Option<&'static str> {
    HARDWARE.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}
