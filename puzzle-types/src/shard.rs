//! Which shard of a parallel stage this process is: `--shard INDEX/COUNT`, or `--shard auto`
//! read from the launcher's environment, so one job script serves every task of an array.
//!
//! | launcher | index | count |
//! |---|---|---|
//! | Slurm job array (`sbatch --array=A-B[:S]`) | `(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP` | `SLURM_ARRAY_TASK_COUNT` |
//! | Slurm tasks of one step (`srun -n N`) | `SLURM_PROCID` | `SLURM_NTASKS` |
//! | torchrun / torch.distributed | `RANK` | `WORLD_SIZE` |
//! | Kubernetes indexed Job | `JOB_COMPLETION_INDEX` | `PUZZLE_SHARD_COUNT` (the Job's `completions`; Kubernetes does not export it) |
//!
//! The first launcher whose index variable is set decides (in the table's order: an array
//! task that also runs under `srun` is still its array's shard).

use crate::error::{Error, Result};

/// Parses `INDEX/COUNT` (0 <= INDEX < COUNT), or `auto` (see the module).
pub fn parse(s: &str) -> Result<(usize, usize)> {
    if s.trim() == "auto" {
        return from_env(|k| std::env::var(k).ok());
    }
    let bad = || {
        Error::invalid(format!(
            "--shard `{s}`: expected INDEX/COUNT with 0 <= INDEX < COUNT, e.g. 0/4, or `auto` (from SLURM_ARRAY_TASK_ID, SLURM_PROCID, RANK or JOB_COMPLETION_INDEX)"
        ))
    };
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

/// `--shard auto` from the variables `get` returns (the process environment in [`parse`]).
pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<(usize, usize)> {
    let num = |k: &str| -> Result<Option<usize>> {
        match get(k) {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| {
                Error::invalid(format!(
                    "--shard auto: {k}=`{v}` is not a non-negative integer"
                ))
            }),
        }
    };
    let need = |k: &str, with: &str| -> Result<usize> {
        num(k)?.ok_or_else(|| Error::invalid(format!("--shard auto: {with} is set but {k} is not")))
    };
    let (index, count, from) = if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
        let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let step = num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
        let count = need("SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_ID")?;
        if id < min || (id - min) % step != 0 {
            return Err(Error::invalid(format!(
                "--shard auto: SLURM_ARRAY_TASK_ID={id} is not on the array's range (min {min}, step {step}); arrays with a list of ids (--array=1,5,9) need --shard INDEX/COUNT"
            )));
        }
        ((id - min) / step, count, "SLURM_ARRAY_TASK_ID")
    } else if let Some(p) = num("SLURM_PROCID")? {
        (p, need("SLURM_NTASKS", "SLURM_PROCID")?, "SLURM_PROCID")
    } else if let Some(r) = num("RANK")? {
        (r, need("WORLD_SIZE", "RANK")?, "RANK")
    } else if let Some(j) = num("JOB_COMPLETION_INDEX")? {
        (
            j,
            need("PUZZLE_SHARD_COUNT", "JOB_COMPLETION_INDEX")?,
            "JOB_COMPLETION_INDEX",
        )
    } else {
        return Err(Error::invalid(
            "--shard auto: none of SLURM_ARRAY_TASK_ID, SLURM_PROCID, RANK or JOB_COMPLETION_INDEX is set (not under Slurm, torchrun or a Kubernetes indexed Job): give --shard INDEX/COUNT",
        ));
    };
    if count == 0 || index >= count {
        return Err(Error::invalid(format!(
            "--shard auto: shard {index} of {count} (from {from}) is out of range"
        )));
    }
    Ok((index, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn each_launcher_names_its_shard() {
        // `sbatch --array=1-8`: ids 1..8, the 3rd task is shard 2 of 8.
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
        ]);
        assert_eq!(from_env(slurm).unwrap(), (2, 8));
        // `--array=0-15:4`: ids 0, 4, 8, 12.
        let stepped = env(&[
            ("SLURM_ARRAY_TASK_ID", "8"),
            ("SLURM_ARRAY_TASK_STEP", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(from_env(stepped).unwrap(), (2, 4));
        let srun = env(&[("SLURM_PROCID", "5"), ("SLURM_NTASKS", "6")]);
        assert_eq!(from_env(srun).unwrap(), (5, 6));
        let torch = env(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")]);
        assert_eq!(from_env(torch).unwrap(), (1, 2));
        let k8s = env(&[("JOB_COMPLETION_INDEX", "0"), ("PUZZLE_SHARD_COUNT", "3")]);
        assert_eq!(from_env(k8s).unwrap(), (0, 3));
    }

    #[test]
    fn what_is_missing_or_wrong_is_named() {
        let msg = |vars: &[(&str, &str)]| from_env(env(vars)).unwrap_err().to_string();
        assert!(msg(&[]).contains("none of SLURM_ARRAY_TASK_ID"));
        assert!(msg(&[("JOB_COMPLETION_INDEX", "2")]).contains("PUZZLE_SHARD_COUNT is not"));
        assert!(msg(&[("RANK", "x"), ("WORLD_SIZE", "2")]).contains("RANK=`x`"));
        assert!(msg(&[("RANK", "2"), ("WORLD_SIZE", "2")]).contains("shard 2 of 2 (from RANK)"));
        let off = msg(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_STEP", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert!(off.contains("not on the array's range"), "{off}");
        assert_eq!(parse("3/8").unwrap(), (3, 8));
        for bad in ["8/8", "1/0", "a/2", "3"] {
            assert!(
                parse(bad).unwrap_err().to_string().contains("INDEX/COUNT"),
                "{bad}"
            );
        }
    }
}
