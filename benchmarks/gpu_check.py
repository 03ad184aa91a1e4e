"""The GPU path at size: stage times of the main job and of each step on one GPU, bf16.

Weights are random (the default model's weights do not travel to a lent GPU
machine; times do not depend on weight values):

* ``main``: :func:`shear_graph.prune` at its default settings on a random
  model of SmolLM2-135M's shape with its tokenizer (``--tokenizer``), zero-shot
  tasks off; wall time per stage.
* ``1b``: a 1.1B Llama (TinyLlama's shape, GQA 32/4): trace + groups, Taylor
  saliency, a 20 % plan, physical pruning, LHSPG and recovery step times,
  forward tokens/s dense vs pruned.

    python benchmarks/gpu_check.py --tokenizer DIR [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def _timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    value = fn()
    torch.cuda.synchronize()
    return value, round(time.perf_counter() - t, 2)


def main_job(tokenizer_dir: str) -> dict:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    import shear_graph as sg

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, head_dim=64,
                         max_position_embeddings=8192, rope_theta=100000.0)
    model, tok = LlamaForCausalLM(config), AutoTokenizer.from_pretrained(tokenizer_dir)
    settings = sg.PruneSettings(device="cuda", dtype="bfloat16", eval_tasks=())
    with tempfile.TemporaryDirectory() as out:
        result, total = _timed(lambda: sg.prune(model, tok, out=Path(out) / "job", settings=settings,
                                                eval_domains=[], progress=False))
    return {"total_s": total, "stages_s": result.seconds,
            "params": {k: v["params"] for k, v in result.stages.items()},
            "tokens_per_s": {k: round(v["tokens_per_s"]) for k, v in result.stages.items()}}


def one_b() -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    import shear_graph as sg
    from shear_graph.pipeline import tokens_per_second

    config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                         num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    row = {"params": sg.count_params(model)}
    groups, row["trace_groups_s"] = _timed(lambda: sg.find_groups(sg.trace(model)))
    blocks = torch.randint(0, config.vocab_size, (16, 512))
    sal, row["taylor_saliency_16x512_s"] = _timed(lambda: sg.compute_saliency(model, groups, "taylor", blocks,
                                                                              batch_size=4))
    plan, row["plan_s"] = _timed(lambda: sg.plan_by_saliency(model, groups, sal, 0.2))
    pruned, row["apply_s"] = _timed(lambda: sg.apply_plan(model, plan))
    row["pruned_params"] = sg.count_params(pruned)
    row["tokens_per_s_1x512"] = {"dense": round(tokens_per_second(model)), "pruned": round(tokens_per_second(pruned))}
    steps = 2 + 2 * 3 + 2
    _, row["lhspg_10_steps_4x512_s"] = _timed(lambda: sg.lhspg_prune(
        model, blocks, 0.2, warmup_steps=2, n_periods=2, period_steps=3, final_steps=2, batch_size=4,
        device="cuda", dtype=torch.bfloat16, progress=False))
    row["lhspg_steps"] = steps
    train = {"a": blocks[:8], "b": blocks[8:]}
    probe = {d: b[:2] for d, b in train.items()}
    ref = {d: sg.held_out_loss(pruned, b) for d, b in probe.items()}
    _, row["recovery_10_steps_4x512_s"] = _timed(lambda: sg.recover(
        pruned, train, probe, ref, steps=10, batch_size=4, update_every=5, device="cuda", dtype=torch.bfloat16,
        progress=False))
    row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    return row


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="folder with the SmolLM2 tokenizer files")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; this check needs one")
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    for name, part in (("1b", one_b), ("main", lambda: main_job(args.tokenizer))):
        results[name] = part()
        print(name, json.dumps(results[name]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
