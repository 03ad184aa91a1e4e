"""The gguf export run in llama.cpp: SmolLM2-135M pruned by ~20 % against PyTorch.

    python benchmarks/llama_cpp_check.py [--pruned DIR] [--ratio 0.2] [--new-tokens 24] [--rounds 3]
                                         [--build-timeout 5400]

llama-cpp-python is built once from its PyPI source distribution into the
running venv (niced, CMAKE_BUILD_PARALLEL_LEVEL=2, its own timeout) unless it
is importable already. The pruned model is ``--pruned`` (a save_pruned
folder, e.g. a main job's OUT/model) or a one-shot magnitude prune of the
default model (ffn and attention-head groups, per-layer widths). Checks:

- greedy continuation of 5 prompts: the token ids llama.cpp picks equal
  PyTorch's (fp32) for ``--new-tokens`` tokens, on f32 and f16 exports;
- max |logit difference| over every position of those sequences;
- decode tokens/s in llama.cpp of the pruned vs the dense model, both
  exported the same way (f16, deci arch): floor 0.9 x the parameter ratio
  dense / pruned. Rounds alternate the two models and each figure is the
  fastest round (a neighbour's load only ever slows a round down).

Results: benchmarks/results/export.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PROMPTS = ["The capital of Germany is", "def fibonacci(n):", "Once upon a time, there was a",
           "The three primary colors are", "To make a cup of tea, first"]
OUT = Path(__file__).parent / "results" / "export.json"


def ensure_llama_cpp(timeout: int) -> float:
    """Build llama-cpp-python from its source distribution unless it imports; seconds spent building."""
    try:
        import llama_cpp  # noqa: F401
        return 0.0
    except ImportError:
        pass
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL="2",
               CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
                          "-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF "
                          "-DLLAVA_BUILD=OFF")  # the multimodal library is a third of the build
    pip = [sys.executable, "-m", "pip", "install"]
    t = time.perf_counter()
    subprocess.run(pip + ["diskcache>=5.6"], check=True)  # its only dependency the venv lacks
    subprocess.run(["nice", "-n", "19"] + pip + ["--no-deps", "--no-binary", "llama-cpp-python",
                                                 "llama-cpp-python"], check=True, env=env, timeout=timeout)
    return time.perf_counter() - t


def pruned_model(args, model):
    import shear_graph as sg

    if args.pruned:
        return sg.load_pruned(args.pruned), f"load_pruned({args.pruned})"
    groups = sg.find_groups(sg.trace(model))
    plan = sg.plan_by_magnitude(model, groups, args.ratio, kinds=("ffn", "attention_head"))
    return sg.apply_plan(model, plan), f"one-shot magnitude, ratio {args.ratio}, ffn + attention_head"


def greedy_torch(model, ids: list, n: int) -> list:
    """Argmax continuation, end-of-text included (as the llama.cpp loop: no generation config)."""
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids):]


def greedy_llama(llm, ids: list, n: int) -> list:
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        llm.eval([tok])
    return out


def logit_diff(model, llm, ids: list) -> float:
    llm.reset()
    llm.eval(ids)
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    return float(np.abs(llm.scores[: len(ids)] - ref).max())


def decode_speed(llm, prompt: list, n: int) -> float:
    llm.reset()
    llm.eval(prompt)
    tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t = time.perf_counter()
    for _ in range(n):
        llm.eval([tok])
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    return n / (time.perf_counter() - t)


def torch_speed(model, rounds: int, seq: int = 256) -> float:
    """Forward tokens/s of ``model`` on one sequence of ``seq`` tokens, fastest of ``rounds``."""
    ids = torch.randint(0, model.config.vocab_size, (1, seq), generator=torch.Generator().manual_seed(0))
    best = 0.0
    with torch.no_grad():
        model(ids)
        for _ in range(rounds):
            t = time.perf_counter()
            model(ids)
            best = max(best, seq / (time.perf_counter() - t))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pruned", default=None, help="a save_pruned folder; default: one-shot prune")
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--speed-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--build-timeout", type=int, default=5400)
    args = parser.parse_args()

    build_s = ensure_llama_cpp(args.build_timeout)
    from llama_cpp import Llama

    import shear_graph as sg
    from shear_graph.default_model import load_default_model

    dense, tok = load_default_model()
    pruned, how = pruned_model(args, dense)
    params = {"dense": sg.count_params(dense), "pruned": sg.count_params(pruned)}
    work = Path(tempfile.mkdtemp(prefix="llama_cpp_check-"))
    files = {}
    for name, model, dtype in (("pruned_f32", pruned, "f32"), ("pruned_f16", pruned, "f16"),
                               ("dense_f16", dense, "f16")):
        files[name] = sg.export(model, work / f"{name}.gguf", format="gguf", dtype=dtype, tokenizer=tok)

    def load(name, logits_all=True):
        return Llama(model_path=str(files[name]), n_ctx=512, n_threads=args.threads, n_batch=512,
                     logits_all=logits_all, verbose=False)

    prompts = [tok(p).input_ids for p in PROMPTS]
    reference = [greedy_torch(pruned, ids, args.new_tokens) for ids in prompts]
    checks = {}
    for name in ("pruned_f32", "pruned_f16"):
        llm = load(name)
        got = [greedy_llama(llm, ids, args.new_tokens) for ids in prompts]
        same = [next((i for i, (a, b) in enumerate(zip(g, r)) if a != b), len(r)) for g, r in zip(got, reference)]
        checks[name] = {
            "identical_prefix_tokens": same,
            "all_identical": all(s == args.new_tokens for s in same),
            "max_abs_logit_diff": max(logit_diff(pruned, llm, ids + r) for ids, r in zip(prompts, reference)),
        }
        if name == "pruned_f16":
            checks[name]["continuations"] = [tok.decode(g) for g in got]
        llm.close()

    speed = {"dense_f16": [], "pruned_f16": []}
    llms = {k: load(k, logits_all=False) for k in speed}
    for _ in range(args.rounds):
        for name, llm in llms.items():
            speed[name].append(decode_speed(llm, prompts[0], args.speed_tokens))
    best = {k: max(v) for k, v in speed.items()}
    speedup = best["pruned_f16"] / best["dense_f16"]
    param_ratio = params["dense"] / params["pruned"]
    layout = sg.formats.read_layout(pruned)
    from transformers import AutoModelForCausalLM

    padded = AutoModelForCausalLM.from_pretrained(sg.export(pruned, work / "hf", format="hf")).eval()
    with torch.no_grad():
        ids = torch.tensor([prompts[0]])
        hf_diff = float((padded(ids).logits - pruned(ids).logits).abs().max())
    hf_speed = {"exact (load_pruned)": torch_speed(pruned, args.rounds), "padded (hf export)": torch_speed(
        padded, args.rounds), "dense": torch_speed(dense, args.rounds)}
    result = {
        "model": "SmolLM2-135M-Instruct", "pruned": how, "params": params,
        "removed_fraction": round(1 - params["pruned"] / params["dense"], 4),
        "per_layer": {"head_count": [w.num_heads for w in layout.layers],
                      "head_count_kv": [w.num_kv_heads for w in layout.layers],
                      "feed_forward_length": [w.intermediate_size for w in layout.layers]},
        "hf_padding": {**sg.formats.hf.padding_cost(layout), "max_abs_logit_diff_vs_load_pruned": hf_diff,
                       "torch_forward_tokens_per_s": {k: round(v, 1) for k, v in hf_speed.items()}},
        "greedy_new_tokens": args.new_tokens, "prompts": PROMPTS, "checks": checks,
        "decode_tokens_per_s": {k: [round(x, 1) for x in v] for k, v in speed.items()},
        "speedup_pruned_vs_dense": round(speedup, 3), "param_ratio_dense_vs_pruned": round(param_ratio, 3),
        "speed_floor_met": speedup >= 0.9 * param_ratio,
        "threads": args.threads, "llama_cpp_python": __import__("llama_cpp").__version__,
        "build_seconds": round(build_s, 1),
        "command": "python benchmarks/llama_cpp_check.py " + " ".join(sys.argv[1:]),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
