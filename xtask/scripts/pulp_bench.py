"""Solves the search-benchmark instances with PuLP + CBC (the Python MIP stack NVIDIA's Puzzle
code uses) and prints one JSON line per instance: status, objective, seconds.

Usage: python pulp_bench.py DIR [REPEATS]   (DIR holds MipProblem JSON files written by the
Rust bench; the solve time reported is the median of REPEATS solves, 1 by default)
"""
import json
import math
import sys
import time
from pathlib import Path

import pulp

repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 1


def solve(p):
    t0 = time.perf_counter()
    m = pulp.LpProblem("puzzle", pulp.LpMinimize)
    x = [pulp.LpVariable(f"x{i}", cat="Binary") for i in range(p["num_vars"])]
    m += pulp.lpSum(c * x[i] for i, c in enumerate(p["objective"])) + p["objective_constant"]
    for g in p["groups"]:
        m += pulp.lpSum(x[v] for v in g) == 1
    for r in p["rows"]:
        e = pulp.lpSum(c * x[v] for v, c in r["coefs"])
        hi, lo = r["hi"], r["lo"]
        if hi is not None and math.isfinite(hi):
            m += e <= hi
        if lo is not None and math.isfinite(lo):
            m += e >= lo
    t1 = time.perf_counter()
    m.solve(pulp.PULP_CBC_CMD(msg=0, gapRel=1e-9, threads=1))
    t2 = time.perf_counter()
    return m, t1 - t0, t2 - t1


for f in sorted(Path(sys.argv[1]).glob("*.json")):
    p = json.loads(f.read_text())
    runs = [solve(p) for _ in range(repeats)]
    m = runs[-1][0]
    times = sorted(r[2] for r in runs)
    print(json.dumps({
        "name": f.stem,
        "status": pulp.LpStatus[m.status],
        "objective": pulp.value(m.objective),
        "build_seconds": sorted(r[1] for r in runs)[len(runs) // 2],
        "solve_seconds": times[len(times) // 2],
    }), flush=True)
