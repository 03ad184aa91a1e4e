"""The main job's stages on a random-weight Llama-2-7B, bf16, on one GPU, at
1 x 2048 tokens per step (issue 22). Prints and writes one JSON object:
peak GPU memory, seconds per LHSPG and recovery step (and their ratio), and the
time of trace + groups, Taylor saliency + knowledge analysis, LHSPG (a few
steps) and applying the plan. Floors on one H100: peak under 70 GB, LHSPG step at
most 1.3x a recovery step, every stage completes; whole script under 8 minutes.

The stages are those of :func:`shear_graph.prune` (same functions, same order,
the same in-place handling of copies), fed random token blocks, so no tokenizer
or text has to travel to the GPU machine.

    python benchmarks/gpu_scale.py [--out $OUT/gpu_scale.json]       # on the GPU
    python benchmarks/gpu_scale.py --smoke                            # tiny config on CPU, seconds
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
# this checkout's shear_graph, not an installed one (a script's sys.path starts at its own folder)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lhspg_step import step_times  # noqa: E402

LLAMA_2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
SMOKE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=256, max_position_embeddings=256)


def run(smoke: bool) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    import shear_graph as sg
    from shear_graph.progressive import lhspg_prune

    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    seq = 64 if smoke else 2048
    cfg = LlamaConfig(**(SMOKE if smoke else LLAMA_2_7B))
    out = {"config": "smoke" if smoke else "llama-2-7b", "device": torch.cuda.get_device_name() if not smoke else "cpu",
           "dtype": str(dtype).removeprefix("torch."), "tokens_per_step": seq, "seconds": {}}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(name, fn):
        sync()
        t = time.perf_counter()
        value = fn()
        sync()
        out["seconds"][name] = round(time.perf_counter() - t, 2)
        print(f"{name}: {out['seconds'][name]} s", flush=True)
        return value

    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, cfg.vocab_size, (12, seq), generator=gen)
    calib, probe, train = blocks[:2], blocks[2:4], blocks[4:]

    def build():
        torch.manual_seed(0)
        torch.set_default_dtype(dtype)
        try:
            with device:
                return LlamaForCausalLM(cfg).eval()
        finally:
            torch.set_default_dtype(torch.float32)

    dense = timed("build", build)
    out["params"] = sum(p.numel() for p in dense.parameters())
    groups = timed("trace + groups", lambda: sg.find_groups(sg.trace(dense)))
    sal = timed("taylor saliency", lambda: sg.compute_saliency(dense, groups, "taylor", calib, batch_size=1,
                                                                progress=False))
    km = timed("knowledge analysis", lambda: sg.analyze_knowledge(dense, groups, sal, probe[:1], batch_size=1,
                                                                  progress=False))
    result = timed("LHSPG (6 steps)", lambda: lhspg_prune(
        dense, train, 0.2, knowledge=km, warmup_steps=1, n_periods=1, period_steps=4, final_steps=1, batch_size=1,
        device=device, dtype=dtype, progress=False))
    pruned = timed("apply plan", lambda: sg.apply_plan(result.model, result.plan, inplace=True))
    del result
    out["pruned_params"] = sum(p.numel() for p in pruned.parameters())
    ref = {"random": sg.held_out_loss(dense, probe, batch_size=1)}
    timed("recovery (3 steps)", lambda: sg.recover(
        pruned, {"random": train}, {"random": probe}, ref, steps=3, batch_size=1, update_every=10, device=device,
        dtype=dtype, inplace=True, progress=False))
    del pruned
    if device.type == "cuda":
        out["peak_gb_job"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.empty_cache()
    # the floor: one LHSPG step inside a period against one recovery step, same batch; the
    # dense model becomes the LHSPG side (two copies in memory, as in the job)
    out["steps"] = timed("step timing", lambda: step_times(dense, batch=1, block_len=seq, repeats=3,
                                                           device=device, dtype=dtype, consume=True))
    if device.type == "cuda":
        out["peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    out["floors"] = {"peak_under_70gb": out.get("peak_gb", 0) < 70, "lhspg_step_at_most_1.3x":
                     out["steps"]["ratio"] <= 1.3}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a tiny config on CPU, to check the script")
    ap.add_argument("--out")
    args = ap.parse_args()
    t = time.perf_counter()
    row = run(args.smoke)
    row["total_s"] = round(time.perf_counter() - t, 1)
    print(json.dumps(row))
    if args.out:
        Path(args.out).write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
