"""shear-graph against Torch-Pruning, side by side, on this machine (issue 7).

    .venv/bin/python benchmarks/peers.py graph      # dependency structure and time to a pruned model
    .venv/bin/python benchmarks/peers.py report     # benchmarks/RESULTS.md from benchmarks/results/*.json

Each measurement runs in its own child process, so peak RSS figures do not mix;
results land in ``benchmarks/results/<part>.json`` and ``report`` renders them.

Torch-Pruning (``pip install torch-pruning``) is driven the way its LLM example
(examples/LLMs/prune_llm.py) does: ``MetaPruner`` with L2 group magnitude,
heads pruned per attention module (``num_heads`` of q/k/v), ``lm_head`` ignored,
head_dim kept, hidden and FFN channels at one uniform ratio. Its tracer does not
finish on transformers' Llama while rotary embedding is applied (it follows
``rotate_half``'s slices and concatenations through every layer), so the rotary
application is replaced by the identity while the dependency graph is built and
restored before the model is used. shear-graph needs no such workaround.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RATIO = 0.2
# TinyLlama-1.1B's shape (GQA 32 query / 4 KV heads), random weights
LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False)


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _current_rss_gb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def _load(model_name: str):
    import torch

    if model_name == "smollm2-135m":
        from shear_graph.default_model import load_default_model

        return load_default_model()[0]
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**LLAMA_1B)).eval()


def _n_params(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def child_shear_graph(model_name: str) -> dict:
    """trace + find_groups (the dependency structure), then plan + apply_plan."""
    import shear_graph as sg

    model = _load(model_name)
    base_rss, dense = _current_rss_gb(), _n_params(model)
    t0 = time.perf_counter()
    graph = sg.trace(model)
    groups = sg.find_groups(graph)
    t_graph = time.perf_counter() - t0
    plan = sg.plan_by_magnitude(model, groups, RATIO)
    pruned = sg.apply_plan(model, plan)
    t_total = time.perf_counter() - t0
    return {"graph_s": t_graph, "to_pruned_s": t_total, "peak_rss_gb": _rss_gb(), "model_rss_gb": base_rss,
            "removed": 1 - _n_params(pruned) / dense, "groups": len(groups)}


def _tp_prune(model, ratio: float) -> tuple:
    """Torch-Pruning's LLM recipe at one uniform channel ratio; returns the
    seconds to build the dependency graph and the total seconds."""
    import torch
    import torch_pruning as tp
    import transformers.models.llama.modeling_llama as llama

    model.set_attn_implementation("eager")  # repeat_kv visible to its tracer; SDPA's GQA is not
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    num_heads = {}
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            num_heads[m.q_proj] = model.config.num_attention_heads
            num_heads[m.k_proj] = model.config.num_key_value_heads
            num_heads[m.v_proj] = model.config.num_key_value_heads
    rotary = llama.apply_rotary_pos_emb
    t0 = time.perf_counter()
    llama.apply_rotary_pos_emb = lambda q, k, cos, sin, *a, **kw: (q, k)
    try:
        pruner = tp.pruner.MetaPruner(
            model, example_inputs=ids, importance=tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"),
            global_pruning=False, pruning_ratio=ratio, ignored_layers=[model.lm_head], num_heads=num_heads,
            prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio, round_to=4,
            forward_fn=lambda m, x: m(x, use_cache=False).logits)
    finally:
        llama.apply_rotary_pos_emb = rotary
    t_graph = time.perf_counter() - t0
    for group in pruner.step(interactive=True):
        group.prune()
    _tp_update_attributes(model)
    t_total = time.perf_counter() - t0
    with torch.no_grad():
        model(ids)  # the pruned model runs
    return t_graph, t_total


def child_tp_ratio(model_name: str) -> dict:
    """Torch-Pruning's uniform channel ratio that removes ``RATIO`` of the
    parameters, found by secant steps on copies (the removed share is close to
    linear in the ratio, up to its rounding to whole heads and to 4 channels)."""
    import copy

    model = _load(model_name)
    dense, ratio, removed = _n_params(model), RATIO, 0.0
    for _ in range(3):
        trial = copy.deepcopy(model)
        _tp_prune(trial, ratio)
        removed = 1 - _n_params(trial) / dense
        if abs(removed - RATIO) < 0.002:
            break
        ratio = min(0.95, ratio * RATIO / removed)
        del trial
    return {"channel_ratio": ratio}


def child_torch_pruning(model_name: str, ratio: str) -> dict:
    """DependencyGraph (inside MetaPruner) with rotary as identity, then pruner.step."""
    model = _load(model_name)
    base_rss, dense = _current_rss_gb(), _n_params(model)
    t_graph, t_total = _tp_prune(model, float(ratio))
    return {"graph_s": t_graph, "to_pruned_s": t_total, "peak_rss_gb": _rss_gb(), "model_rss_gb": base_rss,
            "removed": 1 - _n_params(model) / dense, "channel_ratio": float(ratio)}


def _tp_update_attributes(model) -> None:
    """What Torch-Pruning's LLM example does after pruning: module and config
    attributes from the new shapes (uniform across layers)."""
    cfg = model.config
    cfg.hidden_size = model.lm_head.in_features
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            heads, kv = m.q_proj.out_features // m.head_dim, m.k_proj.out_features // m.head_dim
            m.num_key_value_groups = heads // kv
            cfg.num_attention_heads, cfg.num_key_value_heads = heads, kv
        elif name.endswith("mlp"):
            cfg.intermediate_size = m.gate_proj.out_features


CHILDREN = {"shear-graph": child_shear_graph, "torch-pruning": child_torch_pruning, "tp-ratio": child_tp_ratio}


def run_child(tool: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "child", tool, *args], capture_output=True, text=True)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def part_graph() -> dict:
    rows = []
    for model_name in ("smollm2-135m", "llama-1.1b-random"):
        runs = {"shear-graph": (model_name,)}
        calibrated = run_child("tp-ratio", model_name)
        runs["torch-pruning"] = (model_name, str(calibrated["channel_ratio"])) if "error" not in calibrated else None
        for tool, args in runs.items():
            r = run_child(tool, *args) if args else calibrated
            rows.append({"model": model_name, "tool": tool, **r})
            print(json.dumps(rows[-1]), flush=True)
    scale = subprocess.run([sys.executable, str(HERE / "trace_scale.py")], capture_output=True, text=True)
    return {"rows": rows, "meta_scale": scale.stdout.strip().splitlines()}


def environment() -> dict:
    import psutil

    return {"machine": f"{platform.machine()}, {psutil.cpu_count()} CPU cores, "
                       f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, no GPU",
            "python": platform.python_version(),
            **{p: version(p) for p in ("torch", "transformers", "torch-pruning", "shear-graph")}}


def write_report() -> Path:
    parts = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    lines = ["# Benchmarks: shear-graph and its peers", "",
             "Generated by `benchmarks/peers.py report` from `benchmarks/results/*.json`; every figure on one "
             "machine, each measurement in its own process.", ""]
    if "graph" in parts:
        g = parts["graph"]
        env = g["environment"]
        lines += ["## Graph cost and time to a pruned model", "",
                  f"Command: `.venv/bin/python benchmarks/peers.py graph` ({g['date']}). {env['machine']}; "
                  f"Python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
                  f"torch-pruning {env['torch-pruning']}, shear-graph {env['shear-graph']}.", "",
                  "Dependency structure: shear-graph `trace` + `find_groups`; Torch-Pruning "
                  "`DependencyGraph.build_dependency` inside `MetaPruner` (rotary as identity while it traces). "
                  f"Time to a pruned model: from the loaded model to a smaller model with {RATIO:.0%} of the "
                  "parameters removed (shear-graph: + `plan_by_magnitude` + `apply_plan`; Torch-Pruning: + "
                  "`pruner.step`). Peak RSS includes the loaded model (its RSS in the last column).", "",
                  "| model | tool | dependency structure (s) | to pruned model (s) | removed | peak RSS (GB) | "
                  "model loaded (GB) |", "|---|---|---|---|---|---|---|"]
        for r in g["rows"]:
            if "error" in r:
                lines.append(f"| {r['model']} | {r['tool']} | failed: {r['error']} | | | | |")
                continue
            lines.append(f"| {r['model']} | {r['tool']} | {r['graph_s']:.1f} | {r['to_pruned_s']:.1f} | "
                         f"{r['removed']:.1%} | {r['peak_rss_gb']:.2f} | {r['model_rss_gb']:.2f} |")
        lines += ["", "shear-graph alone on meta-device configs (no weights; `benchmarks/trace_scale.py`):", "",
                  *[f"    {line}" for line in g["meta_scale"]], ""]
    path = HERE / "RESULTS.md"
    path.write_text("\n".join(lines))
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["graph", "report", "child"])
    parser.add_argument("args", nargs="*")
    args = parser.parse_args(argv)
    if args.part == "child":
        print(json.dumps(CHILDREN[args.args[0]](*args.args[1:])))
        return
    if args.part == "graph":
        RESULTS.mkdir(exist_ok=True)
        result = {"date": time.strftime("%Y-%m-%d"), "environment": environment(), **part_graph()}
        (RESULTS / "graph.json").write_text(json.dumps(result, indent=1))
    print(write_report())


if __name__ == "__main__":
    main()
