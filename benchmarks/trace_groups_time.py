"""Trace + find_groups wall time on SmolLM2-135M (the default model), and its group counts.

    nice -n 19 .venv/bin/python benchmarks/trace_groups_time.py [--repeats 5] [--label after]

Prints one JSON line: median and min of ``trace`` + ``find_groups`` over the
repeats (the first, warm-up run not counted), the 1-minute load average before
and after, and the group counts (which must stay 30 x 3 head groups, 30 x 1536
FFN channels and one hidden group of 576).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    import shear_graph as sg
    from shear_graph.default_model import load_default_model

    model, _ = load_default_model()
    load0 = os.getloadavg()[0]
    times, trace_s, groups_s = [], [], []
    for i in range(args.repeats + 1):
        t0 = time.perf_counter()
        graph = sg.trace(model)
        t1 = time.perf_counter()
        groups = sg.find_groups(graph)
        t2 = time.perf_counter()
        if i:
            times.append(t2 - t0)
            trace_s.append(t1 - t0)
            groups_s.append(t2 - t1)
    counts = sg.group_counts(groups)
    print(json.dumps({
        "label": args.label, "model": "SmolLM2-135M", "repeats": args.repeats,
        "trace_groups_median_s": round(statistics.median(times), 3), "trace_groups_min_s": round(min(times), 3),
        "trace_median_s": round(statistics.median(trace_s), 3), "groups_median_s": round(statistics.median(groups_s), 3),
        "load_avg_1min_before": load0, "load_avg_1min_after": os.getloadavg()[0],
        "head_groups": {str(k): v for k, v in counts["attention_head"].items()} == {str(i): 3 for i in range(30)},
        "ffn_1536_x30": counts["ffn"] == {i: 1536 for i in range(30)}, "hidden": counts["hidden"],
    }))


if __name__ == "__main__":
    main()
