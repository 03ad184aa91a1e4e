"""Peak memory of the main job (:func:`shear_graph.prune`, reduced step counts) on
random-weight Llama configs, against the memory model of ``docs/scale.md``.

Each (config, dtype) runs in a child process, so peaks do not mix; the peak is
the child's ``ru_maxrss``. The model is built directly in its dtype (no float32
copy on the way), with SmolLM2's tokenizer and the embedded default training
text. Results go to ``benchmarks/results/memory.json``.

    nice -n 19 .venv/bin/python benchmarks/memory_scale.py [135m 360m 1.1b] [--dtypes float32 bfloat16]
    .venv/bin/python benchmarks/memory_scale.py --predict      # the model's GPU predictions only
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "memory.json"
GB = 2 ** 30

LLAMA = {  # random-weight stand-ins of public shapes
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True),
    "360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                 num_key_value_heads=5, head_dim=64, vocab_size=49152, tie_word_embeddings=True),
    "1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, vocab_size=49152),
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256),
}
# the reduced main job: every stage runs, each for one or two steps
JOB = dict(ratio=0.2, block_len=128, batch_size=2, n_eval=1, n_probe=1, n_train=8, warmup_steps=1, n_periods=1,
           period_steps=2, final_steps=1, recovery_steps=2, update_every=1, baseline=None, eval_tasks=(),
           eval_limit=None)


def n_params(cfg: dict) -> int:
    """Parameters of a Llama config (embeddings once when tied)."""
    h, f, n, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    d = cfg.get("head_dim", h // cfg["num_attention_heads"])
    attn = h * d * (2 * cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"])
    per_layer = attn + 3 * h * f + 2 * h
    return n * per_layer + v * h * (1 if cfg.get("tie_word_embeddings") else 2) + h


def lora_params(cfg: dict, rank: int = 8) -> int:
    """LoRA factors on every linear of the decoder layers: ``r (in + out)`` each."""
    h, f, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    d = cfg.get("head_dim", h // cfg["num_attention_heads"])
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    return n * rank * ((h + q) * 2 + (h + kv) * 2 + 3 * (h + f))


def predict(cfg: dict, dtype_bytes: int, tokens: int, checkpointing: bool, rank: int = 8) -> dict:
    """Peak bytes of the main job by the memory model of docs/scale.md: the larger of

    * a training step (LHSPG or recovery): the dense model and one working model
      (``2 W``), the LoRA state (factors, gradients, AdamW's two moments, float32),
      the stored activations (with ``checkpointing``: each layer's input plus one
      layer's) and the logits;
    * a Taylor saliency pass (knowledge analysis, each LHSPG period's selection), in
      eval mode so never checkpointed: ``2 W`` plus one gradient of the base weights
      in their dtype (``3 W``), every layer's activations and the logits.

    Per token and decoder layer ``10 h + 4 f`` stored values in the dtype; logits:
    per token the vocabulary in the dtype and three float32 copies (upcast,
    log-softmax, its gradient).
    """
    h, f, n, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    w = n_params(cfg) * dtype_bytes
    per_layer = (10 * h + 4 * f) * dtype_bytes * tokens
    full = n * per_layer
    logits = tokens * v * (dtype_bytes + 12)
    train = {"weights": 2 * w, "lora": 16 * lora_params(cfg, rank),
             "activations": (n * h * dtype_bytes * tokens + per_layer) if checkpointing else full, "logits": logits}
    saliency = {"weights": 3 * w, "lora": 16 * lora_params(cfg, rank), "activations": full, "logits": logits}
    out = max(train, saliency, key=lambda d: sum(d.values()))
    return {**out, "phase": "training step" if out is train else "saliency pass", "total": sum(out.values())}


CHILD = r"""
import json, os, resource, sys, tempfile, time
from pathlib import Path
import torch
import shear_graph as sg
from shear_graph.default_model import cache_dir, DEFAULT_MODEL
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
cfg, dtype, job = json.loads(sys.argv[1]), getattr(torch, sys.argv[2]), json.loads(sys.argv[3])
tok = AutoTokenizer.from_pretrained(sys.argv[4])
base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
torch.manual_seed(0)
torch.set_default_dtype(dtype)
model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
torch.set_default_dtype(torch.float32)
weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
t = time.perf_counter()
with tempfile.TemporaryDirectory() as out:
    result = sg.prune(model, tok, out=Path(out) / "job", settings=sg.PruneSettings(dtype=sys.argv[2], **job),
                      eval_domains=[], progress=False)
print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "base_rss": base_rss,
                  "weight_bytes": weight_bytes, "params": sum(p.numel() for p in model.parameters()),
                  "seconds": round(time.perf_counter() - t, 1), "stages_s": result.seconds}))
"""


def measure(name: str, dtype: str) -> dict:
    from shear_graph.default_model import cache_dir

    tok_dir = next(p for p in cache_dir().iterdir() if (p / "tokenizer.json").is_file())
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(LLAMA[name]), dtype, json.dumps(JOB), str(tok_dir)],
                         capture_output=True, text=True, cwd=HERE.parent)  # this checkout's shear_graph
    if out.returncode:
        raise SystemExit(f"{name} {dtype} failed:\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    size = 4 if dtype == "float32" else 2
    model = predict(LLAMA[name], size, JOB["batch_size"] * JOB["block_len"], checkpointing=False)
    r.update(config=name, dtype=dtype, tokens_per_step=JOB["batch_size"] * JOB["block_len"],
             peak_over_weights=round(r["peak_rss"] / r["weight_bytes"], 2),
             predicted=model["total"] + r["base_rss"], predicted_over_measured=None)
    r["predicted_over_measured"] = round(r["predicted"] / r["peak_rss"], 3)
    return r


def gpu_predictions() -> list:
    rows = []
    for name in ("llama-2-7b", "llama-3-8b"):
        p = predict(LLAMA[name], 2, 2048, checkpointing=True)
        rows.append({"config": name, "dtype": "bfloat16", "tokens_per_step": 2048, "checkpointing": True,
                     "params": n_params(LLAMA[name]), "phase": p.pop("phase"),
                     **{k: round(v / GB, 2) for k, v in p.items()},
                     "fits_80gb": p["total"] < 80e9 * 0.95})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*", default=["135m", "360m"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--predict", action="store_true", help="print the GPU predictions only")
    args = ap.parse_args()
    saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"measured": []}
    if not args.predict:
        for name in args.configs:
            for dtype in args.dtypes:
                row = measure(name, dtype)
                print(f"{name:>5} {dtype:>8}: peak RSS {row['peak_rss'] / GB:6.2f} GB = "
                      f"{row['peak_over_weights']:5.2f} x weights ({row['weight_bytes'] / GB:.2f} GB); model "
                      f"{row['predicted'] / GB:6.2f} GB ({row['predicted_over_measured']:.2f} x measured), "
                      f"{row['seconds']} s", flush=True)
                saved["measured"] = [r for r in saved["measured"] if (r["config"], r["dtype"]) != (name, dtype)]
                saved["measured"].append(row)
                saved["gpu_predictions"] = gpu_predictions()
                RESULTS.parent.mkdir(exist_ok=True)
                RESULTS.write_text(json.dumps(saved, indent=1))
    for row in gpu_predictions():
        print(f"{row['config']} bf16, 1 x 2048 tokens, checkpointing: predicted peak {row['total']:.1f} GB "
              f"at a {row['phase']} (weights {row['weights']:.1f}, activations {row['activations']:.1f}, logits {row['logits']:.1f},"
              f" LoRA state {row['lora']:.2f}); fits 80 GB: {row['fits_80gb']}")


if __name__ == "__main__":
    main()
