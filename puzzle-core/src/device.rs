//! Device selection. burn 0.22 dispatches at run time, so the only device-specific code is here.

use burn::tensor::Device;

use crate::error::{Error, Result};

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s.trim() {
        "cpu" | "flex" => Ok(Device::flex()),
        d if d == "cuda" || d.starts_with("cuda:") => cuda(d),
        other => Err(Error::invalid(format!(
            "unknown device `{other}` (expected cpu, cuda or cuda:N)"
        ))),
    }
}

#[cfg(feature = "cuda")]
fn cuda(d: &str) -> Result<Device> {
    let index = match d.strip_prefix("cuda:") {
        Some(i) => i
            .parse::<usize>()
            .map_err(|_| Error::invalid(format!("bad CUDA device index in `{d}`")))?,
        None => 0,
    };
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(d: &str) -> Result<Device> {
    Err(Error::invalid(format!(
        "device `{d}`: this build has no CUDA support; rebuild with `--features cuda` \
         (needs network access once to fetch burn's LLVM bundle)"
    )))
}

/// A short human description of a device.
pub fn describe(device: &Device) -> String {
    let threads = rayon_threads();
    format!("{device:?} ({threads} CPU threads)")
}

/// Threads of the global rayon pool burn's CPU backend uses.
pub fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
