"""One LHSPG step inside a period (every attention-head and FFN group active)
against one LoRA recovery step on the same batch (issue 22's floor: at most 1.3x).

Both steps: forward, backward and optimizer step of a LoRA model (rank 8,
alpha 16, every linear of the decoder layers) on the same ``batch x block_len``
tokens; LHSPG's adds the trial AdamW, the half-space test, the decay of the
active channels and the hold of earlier-period ones. The two are timed in
alternation so a machine shared with other work slows both alike; medians.

    nice -n 19 .venv/bin/python benchmarks/lhspg_step.py [--model smollm2|tiny] [--device cpu|cuda]
        [--dtype float32|bfloat16] [--repeats 6] [--out benchmarks/results/lhspg_step.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

# this checkout's shear_graph, not an installed one (a script's sys.path starts at its own folder)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _model(name: str):
    if name == "smollm2":
        from shear_graph.default_model import load_default_model

        return load_default_model()[0]
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=256))


def step_times(model, *, batch: int = 4, block_len: int = 128, repeats: int = 6, active_share: float = 0.125,
               device="cpu", dtype=torch.float32, rank: int = 8, consume: bool = False,
               checkpointing: bool | None = None) -> dict:
    """Median (and least) seconds of one LHSPG step (all prunable groups active) and one
    recovery step.

    ``active_share`` of each attention-head and FFN group's channels are active
    (0.125: a 50 % ratio reached in 4 periods). ``consume``: train ``model`` itself
    for the LHSPG side (one copy of the weights fewer; ``model`` is changed).
    ``checkpointing`` as in :func:`shear_graph.progressive.lhspg_prune`, for both.
    """
    from shear_graph.adapters import gradient_checkpointing

    import shear_graph as sg
    from shear_graph.adapters import add_lora
    from shear_graph.lhspg import LHSPG

    device = torch.device(device)
    recovery_model = add_lora(copy.deepcopy(model).to(device, dtype), rank, 2 * rank)
    lhspg_model = add_lora((model if consume else copy.deepcopy(model)).to(device, dtype), rank, 2 * rank)
    groups = sg.find_groups(sg.trace(lhspg_model))
    active = {g.id: list(range(0, g.n_channels, max(1, round(1 / active_share))))
              for g in groups if g.kind in ("attention_head", "ffn")}
    opt = LHSPG(lhspg_model, groups, lambda period, chosen: active, lr=1e-4, n_periods=1,
                period_steps=10 * repeats + 10)
    adamw = torch.optim.AdamW([p for p in recovery_model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    ids = torch.randint(0, model.config.vocab_size, (batch, block_len), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    lhspg_model.train()
    recovery_model.train()

    def lhspg_step():
        opt.zero_grad(set_to_none=True)
        lhspg_model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        opt.step()

    def recovery_step():
        recovery_model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        adamw.step()
        adamw.zero_grad()

    def timed(fn) -> float:
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t

    times = {"lhspg": [], "recovery": []}
    with gradient_checkpointing(lhspg_model, checkpointing), gradient_checkpointing(recovery_model, checkpointing):
        lhspg_step()  # the period's first step: selection and index resolution, not timed
        recovery_step()
        for _ in range(repeats):
            times["lhspg"].append(timed(lhspg_step))
            times["recovery"].append(timed(recovery_step))
    med = {k: statistics.median(v) for k, v in times.items()}
    least = {k: min(v) for k, v in times.items()}
    return {"lhspg_s": round(med["lhspg"], 4), "recovery_s": round(med["recovery"], 4),
            "ratio": round(med["lhspg"] / med["recovery"], 3),
            "ratio_of_least": round(least["lhspg"] / least["recovery"], 3),
            "active_channels": sum(len(c) for c in active.values()), "tokens": batch * block_len,
            "device": str(device), "dtype": str(dtype).removeprefix("torch."), "repeats": repeats,
            "all_lhspg_s": [round(t, 4) for t in times["lhspg"]],
            "all_recovery_s": [round(t, 4) for t in times["recovery"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--block-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--out")
    args = ap.parse_args()
    row = {"model": args.model, **step_times(_model(args.model), batch=args.batch, block_len=args.block_len,
                                             repeats=args.repeats, device=args.device,
                                             dtype=getattr(torch, args.dtype)),
           "load_average": [round(x, 2) for x in os.getloadavg()], "threads": torch.get_num_threads()}
    print(json.dumps(row))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
