//! Progress reporting from long-running library loops to whatever front end drives them (the CLI
//! draws indicatif bars; tests pass [`Silent`]).

/// The contract: `start` once per phase, `set` as work advances (position within `total`, and a
/// short status such as the loss), `note` for lines worth keeping, `finish` at the end.
pub trait Progress {
    /// A new phase of `total` units (0 when unknown).
    fn start(&mut self, phase: &str, total: u64);
    /// Work done so far in the phase, with a short status.
    fn set(&mut self, pos: u64, status: &str);
    /// A line to keep (printed above the bar).
    fn note(&mut self, line: &str);
    /// The phase ended.
    fn finish(&mut self);
}

/// Reports nothing.
#[derive(Default)]
pub struct Silent;

impl Progress for Silent {
    fn start(&mut self, _phase: &str, _total: u64) {}
    fn set(&mut self, _pos: u64, _status: &str) {}
    fn note(&mut self, _line: &str) {}
    fn finish(&mut self) {}
}
