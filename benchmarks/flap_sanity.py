"""FLAP-style one-shot pruning of SmolLM2-135M: a sanity check of the FLAP building blocks.

Removes 20 % of all parameters (attention head groups and FFN channels) with the ``flap`` and ``wanda_sp``
criteria, each with the ``standardized`` (FLAP's AL-AM) and ``uniform`` allocations, and reports the perplexity
on held-out blocks of the default domains with and without bias compensation. No recovery training.

    nice -n 19 python benchmarks/flap_sanity.py flap_sanity.json
"""
import json
import sys
import time

import torch

import shear_graph as sg
from shear_graph.default_model import load_default_model
from shear_graph.knowledge import held_out_loss

RATIO, BLOCK_LEN, N_CALIB = 0.2, 128, 32


def ppl(model, blocks) -> float:
    return float(torch.tensor(held_out_loss(model, blocks)).exp())


def main(out_path: str) -> None:
    torch.manual_seed(0)
    model, tok = load_default_model()
    blocks = sg.make_blocks(tok, sg.default_domains(), block_len=BLOCK_LEN, n_eval=4, n_calib=N_CALIB)
    calib = blocks.all_calib()
    calib = calib[torch.randperm(len(calib), generator=torch.Generator().manual_seed(0))[:N_CALIB]]
    held = blocks.all_eval()
    groups = sg.find_groups(sg.trace(model))
    out = {"ratio": RATIO, "n_calib_blocks": len(calib), "block_len": BLOCK_LEN, "n_eval_blocks": len(held),
           "domains": list(blocks.eval), "dense_ppl": ppl(model, held), "runs": []}
    print("dense perplexity", out["dense_ppl"], flush=True)
    for criterion in ("flap", "wanda_sp"):
        t = time.time()
        sal = sg.compute_saliency(model, groups, criterion, calib, batch_size=4, progress=False)
        t_sal = time.time() - t
        for allocation in ("standardized", "uniform"):
            t = time.time()
            plan = sg.plan_by_saliency(model, groups, sal, RATIO, kinds=("attention_head", "ffn"),
                                       allocation=allocation)
            t_plan = time.time() - t
            t = time.time()
            comp = sg.compensate_plan(model, plan, calib, batch_size=4, progress=False)
            t_comp = time.time() - t
            pruned = sg.apply_plan(model, plan)
            widths = plan.widths_after()
            n_layers = len([g for g in groups if g.kind == "ffn"])
            row = {"criterion": criterion, "allocation": allocation,
                   "removed": round(1 - sg.count_params(pruned) / sg.count_params(model), 4),
                   "ppl": ppl(pruned, held), "ppl_compensated": ppl(sg.apply_plan(model, plan, compensate=comp), held),
                   "heads_kept": [widths[f"attention_head.L{i}"] for i in range(n_layers)],
                   "ffn_kept": [widths[f"ffn.L{i}"] for i in range(n_layers)],
                   "seconds": {"saliency": round(t_sal, 1), "plan": round(t_plan, 1), "compensate": round(t_comp, 1)}}
            out["runs"].append(row)
            print(json.dumps(row), flush=True)
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "flap_sanity.json")
