"""shear-graph against Torch-Pruning, side by side, on this machine (issue 7).

    .venv/bin/python benchmarks/peers.py graph      # dependency structure and time to a pruned model
    .venv/bin/python benchmarks/peers.py quality 0.2 [--general-text [--self-text]] [VARIANT]
                                                    # perplexity, zero-shot and tokens/s, peers beside (about 1 h;
                                                    # VARIANT: --layer-shares knowledge, --distill W, --keep-layers
                                                    # 0,1,-1, --kinds ffn, --period-steps N run LoRAShear alone,
                                                    # beside the base run's peers, from its knowledge analysis)
    .venv/bin/python benchmarks/peers.py speed 0.2 [--general-text [--self-text]] [VARIANT]
                                                    # tokens/s of a finished quality run's models, interleaved
    .venv/bin/python benchmarks/peers.py widths     # tokens/s of uniform, per-layer and rounded FFN widths
    .venv/bin/python benchmarks/peers.py report     # benchmarks/RESULTS.md from benchmarks/results/*.json

``quality`` needs the zero-shot task folder (``SHEAR_GRAPH_EVAL_DATA``; README,
"Evaluation data") and the Debian packages ``dict-devil`` (the out-of-domain
Devil's Dictionary column) and, with ``--general-text``, ``fortunes``. Its stage
models and HTML report stay under ``benchmarks/work/`` (not in git).

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
import importlib.util
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
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


def _tp_prune(model, ratio: float, recipe: str = "tp-magnitude", calib=None) -> tuple:
    """One Torch-Pruning run at a uniform channel ratio; returns the seconds to
    build the dependency graph and the total seconds.

    ``tp-magnitude``: its LLM example (L2 group magnitude; hidden, head and FFN
    channels; ``lm_head`` ignored). ``llm-pruner-taylor``: LLM-Pruner's recipe in
    Torch-Pruning terms: first-order Taylor importance (Element1) from the loss
    on ``calib`` (10 blocks), heads and FFN channels only (no hidden channel:
    ``o_proj``/``down_proj`` never pruned at their outputs), uniform over layers
    4..N-2, the others left whole.
    """
    import torch
    import torch_pruning as tp
    import transformers.models.llama.modeling_llama as llama

    model.set_attn_implementation("eager")  # repeat_kv visible to its tracer; SDPA's GQA is not
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    layers = model.model.layers
    num_heads, ignored = {}, [model.lm_head]
    for m in layers:
        num_heads[m.self_attn.q_proj] = model.config.num_attention_heads
        num_heads[m.self_attn.k_proj] = model.config.num_key_value_heads
        num_heads[m.self_attn.v_proj] = model.config.num_key_value_heads
    if recipe == "llm-pruner-taylor":
        kept = [m for i, m in enumerate(layers) if not 4 <= i < len(layers) - 2]
        ignored += [lin for m in kept for lin in m.modules() if isinstance(lin, torch.nn.Linear)]
        ignored += [lin for m in layers for lin in (m.self_attn.o_proj, m.mlp.down_proj)]
        importance = tp.importance.GroupTaylorImportance()
    else:
        importance = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean")
    rotary = llama.apply_rotary_pos_emb
    t0 = time.perf_counter()
    llama.apply_rotary_pos_emb = lambda q, k, cos, sin, *a, **kw: (q, k)
    try:
        pruner = tp.pruner.MetaPruner(
            model, example_inputs=ids, importance=importance, global_pruning=False, pruning_ratio=ratio,
            ignored_layers=ignored, num_heads=num_heads, prune_num_heads=True, prune_head_dims=False,
            head_pruning_ratio=ratio, round_to=4, forward_fn=lambda m, x: m(x, use_cache=False).logits)
    finally:
        llama.apply_rotary_pos_emb = rotary
    t_graph = time.perf_counter() - t0
    if recipe == "llm-pruner-taylor":
        model.zero_grad()
        model(calib[:10], labels=calib[:10], use_cache=False).loss.backward()
    for group in pruner.step(interactive=True):
        group.prune()
    model.zero_grad(set_to_none=True)
    _retie(model)
    _tp_update_attributes(model)
    t_total = time.perf_counter() - t0
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        model(ids)  # the pruned model runs
    return t_graph, t_total


def _retie(model) -> None:
    """Torch-Pruning slices a tied embedding and ``lm_head`` as two tensors; where
    they are still equal, tie them again, so the pruned model is not larger than
    it needs to be (without this its hidden pruning *adds* a vocabulary-sized matrix)."""
    import torch

    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if model.config.tie_word_embeddings and emb is not head and emb.shape == head.shape and torch.equal(emb, head):
        model.get_output_embeddings().weight = emb


def _tp_calibrate(model, target: float, recipe: str = "tp-magnitude", calib=None) -> tuple:
    """Torch-Pruning's uniform channel ratio that removes ``target`` of the
    parameters (secant steps on copies: the removed share is close to linear in
    the ratio, up to rounding to whole heads and 4 channels) -> (ratio, the
    pruned copy at that ratio)."""
    import copy

    dense, ratio = _n_params(model), target
    for _ in range(5):
        trial = copy.deepcopy(model)
        _tp_prune(trial, ratio, recipe, calib)
        removed = 1 - _n_params(trial) / dense
        if abs(removed - target) < 0.003:
            break
        ratio = min(0.95, ratio * target / max(removed, 1e-3))
    return ratio, trial


def tp_peer(recipe: str):
    """A ``sg.prune`` peer: Torch-Pruning ``recipe`` leaving ``n_params`` parameters."""
    def prune_to(model, calib, n_params):
        return _tp_calibrate(model, 1 - n_params / _n_params(model), recipe, calib)[1]

    return prune_to


def sg_magnitude_peer(model, calib, n_params):
    """shear-graph one-shot magnitude (heads and FFN channels, uniform share per group)."""
    import shear_graph as sg

    groups = sg.find_groups(sg.trace(model))
    ratio = 1 - n_params / sg.count_params(model)
    return sg.apply_plan(model, sg.plan_by_magnitude(model, groups, ratio, kinds=("attention_head", "ffn")))


def dense_reference(model, calib, n_params):
    """No pruning: the dense model through the same recovery, a ceiling for every pruned row."""
    return model


PEERS = {"tp_magnitude": tp_peer("tp-magnitude"), "llm_pruner_taylor": tp_peer("llm-pruner-taylor"),
         "sg_magnitude": sg_magnitude_peer}
FORTUNES = Path("/usr/share/games/fortunes")
# Kept out of the general-English domain: the fortunes that quote Bierce (his Devil's Dictionary is an
# evaluation-only text), the mock-dictionary 'definitions' file (that text's genre) and ascii-art (not prose).
FORTUNES_SKIPPED = {"definitions", "ascii-art"}


def general_english(max_chars: int = 600_000, seed: int = 0):
    """A general-English training domain from Debian's ``fortunes`` (quotations,
    jokes and short prose on many topics), entries shuffled with ``seed`` and cut
    to ``max_chars`` characters.

    Raises SystemExit naming the package when it is not installed."""
    import random

    from shear_graph.data import Domain

    files = sorted(f for f in FORTUNES.glob("*") if f.is_file() and not f.is_symlink() and not f.suffix
                   and f.name not in FORTUNES_SKIPPED) if FORTUNES.is_dir() else []
    if not files:
        raise SystemExit(f"no fortunes under {FORTUNES}: install them (apt-get install fortunes) for --general-text")
    entries = [e.strip() for f in files for e in f.read_text(errors="replace").split("\n%\n")]
    entries = [e for e in entries if e and "bierce" not in e.lower() and "devil's dictionary" not in e.lower()]
    random.Random(seed).shuffle(entries)
    return Domain("general_english", ["\n\n".join(entries)[:max_chars]], f"debian:fortunes ({len(files)} files)")


# tokens sampled for --self-text: LHSPG and recovery draw 200 training blocks of 128 tokens per domain, the
# evaluation and the probes 20 more
SELF_TOKENS = 40_000


def dense_samples(model, tokenizer, smoke: bool = False):
    """A training domain of text sampled from the dense default model (:func:`shear_graph.domain_from_model`), a
    stand-in for the pretraining-like text no offline package holds. Drawn once (about 7 min here) and kept in
    ``benchmarks/work/`` so a rerun or a variant trains on the very same text (delete the file to draw anew)."""
    from shear_graph import domain_from_model
    from shear_graph.data import Domain

    path = HERE / "work" / f"dense_samples{'_smoke' if smoke else ''}.json"
    if path.is_file():
        kept = json.loads(path.read_text())
        return Domain(kept["name"], kept["texts"], kept["source"])
    domain = domain_from_model(model, tokenizer, n_tokens=2_000 if smoke else SELF_TOKENS, batch_size=128,
                               max_new_tokens=256)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"name": domain.name, "texts": domain.texts, "source": domain.source}))
    tmp.replace(path)
    return domain


# LoRAShear settings a variant run may change, with the base run's values; each becomes a flag of
# `quality` and `speed`, a suffix of the run's name and a phrase in the report
VARIANT = {"layer_shares": "uniform", "distill": 0.0, "keep_layers": (), "kinds": ("attention_head", "ffn"),
           "period_steps": 30, "recovery_distill": 0.0}
# a variant that changes the recovery every method shares reruns the base run's best peer under it too
SHARED_RECOVERY = {"recovery_distill"}
BEST_PEER = "llm_pruner_taylor"


def part_quality(ratio: float, smoke: bool = False, general_text: bool = False, variant: dict | None = None,
                 self_text: bool = False) -> dict:
    """LoRAShear (``sg.prune``, with its Taylor baseline) and the peers, at one
    ratio, in one run: same data split, evaluation blocks (Python docs, stdlib
    code, Devil's Dictionary, WikiText-2 test), zero-shot items, recovery budget.

    ``general_text`` adds :func:`general_english` to the training mixture (calibration,
    LHSPG and recovery of every method) and a dense model through the same recovery;
    ``self_text`` adds :func:`dense_samples` as well, for every method alike (and
    leaves the dense model's recovery out, to save its quarter of an hour).
    A ``variant`` (LoRAShear settings of :data:`VARIANT` that differ from the base
    run's: ``layer_shares="knowledge"``, per-layer shares from the knowledge analysis;
    ``distill``, LHSPG's weight of distillation from the dense model; ``keep_layers``,
    decoder layers left whole; ``kinds``, the group kinds pruned; ``period_steps``,
    the length of each of LHSPG's periods) runs LoRAShear alone; the report sets its rows beside
    the peers of the base run, whose split and evaluation blocks are the same (the run
    is seeded; it starts from the base run's knowledge analysis when there is one,
    see :func:`_seed_from_base`)."""
    import shear_graph as sg
    from shear_graph.data import Domain, default_domains
    from shear_graph.default_model import load_default_model
    from shear_graph.pipeline import out_of_domain_text
    from shear_graph.tasks import data_dir
    from viz.prune_report import write_prune_report

    wiki = data_dir(None) / "wikitext2" / "wiki.test.raw"
    eval_domains = [d for d in [out_of_domain_text()] if d is not None]
    eval_domains.append(Domain("wikitext2_test", [wiki.read_text()], str(wiki)))
    variant = _changed(variant)
    settings = sg.PruneSettings(ratio=ratio, n_eval=16, baseline=None if variant else "taylor", **variant)
    if smoke:
        settings = replace(settings, block_len=32, n_eval=2, n_probe=2, n_train=12, warmup_steps=1, n_periods=2,
                           final_steps=1, recovery_steps=4, update_every=2, batch_size=2,
                           lora_rank=4, eval_limit=10)
    model, tok = load_default_model(n_layers=8 if smoke else None)
    domains = (default_domains() + ([general_english()] if general_text else [])
               + ([dense_samples(model, tok, smoke)] if self_text else []))
    if not variant:
        peers = {**PEERS, **({"dense_reference": dense_reference} if general_text and not self_text else {})}
    else:  # LoRAShear alone, and the best peer again when the recovery every method shares has changed
        peers = {BEST_PEER: PEERS[BEST_PEER]} if SHARED_RECOVERY & set(variant) else {}
    out = HERE / "work" / _quality_name(ratio, smoke, general_text, variant, self_text)
    base = HERE / "work" / _quality_name(ratio, smoke, general_text, self_text=self_text)
    seeded = bool(variant) and _seed_from_base(out, base)
    try:
        result = sg.prune(model, tok, out=out, settings=settings, resume=out.exists(), peers=peers,
                          domains=domains, eval_domains=eval_domains, report=write_prune_report, keep_work=True)
    except sg.ShearGraphError as e:
        if seeded and not (out / ".work" / "lhspg").exists():  # refused before LHSPG: only copies to lose
            shutil.rmtree(out)
            raise SystemExit(f"the variant cannot start from {base.name}'s analysis ({e}); removed {out}") from e
        raise
    marker = out / SEEDED
    return {"ratio": ratio, "smoke": smoke, "general_text": general_text, "self_text": self_text,
            "settings": result.settings,
            "training_domains": {d.name: d.source for d in domains}, "stages": result.stages,
            "seconds": result.seconds, "report": str(out / "report.html"),
            **({"analysis_from": marker.read_text().strip()} if marker.exists() else {})}


SEEDED = "analysis_from.txt"  # in a variant's folder: the base run its analysis was copied from


def _seed_from_base(out: Path, base: Path) -> bool:
    """Start a variant's run from the base run's dense evaluation and knowledge
    analysis, the stages before LHSPG that no :data:`VARIANT` setting feeds (about
    a quarter of a 20 % run here): their files are copied into a new ``out/.work``
    (built aside, then renamed) and ``sg.prune(resume=True)`` goes on from LHSPG
    under the variant's settings, as a resume with changed LHSPG-onward settings
    does. ``sg.prune`` refuses it, naming the cause, if the base run was made with
    other pre-LHSPG settings or on other text or blocks. False, nothing copied,
    when ``out`` exists or the base run has no finished analysis: the variant then
    runs both stages itself."""
    src = base / ".work"
    needed = ("settings.json", "knowledge.json", "stages.json", "seconds.json")
    if out.exists() or not all((src / name).is_file() for name in needed):
        return False
    stages = json.loads((src / "stages.json").read_text())
    seconds = json.loads((src / "seconds.json").read_text())
    if "dense" not in stages:
        return False
    aside = out.with_name(out.name + ".seeding")
    shutil.rmtree(aside, ignore_errors=True)
    (aside / ".work").mkdir(parents=True)
    for name in ("settings.json", "knowledge.json"):
        shutil.copy2(src / name, aside / ".work" / name)
    (aside / ".work" / "stages.json").write_text(json.dumps({"dense": stages["dense"]}))
    (aside / ".work" / "seconds.json").write_text(json.dumps(
        {k: seconds[k] for k in ("evaluate dense", "knowledge analysis") if k in seconds}))
    (aside / SEEDED).write_text(base.name)
    aside.rename(out)
    return True


def _changed(variant: dict | None) -> dict:
    """The entries of ``variant`` (or of a run's settings) that differ from :data:`VARIANT`."""
    variant = variant or {}
    return {k: variant[k] for k in VARIANT if k in variant and not _same(variant[k], VARIANT[k])}


def _same(value, default) -> bool:
    """Equal, a JSON list counting as the tuple it was written from, 0 as 0.0."""
    return tuple(value) == default if isinstance(default, tuple) else value == default


def _text(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _flags(general_text: bool, variant: dict | None = None, smoke: bool = False, self_text: bool = False) -> str:
    """The command-line flags of a quality or speed run."""
    return ((" --general-text" if general_text else "") + (" --self-text" if self_text else "")
            + "".join(f" --{k.replace('_', '-')} {_text(v)}" for k, v in _changed(variant).items())
            + (" --smoke" if smoke else ""))


def _quality_name(ratio: float, smoke: bool, general_text: bool, variant: dict | None = None,
                  self_text: bool = False) -> str:
    names = {"layer_shares": "{}", "distill": "distill{}", "keep_layers": "keep{}", "kinds": "{}",
             "period_steps": "period{}", "recovery_distill": "rdistill{}"}
    variant = "".join("_" + names[k].format(_text(v)) for k, v in _changed(variant).items())
    return (f"quality_{ratio}{'_general' if general_text else ''}{'_self' if self_text else ''}{variant}"
            f"{'_smoke' if smoke else ''}")


def _timed_in_turn(models: dict, rounds: int) -> dict:
    """name -> forward tokens/s (1 x 512) per round: every model timed once a round, in turn, so a change in the
    machine's speed falls on all of them alike."""
    from shear_graph.pipeline import tokens_per_second

    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            times[name].append(round(tokens_per_second(model), 1))
    return times


def part_speed(ratio: float, general_text: bool = False, variant: dict | None = None, rounds: int = 5,
               self_text: bool = False) -> dict:
    """Forward tokens/s (batch 1 x 512) of the dense model and of every pruned
    model of a finished quality run, in one process started on idle cores.

    The models are timed in turn, round after round (each round a median of 5
    after a warm-up), and each row is the median over ``rounds``: a change in the
    machine's speed during the pass falls on every model alike, which the single
    measurement inside a quality run cannot promise. LoRAShear's and the one-shot
    baseline's models are the quality run's own (``.work/<stage>``); the peers are
    pruned again to the same parameter count, their widths (uniform per layer)
    not depending on the calibration text, so random tokens stand in for it.

    Raises SystemExit when the quality run's stage models are not there."""
    import copy

    import torch

    import shear_graph as sg
    from shear_graph.default_model import load_default_model

    work = HERE / "work" / _quality_name(ratio, False, general_text, variant, self_text) / ".work"
    if not (work / "lhspg_recovered").is_dir():
        raise SystemExit(f"no finished quality run in {work.parent}: run `peers.py quality {ratio}"
                         f"{_flags(general_text, variant, self_text=self_text)}` first (it keeps its stage models)")
    dense = load_default_model()[0]
    models = {"dense": dense}
    models.update({stage: sg.load_pruned(work / stage) for stage in ("lhspg_recovered", "baseline_recovered")
                   if (work / stage).is_dir()})
    n_params = _n_params(models["lhspg_recovered"])
    calib = torch.randint(0, dense.config.vocab_size, (8, 128), generator=torch.Generator().manual_seed(0))
    for name, fn in PEERS.items():
        models[f"{name}_pruned"] = fn(copy.deepcopy(dense), calib, n_params).eval()
    load = os.getloadavg()[0]
    times = _timed_in_turn(models, rounds)
    return {"ratio": ratio, "general_text": general_text, "self_text": self_text, **_changed(variant),
            "load_average_at_start": load, "rounds": rounds,
            "rows": {name: {"params": _n_params(m), "tokens_per_s": statistics.median(times[name]),
                            "per_round": times[name]} for name, m in models.items()}}


# FFN channels removed per layer in the width layouts of `widths`: the 537 a uniform FFN-only plan removes at 20 %,
# and a per-layer spread as wide as the knowledge shares' (250 to 783), drawn once and scaled to the same total
UNIFORM_FFN_CUT = 537
SPREAD_FFN_CUT = (250, 783)


def part_widths(rounds: int = 5) -> dict:
    """Forward tokens/s (batch 1 x 512) of SmolLM2-135M with 20 % of its parameters removed from the FFN channels
    in four layouts of the same size: uniform widths, per-layer widths spread like the knowledge shares', and those
    widths rounded to a multiple of 8 and of 64 (the kept channels of each layer). Answers whether per-layer widths
    that are no multiple of the SIMD width cost speed here. Models timed in turn, round after round, as in
    :func:`part_speed`; which channels go does not change the time, so the first ones are cut."""
    import random

    import shear_graph as sg
    from shear_graph.default_model import load_default_model

    dense = load_default_model()[0].eval()
    groups = sg.find_groups(sg.trace(dense))
    ffn = [g for g in groups if g.kind == "ffn"]
    rng = random.Random(0)
    spread = [rng.randint(*SPREAD_FFN_CUT) for _ in ffn]
    spread = [round(c * UNIFORM_FFN_CUT * len(ffn) / sum(spread)) for c in spread]

    def rounded(cuts: list, m: int) -> list:
        return [g.n_channels - max(m, round((g.n_channels - c) / m) * m) for g, c in zip(ffn, cuts)]

    layouts = {"uniform": [UNIFORM_FFN_CUT] * len(ffn), "per_layer": spread, "per_layer_round8": rounded(spread, 8),
               "per_layer_round64": rounded(spread, 64)}
    models = {"dense": dense}
    for name, cuts in layouts.items():
        plan = sg.PrunePlan.from_channels(dense, groups, {g.id: list(range(c)) for g, c in zip(ffn, cuts)})
        models[name] = sg.apply_plan(dense, plan).eval()
    load = os.getloadavg()[0]
    times = _timed_in_turn(models, rounds)
    return {"load_average_at_start": load, "rounds": rounds,
            "rows": {name: {"params": _n_params(m), "tokens_per_s": statistics.median(times[name]),
                            "per_round": times[name],
                            "ffn_widths": [g.n_channels - c for g, c in zip(ffn, layouts.get(name, [0] * len(ffn)))]}
                     for name, m in models.items()}}


def child_tp_ratio(model_name: str) -> dict:
    """The channel ratio at which Torch-Pruning removes ``RATIO`` of the parameters."""
    return {"channel_ratio": _tp_calibrate(_load(model_name), RATIO)[0]}


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
            "python": platform.python_version(), "load_average_at_start": round(os.getloadavg()[0], 2),
            **{p: version(p) for p in ("torch", "transformers", "torch-pruning", "shear-graph")}}


# ---- RESULTS.md: one section per question, each a table of the current best configuration of each method ----
#
# Results JSON files (benchmarks/results/*.json) the renderer knows by name: graph.json, quality_*.json,
# speed_*.json, widths.json, gpu_check.json. Any other file is rendered too, under the question it names:
#   {"question": "graph" | "quality" | "speed" | "scale" | "other", "title": "...", "date": "...",
#    "command": "...", "machine": "...", "notes": ["..."], "table": {"columns": [...], "rows": [[...], ...]}}
# and without a "table", as a two-column table of its scalar fields (so a new file never breaks the report).
QUESTIONS = {
    "graph": "Graph cost: how long from a loaded model to its removal groups and a pruned model?",
    "quality": "Quality: how good is the pruned model, after the same recovery for every method?",
    "speed": "Speed: is the pruned model faster?",
    "scale": "Scale: does it work on large models and on a GPU?",
    "other": "Other measurements",
}
QUALITY_COMMAND = "SHEAR_GRAPH_EVAL_DATA=<task folder> .venv/bin/python benchmarks/peers.py quality {ratio}{flags}"


def write_report() -> Path:
    """Render ``benchmarks/RESULTS.md`` from ``benchmarks/results/*.json``.

    One section per question (graph cost, quality at each ratio, speed, scale,
    then any other results file), each with one table holding the current best
    configuration of each method, its command and the machine; every quality
    configuration tried goes into one compact table at the end. Methods, domains
    and zero-shot tasks are read from the files, so a new peer (a new stage
    prefix in a quality run) or a new results file needs no change here.

    Returns
    -------
    Path
        The written ``RESULTS.md`` (written atomically).
    """
    parts = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    # a quality run is any file with a dense stage (peers.py quality, quality.py run, ...)
    quality = {n: q for n, q in parts.items() if "dense" in (q.get("stages") or {}) and "ratio" in q
               and not q.get("smoke")}
    speed = {n: s for n, s in parts.items() if n.startswith("speed_")}
    known = {"graph", "widths", "gpu_check", *quality, *speed}
    extra = {n: p for n, p in parts.items() if n not in known and not n.endswith("_smoke") and not p.get("smoke")}
    by_question = {q: [(n, p) for n, p in extra.items() if p.get("question", "other") == q] for q in QUESTIONS}
    by_question["other"] += [(n, p) for n, p in extra.items() if p.get("question", "other") not in QUESTIONS]
    best = {ratio: _best_by_method(quality, ratio) for ratio in sorted({q["ratio"] for q in quality.values()})}
    lines = ["# Benchmarks: shear-graph and its peers", "",
             "Generated by `benchmarks/peers.py report` from `benchmarks/results/*.json` (do not edit by hand). "
             "Each section answers one question with the current best configuration of each method; the "
             "configurations tried on the way are listed at the end. Model: SmolLM2-135M unless a row says "
             "otherwise. What the methods are and how the runs are set up: [docs/benchmarks.md](../docs/benchmarks.md).",
             "", *[f"- [{text}](#{_anchor(text)})" for key, text in QUESTIONS.items()
                   if key != "other" or by_question["other"]],
             "- [Every quality configuration tried](#every-quality-configuration-tried)", ""]
    lines += _graph_section(parts.get("graph"), by_question["graph"])
    lines += [f"## {QUESTIONS['quality']}", ""]
    for ratio, rows in best.items():
        lines += _quality_section(ratio, rows, quality)
    lines += _generic_sections(by_question["quality"])
    lines += _speed_section(best, quality, speed, parts.get("widths"), by_question["speed"])
    lines += _scale_section(parts.get("graph"), parts.get("gpu_check"), by_question["scale"])
    if by_question["other"]:
        lines += [f"## {QUESTIONS['other']}", "", *_generic_sections(by_question["other"])]
    lines += _history_section(quality)
    path = HERE / "RESULTS.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines).rstrip() + "\n")
    tmp.replace(path)
    return path


def _anchor(title: str) -> str:
    """GitHub's anchor for a heading."""
    return "".join(c for c in title.lower() if c.isalnum() or c in " -_").replace(" ", "-")


def _table(columns: list, rows: list) -> list:
    cell = (lambda v: "" if v is None else str(v).replace("|", "\\|").replace("\n", " "))
    return ["| " + " | ".join(map(cell, columns)) + " |", "|" + "---|" * len(columns),
            *["| " + " | ".join(map(cell, r)) + " |" for r in rows], ""]


def _machine(part: dict) -> str:
    env = part.get("environment") or {}
    return part.get("machine") or env.get("machine") or part.get("gpu") or "not recorded"


def _label(method: str) -> str:
    return LABELS.get(method, method.replace("_", " "))


def _split_stage(stage: str) -> tuple:
    """'llm_pruner_taylor_recovered' -> ('llm_pruner_taylor', 'recovered'); 'dense' -> ('dense', '')."""
    method, _, when = stage.rpartition("_")
    return (method, when) if when in ("pruned", "recovered") and method else (stage, "")


def _geomean_ratio(row: dict, dense: dict) -> float:
    """Geometric mean over the evaluation domains of perplexity / dense perplexity (1.0 = as good as dense)."""
    domains = [d for d in row.get("perplexity", {}) if d in dense.get("perplexity", {})]
    if not domains:
        return float("inf")
    return math.exp(sum(math.log(row["perplexity"][d] / dense["perplexity"][d]) for d in domains) / len(domains))


def _command(name: str, q: dict) -> str:
    if q.get("command"):
        return q["command"]
    if name.startswith("brown_"):  # a run of benchmarks/quality.py: its flags are its settings off the defaults
        spec = importlib.util.spec_from_file_location("quality", Path(__file__).resolve().parent / "quality.py")
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        settings = q.get("settings", {})
        flags = "".join(f" --{k.replace('_', '-')} {_text(settings[k])}" for k, default in script.LORASHEAR.items()
                        if k in settings and not _same(settings[k], default))
        return f".venv/bin/python benchmarks/quality.py run {q['ratio']}{flags}"
    flags = _flags(q.get("general_text", False), q.get("settings"), q.get("smoke", False), q.get("self_text", False))
    return QUALITY_COMMAND.format(ratio=q["ratio"], flags=flags)


def _configuration(method: str, q: dict) -> str:
    """What sets this run apart, in words: its training text and, for LoRAShear, its variant settings."""
    trained = ", ".join(q.get("training_domains") or ["python_docs", "python_code"])
    variant = _variant(q.get("settings", {})) if method == "lhspg" else ""
    shared = [k for k in SHARED_RECOVERY if k in _changed(q.get("settings"))]
    if method != "lhspg" and shared:
        variant = _variant({k: q["settings"][k] for k in shared})
    return f"trained on {trained}" + (f"; {variant}" if variant else "")


def _protocol(q: dict) -> tuple:
    """What makes two runs comparable: the same training and evaluation domains."""
    trained = q.get("training_domains") or ["python_docs", "python_code"]
    return tuple(sorted(trained)), tuple(sorted(q["stages"]["dense"].get("perplexity", {})))


def _best_by_method(quality: dict, ratio: float) -> dict:
    """method -> (run name, stage) of its best row at ``ratio`` among the runs of the current protocol (the
    training and evaluation domains of the latest run): after recovery where the method was recovered, lowest
    geometric-mean perplexity relative to its own run's dense model."""
    runs = {n: q for n, q in quality.items() if q["ratio"] == ratio}
    latest = max(runs, key=lambda n: (runs[n]["date"], len(_protocol(runs[n])[1]), n))
    best = {}
    for name, q in runs.items():
        if _protocol(q) != _protocol(runs[latest]):
            continue
        dense = q["stages"]["dense"]
        for stage, row in q["stages"].items():
            method, when = _split_stage(stage)
            if method == "dense" or "perplexity" not in row:
                continue
            if method in RETRAINING_FREE and when == "pruned":
                method = f"{method}:no retraining"
            key = (when == "recovered", -_geomean_ratio(row, dense))
            if method not in best or key > best[method][0]:
                best[method] = (key, name, stage)
    order = list(LABELS)
    return {m: best[m][1:] for m in sorted(best, key=lambda m: (order.index(m) if m in order else len(order), m))}


def _graph_section(g: dict | None, extra: list) -> list:
    lines = [f"## {QUESTIONS['graph']}", ""]
    if g:
        env = g["environment"]
        lines += [f"Command: `.venv/bin/python benchmarks/peers.py graph` ({g['date']}). Machine: {_machine(g)}; "
                  f"Python {env.get('python')}, torch {env.get('torch')}, transformers {env.get('transformers')}, "
                  f"torch-pruning {env.get('torch-pruning')}. Dependency structure: shear-graph `trace` + "
                  "`find_groups`; Torch-Pruning `DependencyGraph.build_dependency`. To a pruned model: from the "
                  f"loaded model to one with {RATIO:.0%} of the parameters removed. Peak RSS includes the loaded "
                  "model.", ""]
        rows = []
        for r in g["rows"]:
            if "error" in r:
                rows.append([r.get("model"), r.get("tool"), f"failed: {r['error']}", "", "", "", ""])
                continue
            rows.append([r["model"], r["tool"], f"{r['graph_s']:.1f}", f"{r['to_pruned_s']:.1f}",
                         f"{r['removed']:.1%}", f"{r['peak_rss_gb']:.2f}", f"{r['model_rss_gb']:.2f}"])
        lines += _table(["model", "tool", "dependency structure (s)", "to pruned model (s)", "removed",
                         "peak RSS (GB)", "model loaded (GB)"], rows)
    return lines + _generic_sections(extra)


def _quality_section(ratio: float, best: dict, quality: dict) -> list:
    if not best:
        return []
    runs = {name for name, _ in best.values()}
    domains = []
    for name in sorted(runs, key=lambda n: -len(quality[n]["stages"]["dense"]["perplexity"])):
        domains += [d for d in quality[name]["stages"]["dense"]["perplexity"] if d not in domains]
    ref = max(runs, key=lambda n: (len(quality[n]["stages"]["dense"]["perplexity"]), quality[n]["date"]))
    first = quality[ref]
    s = first["settings"]
    machines = sorted({_machine(quality[n]) for n in runs})
    lines = [f"### {ratio:.0%} of the parameters removed", "",
             f"Each method's best configuration at {ratio:.0%} (lowest perplexity after recovery, as a geometric mean "
             "over the evaluation domains relative to its own run's dense model), among the runs trained on "
             f"{', '.join(_protocol(first)[0])}; runs on other text are in the last table. Every run: the same held-out "
             f"evaluation blocks ({s.get('n_eval')} x {s.get('block_len')} tokens per domain, never trained on), the "
             f"{_zero_shot_items(first)}, {_budget(first)}. "
             "Perplexity, with the multiple of dense in brackets. Machine: " + "; ".join(machines) + ".", ""]
    dense = first["stages"]["dense"]
    rows = [["dense (not pruned)", "", f"{dense['params'] / 1e6:.1f}",
             *[f"{dense['perplexity'][d]:.2f}" if d in dense["perplexity"] else "-" for d in domains],
             _zero_shot(dense, first, "dense"), f"`{_command(ref, first)}`"]]
    for method, (name, stage) in best.items():
        q = quality[name]
        row, own_dense = q["stages"][stage], q["stages"]["dense"]
        ppl = [f"{row['perplexity'][d]:.2f} ({row['perplexity'][d] / own_dense['perplexity'][d]:.2f}x)"
               if d in row["perplexity"] else "-" for d in domains]
        when = "" if stage.endswith("_recovered") else " (not recovered)"
        rows.append([_label(method) + when, _configuration(method, q), f"{row['params'] / 1e6:.1f}", *ppl,
                     _zero_shot(row, q, stage), f"`{_command(name, q)}`"])
    return lines + _table(["method", "configuration", "params (M)", *[f"ppl {d}" for d in domains],
                           "zero-shot avg", "command"], rows)


def _zero_shot_items(q: dict) -> str:
    limit = q.get("limit") if q.get("zero_shot") and q.get("limit") else q["settings"].get("eval_limit")
    return f"first {limit} items of each zero-shot task"


def _budget(q: dict) -> str:
    """The training budget of a run's methods, in words."""
    s = q["settings"]
    step = f"steps of {s.get('batch_size')} x {s.get('block_len')} tokens, LoRA r={s.get('lora_rank')}"
    if s.get("peer_budget") != "tokens":
        return f"the same recovery for every method ({s.get('recovery_steps')} {step})"
    lhspg = s["warmup_steps"] + s["n_periods"] * s["period_steps"] + s["final_steps"]
    return (f"equal training tokens: LoRAShear {lhspg} LHSPG steps then {s['recovery_steps']} recovery steps, every "
            f"other method {lhspg + s['recovery_steps']} recovery steps ({step}; FLAP-style also before any "
            "retraining)")


def _zero_shot(row: dict, q: dict | None = None, stage: str = "") -> str:
    """A stage's zero-shot average: in its row, or from a zero-shot pass run afterwards (``q["zero_shot"]``)."""
    later = ((q or {}).get("zero_shot") or {}).get(stage) or {}
    value = row.get("zero_shot_average", later.get("average"))
    return f"{value:.3f}" if value is not None else "-"


def _speed_section(best: dict, quality: dict, speed: dict, widths: dict | None, extra: list) -> list:
    """tokens/s of each method's best configuration, from the separate speed pass over its quality run's models
    where there is one (:func:`part_speed`), else from the quality run's own single measurement."""
    lines = [f"## {QUESTIONS['speed']}", "",
             "Forward tokens/s at batch 1 x 512 on CPU. Where a quality run has a speed pass (`peers.py speed`, "
             "every model timed in turn, 5 rounds, the median), its figure is shown; otherwise the quality run's own "
             "single measurement, taken as the run goes on: where that run shared the machine with other work (the "
             "Brown Corpus run of 2026-12-08, whose dense model was timed under a load of 10-14), it is no speed "
             "figure. The floor asked: at least 0.9 x (dense params / params) x dense tokens/s.", ""]
    for ratio, rows in best.items():
        table = []
        for method, (name, stage) in rows.items():
            sp = speed.get("speed_" + name.removeprefix("quality_"), {}).get("rows", {})
            measured = sp.get(stage) or next((v for k, v in sp.items() if _split_stage(k)[0] == method), None)
            if measured and "dense" in sp:
                dense, row, how = sp["dense"], measured, f"`{_speed_command(quality[name])}`"
            else:
                q = quality[name]
                dense, row, how = q["stages"]["dense"], q["stages"][stage], "quality run, one measurement"
            floor = 0.9 * dense["params"] / row["params"] * dense["tokens_per_s"]
            table.append([f"{ratio:.0%}", _label(method), f"{row['params'] / 1e6:.1f}", f"{row['tokens_per_s']:.0f}",
                          f"{row['tokens_per_s'] / dense['tokens_per_s']:.2f}",
                          f"{floor:.0f} ({'met' if row['tokens_per_s'] >= floor else 'missed'})", how])
        lines += _table(["removed", "method (best configuration above)", "params (M)", "tokens/s", "x dense",
                         "floor", "measured by"], table)
    if widths:
        rows = widths["rows"]
        dense = rows["dense"]
        table = [[name, f"{r['params'] / 1e6:.1f}",
                  "1536" if name == "dense" else f"{min(r['ffn_widths'])}-{max(r['ffn_widths'])}",
                  f"{r['tokens_per_s']:.0f}", f"{r['tokens_per_s'] / rows['uniform']['tokens_per_s']:.2f}"]
                 for name, r in rows.items() if name != "dense"]
        lines += ["Do per-layer widths cost speed? The same FFN-only cut in layouts of one size "
                  f"(`.venv/bin/python benchmarks/peers.py widths`, {widths['date']}; {_machine(widths)}; "
                  f"dense {dense['tokens_per_s']:.0f} tokens/s):", "",
                  *_table(["FFN layout", "params (M)", "FFN widths (min-max)", "tokens/s", "x uniform"], table)]
    return lines + _generic_sections(extra)


def _speed_command(q: dict) -> str:
    flags = _flags(q.get("general_text", False), q.get("settings"), self_text=q.get("self_text", False))
    return f".venv/bin/python benchmarks/peers.py speed {q['ratio']}{flags}"


def _scale_section(g: dict | None, gpu: dict | None, extra: list) -> list:
    lines = [f"## {QUESTIONS['scale']}", ""]
    if g and g.get("meta_scale"):
        lines += ["Tracing and removal groups alone on meta-device configs (no weights; "
                  f"`.venv/bin/python benchmarks/trace_scale.py`; {_machine(g)}):", "",
                  *[f"    {line}" for line in g["meta_scale"]], ""]
    if gpu:
        one, main = gpu["1b"], gpu["main"]
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in main["stages_s"].items() if v >= 1)
        lines += [f"On one GPU (`{gpu['command']}`, {gpu['date']}; {gpu['gpu']}, torch {gpu['torch']}; bf16, random "
                  "weights, since times do not depend on their values):", "",
                  *_table(["what", "measured"], [
                      ["the main job (`sg.prune`, defaults, no zero-shot) at SmolLM2-135M's shape",
                       f"{main['total_s']:.0f} s ({stages})"],
                      ["1.1B Llama (GQA 32/4): trace + removal groups", f"{one['trace_groups_s']:.1f} s"],
                      ["1.1B: Taylor saliency, 16 x 512 tokens", f"{one['taylor_saliency_16x512_s']:.1f} s"],
                      ["1.1B: 20 % plan + physical pruning", f"{one['plan_s']:.1f} s + {one['apply_s']:.2f} s"],
                      [f"1.1B: LHSPG, {one['lhspg_steps']} steps of 4 x 512", f"{one['lhspg_10_steps_4x512_s']:.0f} s"],
                      ["1.1B: LoRA recovery, per step of 4 x 512", f"{one['recovery_10_steps_4x512_s'] / 10:.2f} s"],
                      ["1.1B: peak GPU memory", f"{one['peak_gpu_gb']:.1f} GB"]])]
    return lines + _generic_sections(extra)


def _generic_sections(parts: list) -> list:
    """Results files the renderer does not know by name: their own table, or their scalar fields."""
    lines = []
    for name, p in parts:
        lines += [f"### {p.get('title', name.replace('_', ' '))}", ""]
        said = [f"Command: `{p['command']}`" if p.get("command") else "", f"({p['date']})" if p.get("date") else "",
                f"Machine: {_machine(p)}." if _machine(p) != "not recorded" else ""]
        if any(said):
            lines += [" ".join(filter(None, said)), ""]
        table = p.get("table")
        if isinstance(table, dict) and "columns" in table:
            lines += _table(table["columns"], table.get("rows", []))
        else:
            leaves = [(k, v) for k, v in _leaves(p) if k.split(".")[0] not in
                      ("title", "question", "command", "date", "machine", "environment", "notes")]
            lines += _table(["field", "value"], leaves[:40])
        lines += [*[n for n in p.get("notes", [])], ""] if p.get("notes") else []
    return lines


def _leaves(value, prefix: str = ""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, (list, tuple)) and not all(isinstance(v, (int, float, str)) for v in value):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, (f"{value:.4g}" if isinstance(value, float) else value)


def _history_section(quality: dict) -> list:
    """Every quality run, one row: its configuration, LoRAShear's and the best peer's perplexity after recovery."""
    rows = []
    for name, q in sorted(quality.items(), key=lambda kv: (kv[1]["ratio"], kv[1]["date"], kv[0])):
        st = q["stages"]
        dense = st["dense"]
        ours = st.get("lhspg_recovered")
        peers = {m: r for m, r in ((_split_stage(k)[0], r) for k, r in st.items() if k.endswith("_recovered"))
                 if m not in ("lhspg", "baseline", "dense_reference")}
        top = min(peers, key=lambda m: _geomean_ratio(peers[m], dense)) if peers else None
        rows.append([q["date"], f"{q['ratio']:.0%}", _configuration("lhspg", q),
                     f"{_geomean_ratio(ours, dense):.2f}x" if ours else "-", _zero_shot(ours or {}, q, "lhspg_recovered"),
                     f"{_label(top).split(' (')[0]}: {_geomean_ratio(peers[top], dense):.2f}x" if top else "-",
                     f"`{_command(name, q)}`"])
    return ["## Every quality configuration tried", "",
            "One row per quality run, oldest first at each ratio. Perplexity after recovery as a geometric mean over "
            "the run's evaluation domains, relative to its dense model (lower is better); the best peer is the "
            "best peer method recovered in that same run (runs that vary LoRAShear alone reuse their base run's "
            "peers and show none). Each run's notes are in its JSON file's `analysis` field; its HTML report was "
            "left under `benchmarks/work/` (not in git).", "",
            *_table(["date", "removed", "LoRAShear configuration", "LoRAShear ppl (x dense)", "zero-shot avg",
                     "best peer in the run", "command"], rows)]


LABELS = {"dense": "dense", "lhspg": "shear-graph LoRAShear (LHSPG)", "baseline": "shear-graph one-shot Taylor",
          "sg_magnitude": "shear-graph one-shot magnitude", "tp_magnitude": "Torch-Pruning magnitude (its LLM example)",
          "llm_pruner_taylor": "LLM-Pruner-style Taylor (Torch-Pruning; layers 0-3 and the last two whole)",
          "dense_reference": "dense, not pruned (a ceiling)",
          "flap": "FLAP-style (fluctuation saliency, standardized widths, bias compensation)",
          "flap:no retraining": "FLAP-style, no retraining (its own recipe)",
          "wanda_sp": "Wanda-sp (uniform widths)"}
# methods whose recipe ends before any retraining: their row before recovery is shown as a method of its own
RETRAINING_FREE = {"flap"}


def _variant(settings: dict) -> str:
    """LoRAShear's settings that differ from the base run's, in words ('' for none)."""
    words = {"layer_shares": "per-layer shares from the {} analysis",
             "distill": "distillation from the dense model in LHSPG, weight {}",
             "keep_layers": "decoder layers {} left whole", "kinds": "only {} groups pruned",
             "period_steps": "LHSPG periods of {} steps",
             "recovery_distill": "distillation from the dense model in every method's recovery, weight {}"}
    return "; ".join(words.get(k, k.replace("_", " ") + " {}").format(_text(v))
                        for k, v in _changed(settings).items())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["graph", "quality", "speed", "widths", "report", "child"])
    parser.add_argument("args", nargs="*", help="quality, speed: the ratios (default 0.2 0.5); child: tool and model")
    parser.add_argument("--smoke", action="store_true", help="quality on an 8-layer cut with tiny settings")
    parser.add_argument("--layer-shares", choices=["uniform", "knowledge"], default="uniform",
                        help="quality: knowledge = LoRAShear alone with per-layer shares from the knowledge analysis, "
                             "set beside the peers of the uniform run")
    parser.add_argument("--general-text", action="store_true",
                        help="quality: train every method on general English (Debian fortunes) beside the default "
                             "Python docs and code, and add the dense model through the same recovery")
    parser.add_argument("--self-text", action="store_true",
                        help="quality, speed (with --general-text): train every method on text sampled from the dense "
                             "model as well (a stand-in for pretraining text; drawn once, kept in benchmarks/work); the "
                             "dense model's own recovery is left out")
    parser.add_argument("--distill", type=float, default=0.0,
                        help="quality, speed: LoRAShear alone with this weight (0 to 1) of distillation from the dense "
                             "model in LHSPG's loss, set beside the peers of the run without it")
    parser.add_argument("--keep-layers", default="",
                        help="quality, speed: LoRAShear alone with these decoder layers left whole (comma-separated, "
                             "negative from the end; LLM-Pruner's choice is 0,1,2,3,-2,-1)")
    parser.add_argument("--kinds", default="attention_head,ffn",
                        help="quality, speed: LoRAShear alone pruning only these group kinds (comma-separated: "
                             "attention_head, ffn; the peers' LLM-Pruner recipe ends with every head kept)")
    parser.add_argument("--recovery-distill", type=float, default=0.0,
                        help="quality, speed: LoRAShear with this weight (0 to 1) of distillation from the dense model "
                             "in recovery, and the base run's best peer (LLM-Pruner-style) rerun with the same recovery")
    parser.add_argument("--period-steps", type=int, default=VARIANT["period_steps"],
                        help="quality, speed: LoRAShear alone with LHSPG periods of this many steps (base run: 30)")
    args = parser.parse_args(argv)
    from shear_graph.cli import kind_names, layer_indices

    for flag, weight in (("--distill", args.distill), ("--recovery-distill", args.recovery_distill)):
        if not 0 <= weight <= 1:
            parser.error(f"{flag} is a weight from 0 to 1, got {weight}")
    try:
        keep = layer_indices(args.keep_layers)
    except ValueError:
        parser.error(f"--keep-layers takes comma-separated layer indices such as 0,1,-1, got {args.keep_layers!r}")
    kinds = tuple(sorted(set(kind_names(args.kinds))))
    if not kinds or not set(kinds) <= {"attention_head", "ffn"}:
        parser.error(f"--kinds takes attention_head and/or ffn, comma-separated, got {args.kinds!r}")
    if args.self_text and not args.general_text:
        parser.error("--self-text goes with --general-text (the sampled text is a fourth training domain)")
    if args.period_steps < 1:
        parser.error(f"--period-steps is at least 1, got {args.period_steps}")
    variant = {"layer_shares": args.layer_shares, "distill": args.distill, "keep_layers": keep, "kinds": kinds,
               "period_steps": args.period_steps, "recovery_distill": args.recovery_distill}
    if args.part == "child":
        if not args.args or args.args[0] not in CHILDREN:
            parser.error(f"child needs a tool ({', '.join(CHILDREN)}) and its arguments")
        print(json.dumps(CHILDREN[args.args[0]](*args.args[1:])))
        return
    try:
        ratios = [float(r) for r in args.args] or [0.2, 0.5]
    except ValueError:
        parser.error(f"ratios are numbers between 0 and 1, got {args.args}")
    if args.part == "report":  # needs no peer installed (environment() asks for torch-pruning's version)
        print(write_report())
        return
    RESULTS.mkdir(exist_ok=True)
    stamp = {"date": time.strftime("%Y-%m-%d"), "environment": environment()}
    if args.part == "graph":
        (RESULTS / "graph.json").write_text(json.dumps({**stamp, **part_graph()}, indent=1))
    if args.part == "quality":
        for ratio in ratios:
            name = _quality_name(ratio, args.smoke, args.general_text, variant, args.self_text) + ".json"
            part = part_quality(ratio, args.smoke, args.general_text, variant, args.self_text)
            (RESULTS / name).write_text(json.dumps({**stamp, **part}, indent=1))
    if args.part == "widths":
        (RESULTS / "widths.json").write_text(json.dumps({**stamp, **part_widths()}, indent=1))
    if args.part == "speed":
        for ratio in ratios:
            quality = _quality_name(ratio, False, args.general_text, variant, args.self_text)
            part = part_speed(ratio, args.general_text, variant, self_text=args.self_text)
            (RESULTS / ("speed_" + quality.removeprefix("quality_") + ".json")).write_text(
                json.dumps({**stamp, **part}, indent=1))
    print(write_report())


if __name__ == "__main__":
    main()
