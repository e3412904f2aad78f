//! Terminal output: progress bars with ETA and readable tables.

use std::time::Duration;

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar on stderr with rate and ETA; hidden when stderr is not a terminal.
pub fn bar(total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {pos}/{len} ({per_sec}, ETA {eta}) {prefix}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(250));
    pb
}

/// A table with a header row, right-aligned numbers.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    t
}

/// Human bytes: 1.5 KiB, 12.0 MiB...
pub fn bytes(n: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", units[u])
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Human counts: 1.2K, 135.0M, 70.6B.
pub fn count(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}K", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

/// Draws [`puzzle_core::progress::Progress`] reports as indicatif bars on stderr.
pub struct Bars {
    bar: Option<ProgressBar>,
    phase: String,
    total: u64,
    started: std::time::Instant,
    last_line: std::time::Instant,
}

impl Bars {
    pub fn new() -> Self {
        Bars {
            bar: None,
            phase: String::new(),
            total: 0,
            started: std::time::Instant::now(),
            last_line: std::time::Instant::now(),
        }
    }
}

impl Default for Bars {
    fn default() -> Self {
        Self::new()
    }
}

impl puzzle_core::progress::Progress for Bars {
    fn start(&mut self, phase: &str, total: u64) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        let pb = ProgressBar::new(total);
        pb.set_style(
            ProgressStyle::with_template(
                "{prefix:>10} [{bar:28}] {pos}/{len} {elapsed_precise} ETA {eta_precise} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_prefix(phase.to_string());
        pb.enable_steady_tick(Duration::from_millis(500));
        self.bar = Some(pb);
        self.phase = phase.to_string();
        self.total = total;
        self.started = std::time::Instant::now();
        self.last_line = self.started;
    }

    fn set(&mut self, pos: u64, status: &str) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
            b.set_message(status.to_string());
            // Without a terminal the bar is hidden: leave a line in the log now and then.
            if b.is_hidden() && self.last_line.elapsed() >= Duration::from_secs(30) {
                self.last_line = std::time::Instant::now();
                eprintln!(
                    "{} {pos}/{} ({:.0} s) {status}",
                    self.phase,
                    self.total,
                    self.started.elapsed().as_secs_f64()
                );
            }
        }
    }

    fn note(&mut self, line: &str) {
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(line),
            _ => eprintln!("{line}"),
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
