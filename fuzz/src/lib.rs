//! What the fuzz targets share: an allocator that holds every input to a memory budget
//! proportional to its size, and solvers that stand in for a plugin's or the real one, so a
//! fuzzed table or a fuzzed solver answer goes through the same checks as in `puzzle search`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use puzzle_types::Result;
use puzzle_types::search::mip::brute_force;
use puzzle_types::search::{
    BlockTable, BoundValue, Constraint, MipProblem, MipSolution, Objective, Op, SearchSpec, Sense,
    SolveOptions, Solver, run,
};

/// Counts live heap bytes and their peak, so a target can check what one input made us
/// allocate (libFuzzer's own `-malloc_limit_mb` is one absolute number for every input).
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            LIVE.fetch_sub(l.size(), Ordering::Relaxed);
            grew(new);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes one input may make us hold at once: a constant for fixed structures (compiled
/// regexes, registries) plus a multiple of the input, generous enough for f32 copies of
/// quantised tensors (Q4_0 holds 32 values in 18 bytes: 7x as f32) and parsed JSON trees.
pub fn budget(input_len: usize) -> usize {
    16 * 1024 * 1024 + 64 * input_len
}

/// Runs one input and fails it if the heap grew past [`budget`] on the way.
pub fn bounded(input: &[u8], f: impl FnOnce()) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    f();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    assert!(
        peak <= budget(input.len()),
        "a {}-byte input made us hold {peak} bytes at once (budget {})",
        input.len(),
        budget(input.len())
    );
}

/// Exhaustive search (the fuzzed tables are small).
pub struct Brute;

impl Solver for Brute {
    fn name(&self) -> &str {
        "brute"
    }
    fn solve(&self, p: &MipProblem, _: &SolveOptions) -> Result<MipSolution> {
        Ok(brute_force(p))
    }
}

/// A dynamic plugin's answer, whatever the problem.
pub struct Answer(pub MipSolution);

impl Solver for Answer {
    fn name(&self) -> &str {
        "plugin"
    }
    fn solve(&self, _: &MipProblem, _: &SolveOptions) -> Result<MipSolution> {
        Ok(self.0.clone())
    }
}

/// Minimise the first of the table's common metrics under `second <= 0.8x` the parent's (or
/// under nothing when there is one metric), as `puzzle search` builds it.
pub fn search(table: &BlockTable, solver: &dyn Solver) {
    let keys: Vec<String> = table.common_keys().into_iter().collect();
    let Some(objective) = keys.first() else {
        return;
    };
    let constraints = keys
        .get(1)
        .map(|k| Constraint {
            key: k.clone(),
            op: Op::Le,
            value: BoundValue::Relative(0.8),
        })
        .into_iter()
        .collect();
    let spec = SearchSpec {
        objective: Objective {
            key: objective.clone(),
            sense: Sense::Minimize,
        },
        constraints,
    };
    if let Ok(Ok(s)) = run::solve(table, &spec, solver, &SolveOptions::default()) {
        assert_eq!(s.choice_index.len(), table.groups.len());
    }
}

/// The tiny-llama fixture's spec, a parent for plugin-made subblock specs.
pub fn parent_spec() -> &'static puzzle_types::spec::ModelSpec {
    static SPEC: std::sync::OnceLock<puzzle_types::spec::ModelSpec> = std::sync::OnceLock::new();
    SPEC.get_or_init(read_parent_spec)
}

fn read_parent_spec() -> puzzle_types::spec::ModelSpec {
    puzzle_llama::link();
    let config: serde_json::Value =
        serde_json::from_str(include_str!("../seeds/config_json/tiny-llama-config.json"))
            .expect("the seed is JSON");
    let path = std::path::Path::new("tiny-llama/config.json");
    let families = puzzle_types::family::static_families();
    puzzle_types::family::family_for(&families, &config, path)
        .and_then(|f| f.parse_config(&config, path))
        .expect("the tiny-llama fixture parses")
}

/// Combinations a brute-force search would visit (saturating).
pub fn space(table: &BlockTable) -> usize {
    table
        .groups
        .iter()
        .fold(1usize, |n, g| n.saturating_mul(g.choices.len().max(1)))
}
