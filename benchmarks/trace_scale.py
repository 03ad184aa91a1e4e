"""Trace + find removal groups of Llama-2-7B and Llama-3-70B configs on the meta
device; print wall time and peak RSS of each (one child process per config, so
peaks do not mix).

    .venv/bin/python benchmarks/trace_scale.py [7b|70b|405b ...]

Floors on a 2-core CPU machine (issue 2): 7B <= 30 s and <= 2 GB; 70B <= 5 min;
(issue 22) Llama-3.1-405B <= 2 min and <= 4 GB.
"""
from __future__ import annotations

import json
import subprocess
import sys

CONFIGS = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
    "70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
    "405b": dict(hidden_size=16384, intermediate_size=53248, num_hidden_layers=126, num_attention_heads=128,
                 num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
}

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import shear_graph as sg
from transformers import LlamaConfig
t_import = time.perf_counter() - t0
cfg = LlamaConfig(**json.loads(sys.argv[1]))
t = time.perf_counter()
graph = sg.trace(cfg)
t_trace = time.perf_counter() - t
t = time.perf_counter()
groups = sg.find_groups(graph)
t_groups = time.perf_counter() - t
counts = sg.group_counts(groups)
print(json.dumps({
    "trace_s": round(t_trace, 1), "groups_s": round(t_groups, 1), "import_s": round(t_import, 1),
    "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    "head_groups": len(counts["attention_head"]), "kv_heads_per_layer": sorted(set(counts["attention_head"].values())),
    "ffn_channels_per_layer": sorted(set(counts["ffn"].values())), "hidden": counts["hidden"][None],
}))
"""


def main(names):
    for name in names or ["7b", "70b"]:  # 405b on request: minutes and GBs
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(CONFIGS[name])],
                             capture_output=True, text=True)
        if out.returncode:
            print(f"{name}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        total = r["trace_s"] + r["groups_s"]
        print(f"Llama {name:>4}: trace {r['trace_s']:6.1f} s + groups {r['groups_s']:6.1f} s = {total:6.1f} s, "
              f"peak RSS {r['peak_rss_gb']:.2f} GB | {r['head_groups']} layers x {r['kv_heads_per_layer']} head "
              f"groups, FFN {r['ffn_channels_per_layer']}, hidden {r['hidden']}")


if __name__ == "__main__":
    main(sys.argv[1:])
