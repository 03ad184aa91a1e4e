"""Long run of the soundness fuzzer (issue 20): random small programs over the
rule table's op families (tests/fuzz_programs.py); for each offered group a
random subset of channels must prune to a model that runs and equals masking
(fp32, atol 1e-5), or apply_plan must refuse without changing the model.

    nice -n 19 .venv/bin/python benchmarks/fuzz_engine.py --programs 20000 [--start 1000000] [--out benchmarks/results/fuzz.json]

Writes counts (programs, groups checked, outcomes by group kind, refusals by
reason, failures with their seed) to the JSON every --every programs, so an
interrupted run still reports what it checked. Seeds start at --start (the CI
slice uses 0..N-1).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fuzz_programs import new_stats, run_program  # noqa: E402


def write(stats: dict, path: Path, started: float, args) -> None:
    out = {
        "programs": stats["programs"], "groups_checked": stats["groups_checked"],
        "outcomes": dict(sorted(stats["outcomes"].items())), "refusals": dict(sorted(stats["refusals"].items())),
        "failures": len(stats["failures"]), "failure_examples": stats["failures"][:20],
        "seeds": [args.start, args.start + stats["programs"] - 1], "wall_s": round(time.time() - started),
        "load_avg_1min_at_end": os.getloadavg()[0], "target_programs": args.programs,
    }
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(out, f, indent=1)
    os.replace(f.name, path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--programs", type=int, default=20000)
    ap.add_argument("--start", type=int, default=1_000_000)
    ap.add_argument("--every", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fuzz.json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    stats, started = new_stats(), time.time()
    for seed in range(args.start, args.start + args.programs):
        run_program(seed, stats)
        if stats["programs"] % args.every == 0:
            write(stats, args.out, started, args)
    write(stats, args.out, started, args)
    print(json.dumps({k: stats[k] for k in ("programs", "groups_checked")} | {"failures": len(stats["failures"])}))


if __name__ == "__main__":
    main()
