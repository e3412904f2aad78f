//! File helpers shared by every stage: atomic writes (temp file + rename) so that a killed process
//! never leaves a half-written artifact behind, and JSON read/write with the path in every error.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically: a reader sees the old file or the whole new one, never a
/// prefix. The temp file lives beside the target so the rename stays on one filesystem.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Like [`write_atomic`], with a writer callback for large outputs.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let (tmp, file) = create_tmp(path).map_err(|e| Error::io(path, e))?;
    let result = (|| -> std::io::Result<()> {
        let mut w = std::io::BufWriter::new(file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    durability_boundary();
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    durability_boundary();
    Ok(())
}

/// Like [`write_atomic`] for a writer that opens the file itself by name (a C library):
/// `write` fills the exclusive temp file beside `path` (it exists, empty), which is then synced
/// and renamed over `path`. On an error the temp file is removed and `path` is untouched.
pub fn write_atomic_via_path(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let (tmp, file) = create_tmp(path).map_err(|e| Error::io(path, e))?;
    drop(file);
    let result = write(&tmp).and_then(|()| {
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(path, e))
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    durability_boundary();
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    durability_boundary();
    Ok(())
}

/// The environment variable of the kill-anywhere tests: `PUZZLE_KILL_AT_WRITE=N` makes the
/// process SIGKILL itself at the `N`-th durability boundary it crosses (1-based): after a temp
/// file is synced and before it is renamed over its target, after that rename, and between
/// the renames of [`SwappedDir::commit`]. Those are the instants where a writer that got
/// the order wrong would leave a torn or stale artifact, and a timer rarely hits them.
pub const KILL_AT_WRITE_ENV: &str = "PUZZLE_KILL_AT_WRITE";

/// Counts a durability boundary and dies there when [`KILL_AT_WRITE_ENV`] says so.
fn durability_boundary() {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let Some(at) = *AT.get_or_init(|| {
        std::env::var(KILL_AT_WRITE_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
    }) else {
        return;
    };
    if SEEN.fetch_add(1, Ordering::SeqCst) + 1 == at {
        #[cfg(unix)]
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // Where SIGKILL is not available, the nearest thing: no unwinding, no destructors.
        std::process::abort();
    }
}

/// A new temp file beside `path`, created exclusively. Its name carries the process id, the
/// process's start time in nanoseconds and a per-process counter: shards of one run on a shared
/// filesystem may have equal process ids (other nodes, containers), and `create_new` makes even
/// an equal name an error that moves on to the next, never a file two writers share.
fn create_tmp(path: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static START: OnceLock<u128> = OnceLock::new();
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    });
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    loop {
        let tmp = path.with_file_name(format!(
            ".{name}.{}-{start:x}-{}.tmp",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::File::create_new(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Whether `name` is a temp file of [`write_atomic`]'s: `.{target}.{pid}-{start hex}-{seq}.tmp`.
fn is_atomic_temp(name: &str) -> bool {
    let Some(stem) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
        return false;
    };
    let Some((_, tag)) = stem.rsplit_once('.') else {
        return false;
    };
    let parts: Vec<&str> = tag.split('-').collect();
    parts.len() == 3
        && parts[0].parse::<u32>().is_ok()
        && u128::from_str_radix(parts[1], 16).is_ok()
        && parts[2].parse::<u64>().is_ok()
}

/// Removes, under `dir` at any depth, the temp files [`write_atomic`] leaves when its process
/// is killed between creating one and renaming it over its target, and the previous or staged
/// copy of a [`SwappedDir`] a kill left beside its complete live folder, and returns them. Only for
/// a folder no other process is writing into (a finished run): a writer's temp file cannot be
/// told from a dead writer's by its name alone when the writer runs on another host.
pub fn remove_stale_temps(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let mut walk = vec![dir.to_path_buf()];
    while let Some(d) = walk.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let e = e.map_err(|e| Error::io(&d, e))?;
            let p = e.path();
            let kind = e.file_type().map_err(|e| Error::io(&p, e))?;
            if kind.is_dir() {
                if swapped_leftover(&p) {
                    // A kill after a swap's last rename, while (or before) its previous or
                    // staged copy was deleted: the live folder is complete and checked, so
                    // the leftover, perhaps half-deleted, goes (its checksums would fail).
                    std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
                    removed.push(p);
                } else {
                    walk.push(p);
                }
            } else if kind.is_file() && is_atomic_temp(&e.file_name().to_string_lossy()) {
                std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                removed.push(p);
            }
        }
    }
    removed.sort();
    Ok(removed)
}

/// Whether `dir` is the `<live>.old` or `<live>.tmp` of a [`SwappedDir`] whose `<live>` is in
/// place with checksums that match: then `dir` holds nothing a reader needs.
fn swapped_leftover(dir: &Path) -> bool {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(live) = name
        .strip_suffix(".old")
        .or_else(|| name.strip_suffix(".tmp"))
        .filter(|l| !l.is_empty())
    else {
        return false;
    };
    let live = dir.with_file_name(live);
    live.join(SUMS).is_file() && verify_sums(&live).is_ok()
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::config(path, format!("cannot serialise: {e}")))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Writes `bytes` atomically unless `path` already holds exactly them; returns whether it
/// wrote. Files every shard of a run writes when it opens the run (its config copy, its
/// resolved facts) are then written once, not rewritten under the other shards' readers.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    write_atomic(path, bytes)?;
    Ok(true)
}

/// [`write_json`] through [`write_if_changed`].
pub fn write_json_if_changed<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<bool> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::config(path, format!("cannot serialise: {e}")))?;
    bytes.push(b'\n');
    write_if_changed(path, &bytes)
}

/// Reads and parses a JSON file, naming the file (and line/column) on failure.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| Error::config(path, format!("invalid JSON: {e}")))
}

/// Reads a text file with the path in the error.
pub fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// A folder replaced as a whole (a training checkpoint): the new contents are written into
/// `<live>.tmp`, then swapped in by renames. A kill at any instant leaves the old or the new
/// contents complete in `<live>` or `<live>.old`, which [`SwappedDir::find`] falls back to.
pub struct SwappedDir {
    live: PathBuf,
}

impl SwappedDir {
    /// The swapped folder at `live`.
    pub fn new(live: PathBuf) -> Self {
        SwappedDir { live }
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        let name = self
            .live
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.live.with_file_name(format!("{name}.{suffix}"))
    }

    /// An empty staging folder to write the new contents into.
    pub fn stage(&self) -> Result<PathBuf> {
        let tmp = self.sibling("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(tmp)
    }

    /// Swaps the staged folder in; the previous contents are removed only once it is in place.
    /// The sha256 of every file staged is recorded in [`SUMS`] first, so that [`SwappedDir::find`]
    /// can tell a folder damaged after the fact (a bad disk, a crash before the data reached it,
    /// a stray edit) from a good one.
    pub fn commit(&self) -> Result<()> {
        let (tmp, old) = (self.sibling("tmp"), self.sibling("old"));
        let mut sums = std::collections::BTreeMap::new();
        for e in std::fs::read_dir(&tmp).map_err(|e| Error::io(&tmp, e))? {
            let e = e.map_err(|e| Error::io(&tmp, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name != SUMS && e.path().is_file() {
                sums.insert(name, sha256_of(&e.path())?);
            }
        }
        write_json(&tmp.join(SUMS), &sums)?;
        // Without `live` (a kill between the renames), `old` is the only complete copy: it
        // stays until the new one is in place.
        if self.live.exists() {
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(&self.live, &old).map_err(|e| Error::io(&self.live, e))?;
            durability_boundary();
        }
        std::fs::rename(&tmp, &self.live).map_err(|e| Error::io(&self.live, e))?;
        durability_boundary();
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    /// The complete folder to read: `<live>`, else `<live>.old`, whichever holds `marker`
    /// (the file written last) and whose files match their recorded checksums (a folder from
    /// before checksums were recorded is taken as it is). `Ok(None)` when there is none; an
    /// error when the only complete folders are damaged, naming the file: resuming from it
    /// would train on corrupt weights, and starting over silently would throw work away.
    pub fn find(&self, marker: &str) -> Result<Option<PathBuf>> {
        let mut damaged = None;
        for d in [self.live.clone(), self.sibling("old")] {
            if !d.join(marker).is_file() {
                continue;
            }
            match verify_sums(&d) {
                Ok(()) => return Ok(Some(d)),
                Err(e) => {
                    damaged.get_or_insert(e);
                }
            }
        }
        match damaged {
            Some(e) => Err(Error::invalid(format!(
                "{e}; delete {} to start it over",
                self.live.display()
            ))),
            None => Ok(None),
        }
    }

    /// Removes every trace (live, staging and old); missing is fine.
    pub fn remove(&self) {
        for d in [self.live.clone(), self.sibling("tmp"), self.sibling("old")] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The checksum file [`SwappedDir::commit`] writes into every folder it swaps in.
pub const SUMS: &str = "SHA256SUMS.json";

/// Checks `dir`'s files against its [`SUMS`] (absent: nothing to check).
fn verify_sums(dir: &Path) -> Result<()> {
    let path = dir.join(SUMS);
    if !path.is_file() {
        return Ok(());
    }
    let sums: std::collections::BTreeMap<String, String> = read_json(&path)?;
    for (name, want) in &sums {
        let f = dir.join(name);
        let got = sha256_of(&f)?;
        if &got != want {
            return Err(Error::invalid(format!(
                "{} is damaged: its sha256 is {got}, {} recorded {want}",
                f.display(),
                path.display()
            )));
        }
    }
    Ok(())
}

/// The sha256 of a regular file, lowercase hex, read in pieces (a config may name anything:
/// a device or a pipe is refused rather than read forever).
pub fn sha256_of(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::invalid(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(format!("{:x}", h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_half_deleted_previous_copy_goes_only_when_the_live_folder_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        let sw = SwappedDir::new(dir.path().join("checkpoint"));
        let tmp = sw.stage().unwrap();
        std::fs::write(tmp.join("w.bin"), b"weights").unwrap();
        sw.commit().unwrap();
        // What a kill during commit's final remove_dir_all leaves: checksums, a file gone.
        let old = dir.path().join("checkpoint.old");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join(SUMS), br#"{"w.bin": "00"}"#).unwrap();
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), vec![old.clone()]);
        assert!(dir.path().join("checkpoint/w.bin").is_file());
        // Without a complete live folder the previous copy is the only one: it stays.
        let other = dir.path().join("ckpt.old");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("w.bin"), b"weights").unwrap();
        std::fs::create_dir_all(dir.path().join("ckpt")).unwrap();
        assert!(remove_stale_temps(dir.path()).unwrap().is_empty());
        assert!(other.join("w.bin").is_file());
    }

    #[test]
    fn stale_temp_files_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        // What a writer killed before its rename leaves: a real temp file of write_atomic's.
        let target = sub.join("meta.json");
        let (tmp, _f) = create_tmp(&target).unwrap();
        let keep = [
            sub.join("meta.json"),
            sub.join(".meta.json.tmp"),
            sub.join(".meta.json.12-zz-3.tmp"),
            dir.path().join("notes.tmp"),
        ];
        for k in &keep {
            std::fs::write(k, b"x").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("ckpt.tmp")).unwrap();
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), vec![tmp.clone()]);
        assert!(!tmp.exists());
        assert!(keep.iter().all(|k| k.exists()) && dir.path().join("ckpt.tmp").is_dir());
    }

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/a.json");
        write_json(&p, &vec![1, 2, 3]).unwrap();
        write_json(&p, &vec![4]).unwrap();
        let back: Vec<i32> = read_json(&p).unwrap();
        assert_eq!(back, vec![4]);
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "temp files left: {names:?}");
    }

    #[test]
    fn a_writer_by_path_replaces_the_file_or_leaves_it_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, b"old").unwrap();
        let failed = write_atomic_via_path(&p, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err(Error::invalid("the writer failed"))
        });
        assert!(
            failed
                .unwrap_err()
                .to_string()
                .contains("the writer failed")
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        write_atomic_via_path(&p, |tmp| {
            assert!(tmp.exists() && tmp.parent() == p.parent());
            std::fs::write(tmp, b"new").map_err(|e| Error::io(tmp, e))
        })
        .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temp files left: {names:?}");
    }

    #[test]
    fn temp_files_are_never_shared_even_when_a_name_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run.json");
        let (a, _fa) = create_tmp(&p).unwrap();
        let (b, _fb) = create_tmp(&p).unwrap();
        assert_ne!(a, b);
        // Another writer's temp file (say a shard on another node with the same pid) already
        // holds the next name: it is left alone and a fresh one is taken.
        let name = b.file_name().unwrap().to_string_lossy().into_owned();
        let (stem, seq) = name.trim_end_matches(".tmp").rsplit_once('-').unwrap();
        let next: u64 = seq.parse::<u64>().unwrap() + 1;
        let foreign = dir.path().join(format!("{stem}-{next}.tmp"));
        std::fs::write(&foreign, "another writer's").unwrap();
        let (c, _fc) = create_tmp(&p).unwrap();
        assert!(c != foreign && c != a && c != b);
        assert_eq!(
            std::fs::read_to_string(&foreign).unwrap(),
            "another writer's"
        );
        write_atomic(&p, b"{}").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{}");
    }

    #[test]
    fn read_json_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.json");
        std::fs::write(&p, "{ nope").unwrap();
        let e = read_json::<serde_json::Value>(&p).unwrap_err().to_string();
        assert!(e.contains("bad.json") && e.contains("invalid JSON"), "{e}");
    }

    #[test]
    fn a_swapped_folder_is_found_after_a_kill_between_its_renames() {
        let dir = tempfile::tempdir().unwrap();
        let s = SwappedDir::new(dir.path().join("ckpt"));
        assert!(s.find("state.json").unwrap().is_none());
        for step in ["1", "2"] {
            let tmp = s.stage().unwrap();
            std::fs::write(tmp.join("state.json"), step).unwrap();
            s.commit().unwrap();
        }
        let read = |s: &SwappedDir| {
            std::fs::read_to_string(s.find("state.json").unwrap().unwrap().join("state.json"))
                .unwrap()
        };
        assert_eq!(read(&s), "2");
        // A kill after the first rename of a commit: live gone, old complete, tmp complete.
        let tmp = s.stage().unwrap();
        std::fs::write(tmp.join("state.json"), "3").unwrap();
        std::fs::rename(dir.path().join("ckpt"), dir.path().join("ckpt.old")).unwrap();
        assert_eq!(read(&s), "2");
        // A staging folder half written (no marker) is never read; the next commit recovers.
        let tmp = s.stage().unwrap();
        std::fs::write(tmp.join("state.json"), "4").unwrap();
        s.commit().unwrap();
        assert_eq!(read(&s), "4");
        s.remove();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_swapped_folder_damaged_after_commit_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let sw = SwappedDir::new(dir.path().join("ckpt"));
        assert_eq!(sw.find("state.json").unwrap(), None);
        let tmp = sw.stage().unwrap();
        std::fs::write(tmp.join("weights.bin"), b"good weights").unwrap();
        std::fs::write(tmp.join("state.json"), b"{}").unwrap();
        sw.commit().unwrap();
        let live = sw.find("state.json").unwrap().unwrap();
        assert!(live.join(SUMS).is_file());
        // One byte changed: refused, naming the file.
        std::fs::write(live.join("weights.bin"), b"good weightz").unwrap();
        let e = sw.find("state.json").unwrap_err().to_string();
        assert!(e.contains("weights.bin") && e.contains("damaged"), "{e}");
        // A good `.old` (a kill between the renames) is taken instead.
        let old = dir.path().join("ckpt.old");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("state.json"), b"{}").unwrap();
        assert_eq!(sw.find("state.json").unwrap(), Some(old));
    }
    #[test]
    fn a_file_with_the_same_bytes_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run.json");
        assert!(write_if_changed(&p, b"a").unwrap());
        let before = std::fs::metadata(&p).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!write_if_changed(&p, b"a").unwrap());
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), before);
        assert!(write_if_changed(&p, b"b").unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"b");
        assert!(write_json_if_changed(&p, &[1, 2]).unwrap());
        assert!(!write_json_if_changed(&p, &[1, 2]).unwrap());
    }
}
