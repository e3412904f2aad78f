//! Stop requests: a signal (SIGTERM from Slurm's requeue or preemption, SIGUSR1 ahead of a time
//! limit, Ctrl-C) asks the loops that checkpoint (BLD, GKD) to save where they are and return
//! [`Error::Interrupted`], so a rerun or a requeued task resumes from that very step.
//!
//! The binary installs the signal handlers and calls [`on_signal`] from them; this module only
//! keeps the state, with atomics (async-signal-safe). While no loop is polling ([`Polling`]),
//! a signal keeps its default meaning: the process ends, and the atomic writes make that safe,
//! but it loses the work since the last periodic checkpoint. A second Ctrl-C while a stop is
//! pending ends the process at once.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use crate::error::Error;

/// How many loops poll for a stop request right now.
static POLLING: AtomicUsize = AtomicUsize::new(0);
/// The signal of the pending stop request (0: none).
static REQUESTED: AtomicI32 = AtomicI32::new(0);
/// SIGINT's number on every Unix this builds for.
const SIGINT: i32 = 2;

/// What a signal handler should do with a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// A polling loop will stop at its next step: do nothing more.
    Absorbed,
    /// Nobody polls (or the user pressed Ctrl-C twice): apply the signal's default action.
    Default,
}

/// Records `signal` as a stop request when a loop polls; called from a signal handler (uses
/// atomics only). A repeated SIGTERM or SIGUSR1 is absorbed (Slurm signals a job's processes
/// and the batch shell may forward the same signal); a repeated Ctrl-C is not.
pub fn on_signal(signal: i32) -> Disposition {
    if POLLING.load(Ordering::SeqCst) == 0 {
        return Disposition::Default;
    }
    match REQUESTED.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => Disposition::Absorbed,
        Err(_) if signal == SIGINT => Disposition::Default,
        Err(_) => Disposition::Absorbed,
    }
}

/// The signal of the pending stop request, if any.
pub fn requested() -> Option<i32> {
    match REQUESTED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// [`Error::Interrupted`] when a stop is pending, saying what was saved.
pub fn check(saved: impl FnOnce() -> String) -> Result<(), Error> {
    match requested() {
        Some(signal) => Err(Error::Interrupted {
            signal,
            saved: saved(),
        }),
        None => Ok(()),
    }
}

/// A loop that polls [`requested`] while this guard lives.
#[must_use = "signals are absorbed only while the guard lives"]
pub struct Polling(());

impl Polling {
    pub fn start() -> Polling {
        POLLING.fetch_add(1, Ordering::SeqCst);
        Polling(())
    }
}

impl Drop for Polling {
    fn drop(&mut self) {
        POLLING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Forgets a pending request (tests; a library caller that handled it and goes on).
pub fn clear() {
    REQUESTED.store(0, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the state is process-wide.
    #[test]
    fn signals_are_absorbed_only_while_a_loop_polls() {
        clear();
        assert_eq!(on_signal(15), Disposition::Default, "nobody polls");
        assert_eq!(requested(), None);
        {
            let _p = Polling::start();
            assert!(check(|| "x".into()).is_ok());
            assert_eq!(on_signal(15), Disposition::Absorbed);
            assert_eq!(requested(), Some(15));
            assert_eq!(on_signal(15), Disposition::Absorbed, "a forwarded repeat");
            assert_eq!(on_signal(SIGINT), Disposition::Default, "Ctrl-C twice");
            let e = check(|| "3 checkpoints".into()).unwrap_err();
            assert!(
                e.to_string().contains("signal 15") && e.to_string().contains("3 checkpoints"),
                "{e}"
            );
        }
        assert_eq!(on_signal(10), Disposition::Default, "the loop ended");
        clear();
        assert_eq!(requested(), None);
    }
}
