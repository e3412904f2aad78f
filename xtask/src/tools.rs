//! The build tools our C++ dependencies need, provided from PyPI when the machine lacks them.
//!
//! HiGHS (`highs-sys`, the default MIP solver) and llama.cpp (`llama-cpp-sys-2`, the default
//! engine) are built from C++ with cmake, and both generate their bindings with bindgen, which
//! loads libclang. A fresh machine with only Rust and Python has neither, and no root is assumed,
//! so instead of apt we take the `cmake` and `libclang` wheels from PyPI into a cache folder
//! (`pip install --target`, which touches no Python environment) and point the build at them
//! through the variables the `cmake` and `clang-sys` crates read: `CMAKE` and `LIBCLANG_PATH`.
//! What the machine already has is used as is.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Pinned so that a build is the same wherever it runs. cmake 3.x: some vendored CMakeLists
/// still declare `cmake_minimum_required` below 3.5, which cmake 4 refuses.
const CMAKE_WHEEL: &str = "cmake==3.31.6";
const LIBCLANG_WHEEL: &str = "libclang==18.1.1";

/// Environment variables to set on the cargo commands that build the C++ dependencies.
#[derive(Debug, Default)]
pub struct BuildEnv {
    pub vars: Vec<(&'static str, OsString)>,
    /// One line per tool: where it came from (printed, so a user knows what was used).
    pub notes: Vec<String>,
}

impl BuildEnv {
    pub fn apply(&self, cmd: &mut Command) {
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
    }

    /// `export K='V'` lines, for `eval "$(cargo xtask env)"` before plain cargo commands.
    pub fn exports(&self) -> String {
        self.vars
            .iter()
            // Single quotes keep everything literal; a quote inside is closed, escaped, reopened.
            .map(|(k, v)| {
                let v = v.to_string_lossy().replace('\'', r"'\''");
                format!("export {k}='{v}'\n")
            })
            .collect()
    }
}

pub fn python() -> &'static str {
    if Command::new("python3").arg("--version").output().is_ok() {
        "python3"
    } else {
        "python"
    }
}

/// Where downloads outlive a clean clone: `$PUZZLE_CACHE`, else `~/.cache/puzzle`.
pub fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("PUZZLE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/puzzle")))
}

fn works(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

/// A shared library named `libclang.so*` in `dir`.
fn has_libclang(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            // `libclang-14.so.1` is the C library bindgen loads; `libclang-cpp.so` is not.
            name.starts_with("libclang.so")
                || name.starts_with("libclang-")
                    && !name.starts_with("libclang-cpp")
                    && name.contains(".so")
        })
    })
}

/// The folders clang-sys searches itself (its defaults on Linux), so that we only download
/// libclang where the build would not find one.
fn system_libclang() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(out) = Command::new("llvm-config").arg("--libdir").output()
        && out.status.success()
    {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    for base in [
        "/usr/lib",
        "/usr/lib64",
        "/usr/local/lib",
        "/usr/local/lib64",
    ] {
        dirs.push(PathBuf::from(base));
        if let Ok(entries) = std::fs::read_dir(base) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("llvm") {
                    dirs.push(e.path().join("lib"));
                } else if name.ends_with("-linux-gnu") {
                    dirs.push(e.path());
                }
            }
        }
    }
    dirs.into_iter().find(|d| has_libclang(d))
}

/// `pip install --target DIR WHEEL` unless DIR already holds it; returns DIR.
fn wheel(spec: &str, cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("build-tools").join(spec.replace("==", "-"));
    let done = dir.join(".complete");
    if done.is_file() {
        return Ok(dir);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the incomplete {}", dir.display()))?;
    }
    eprintln!("fetching {spec} from PyPI into {}", dir.display());
    let status = Command::new(python())
        // --target touches no environment, so pip's warning about root installs does not apply.
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--target",
        ])
        .arg(&dir)
        .arg(spec)
        .status()
        .with_context(|| {
            format!(
                "starting `{} -m pip` (Python 3 with pip is needed)",
                python()
            )
        })?;
    if !status.success() {
        bail!(
            "`{} -m pip install --target {} {spec}` failed with {status}; install cmake and \
             libclang-dev with the system's package manager instead, or set CMAKE and \
             LIBCLANG_PATH",
            python(),
            dir.display()
        );
    }
    std::fs::write(&done, spec).with_context(|| format!("writing {}", done.display()))?;
    Ok(dir)
}

/// Find cmake and libclang, fetching what is missing; the variables to build with.
pub fn ensure() -> Result<BuildEnv> {
    let mut env = BuildEnv::default();
    let cache = cache_dir()
        .unwrap_or_else(|| crate::root().join("target"))
        .to_path_buf();

    if let Some(cmake) = std::env::var_os("CMAKE") {
        env.notes
            .push(format!("cmake: {} (CMAKE)", cmake.to_string_lossy()));
    } else if works(Command::new("cmake").arg("--version")) {
        env.notes.push("cmake: the one on PATH".into());
    } else {
        let dir = wheel(CMAKE_WHEEL, &cache)?;
        let bin = dir.join("cmake/data/bin");
        let cmake = bin.join("cmake");
        if !works(Command::new(&cmake).arg("--version")) {
            bail!("{} does not run", cmake.display());
        }
        env.notes
            .push(format!("cmake: {} (PyPI {CMAKE_WHEEL})", cmake.display()));
        // The `cmake` crate reads CMAKE; PATH covers build scripts that call `cmake` by name.
        let mut path = OsString::from(bin.as_os_str());
        if let Some(old) = std::env::var_os("PATH") {
            path.push(":");
            path.push(old);
        }
        env.vars.push(("CMAKE", cmake.into_os_string()));
        env.vars.push(("PATH", path));
    }

    if let Some(p) = std::env::var_os("LIBCLANG_PATH") {
        env.notes
            .push(format!("libclang: {} (LIBCLANG_PATH)", p.to_string_lossy()));
    } else if let Some(dir) = system_libclang() {
        env.notes.push(format!("libclang: {}", dir.display()));
    } else {
        let dir = wheel(LIBCLANG_WHEEL, &cache)?.join("clang/native");
        if !has_libclang(&dir) {
            bail!(
                "the {LIBCLANG_WHEEL} wheel has no libclang.so in {}",
                dir.display()
            );
        }
        env.notes.push(format!(
            "libclang: {} (PyPI {LIBCLANG_WHEEL})",
            dir.display()
        ));
        env.vars.push(("LIBCLANG_PATH", dir.into_os_string()));
        // The wheel has the library but not clang's own headers (stddef.h, stdbool.h), which
        // bindgen needs to parse llama.h and HiGHS's C API; the C compiler's are equivalent.
        if std::env::var_os("BINDGEN_EXTRA_CLANG_ARGS").is_none()
            && let Some(inc) = compiler_include_dir()
        {
            env.vars.push((
                "BINDGEN_EXTRA_CLANG_ARGS",
                OsString::from(format!("-isystem {}", inc.display())),
            ));
        }
    }
    Ok(env)
}

/// The C compiler's own header folder (`cc -print-file-name=include`).
fn compiler_include_dir() -> Option<PathBuf> {
    for cc in ["cc", "gcc", "clang"] {
        if let Ok(out) = Command::new(cc).arg("-print-file-name=include").output()
            && out.status.success()
        {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("stddef.h").is_file() {
                return Some(dir);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libclang_is_recognised_by_its_file_names() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!has_libclang(dir.path()));
        std::fs::write(dir.path().join("libclang-cpp.a"), b"").unwrap();
        std::fs::write(dir.path().join("libclang-cpp.so.14"), b"").unwrap();
        assert!(!has_libclang(dir.path()));
        std::fs::write(dir.path().join("libclang-14.so.1"), b"").unwrap();
        assert!(has_libclang(dir.path()));
    }

    #[test]
    fn exports_quote_each_variable() {
        let env = BuildEnv {
            vars: vec![("CMAKE", OsString::from("/a b/it's/cmake"))],
            notes: vec![],
        };
        assert_eq!(env.exports(), "export CMAKE='/a b/it'\\''s/cmake'\n");
    }
}
