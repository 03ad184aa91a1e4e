"""Tokens per second of batched continuation scoring against scoring one
continuation at a time, on SmolLM2-135M and real task requests.

    SHEAR_GRAPH_EVAL_DATA=DIR python benchmarks/eval_throughput.py [--items 16] [--batch-size 16] [--rounds 3]

The requests are the first ``--items`` items of BoolQ, PIQA, HellaSwag and
ARC-Easy. Batched: :func:`shear_graph.scoring.loglikelihoods` over all of a
task's requests (sorted, padded, identical inputs shared). One at a time:
the same function called once per request, so every continuation gets its
own forward pass. Throughput counts each request's input tokens, the same
number in both modes. Rounds alternate the modes, and each figure is the
fastest round (as ``timeit`` advises): on a shared machine a neighbour's load
only ever slows a round down. Floor (issue 4): batched at least 2x.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from shear_graph.default_model import load_default_model
from shear_graph.scoring import encode_pair, loglikelihoods
from shear_graph.tasks import TASKS, data_dir

TASK_NAMES = ("boolq", "piqa", "hellaswag", "arc_easy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=16, help="items per task")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    model, tok = load_default_model()
    requests = {}
    for name in TASK_NAMES:
        items = TASKS[name].read(data_dir(args.data_dir) / TASKS[name].path)[:args.items]
        requests[name] = [encode_pair(tok, c, x) for item in items for c, x in item.requests]
    loglikelihoods(model, requests["piqa"][:8], batch_size=8)  # warm-up

    modes = {
        "one_at_a_time": lambda enc: [loglikelihoods(model, [r], batch_size=1)[0] for r in enc],
        "batched": lambda enc: loglikelihoods(model, enc, batch_size=args.batch_size),
    }
    times = {(name, mode): [] for name in TASK_NAMES for mode in modes}
    differences = []
    for _ in range(args.rounds):
        for name in TASK_NAMES:
            scores = []
            for mode, score in modes.items():
                t = time.perf_counter()
                scores.append(score(requests[name]))
                times[name, mode].append(time.perf_counter() - t)
            differences.append(float(np.max(np.abs(np.subtract(*scores)))))

    rows, total = {}, {mode: 0.0 for mode in modes}
    tokens_all = 0
    for name in TASK_NAMES:
        tokens = sum(len(c) + len(x) - 1 for c, x in requests[name])
        tokens_all += tokens
        best = {mode: min(times[name, mode]) for mode in modes}
        for mode in modes:
            total[mode] += best[mode]
        rows[name] = {"requests": len(requests[name]), "input_tokens": tokens,
                      **{f"{mode}_tok_s": round(tokens / best[mode], 1) for mode in modes},
                      "speedup": round(best["one_at_a_time"] / best["batched"], 2)}
    result = {
        "model": "SmolLM2-135M-Instruct (float32)", "device": "cpu", "threads": torch.get_num_threads(),
        "batch_size": args.batch_size, "items_per_task": args.items, "rounds": args.rounds,
        "tasks": rows,
        "all": {"input_tokens": tokens_all, **{f"{mode}_tok_s": round(tokens_all / total[mode], 1) for mode in modes},
                "speedup": round(total["one_at_a_time"] / total["batched"], 2)},
        "max_abs_score_difference": max(differences),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
