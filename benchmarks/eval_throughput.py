"""Tokens per second of batched continuation scoring against scoring one
continuation at a time, on SmolLM2-135M and real HellaSwag requests.

    SHEAR_GRAPH_EVAL_DATA=DIR python benchmarks/eval_throughput.py [--items 48] [--batch-size 16] [--rounds 3]

Both modes run the same scorer (:func:`shear_graph.scoring.loglikelihoods`)
on the same requests; batch size 1 is the one-at-a-time baseline. Rounds
alternate the two modes so that a neighbour's load hits both alike; the
median round is reported. Floor (issue 4): batched at least 2x.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from shear_graph.default_model import load_default_model
from shear_graph.scoring import encode_pair, loglikelihoods, max_length
from shear_graph.tasks import TASKS, data_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=48, help="HellaSwag items (4 requests each)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    model, tok = load_default_model()
    items = TASKS["hellaswag"].read(data_dir(args.data_dir) / TASKS["hellaswag"].path)[:args.items]
    encoded = [encode_pair(tok, c, x) for item in items for c, x in item.requests]
    limit = max_length(model)
    tokens = sum(min(len(c) + len(x) - 1, limit) for c, x in encoded)
    loglikelihoods(model, encoded[:8], batch_size=8)  # warm-up
    times = {1: [], args.batch_size: []}
    scores = {}
    for _ in range(args.rounds):
        for bs in times:
            t = time.perf_counter()
            scores[bs] = loglikelihoods(model, encoded, batch_size=bs)
            times[bs].append(time.perf_counter() - t)
    single, batched = (statistics.median(times[bs]) for bs in times)
    result = {
        "requests": len(encoded), "input_tokens": tokens, "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "one_at_a_time_tok_s": round(tokens / single, 1), "batched_tok_s": round(tokens / batched, 1),
        "speedup": round(single / batched, 2),
        "max_abs_score_difference": float(np.max(np.abs(np.subtract(scores[1], scores[args.batch_size])))),
        "seconds": {str(bs): [round(t, 2) for t in ts] for bs, ts in times.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
