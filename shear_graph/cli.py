"""The ``shear-graph`` command line."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from .checkpoint import is_saved_model
from .pipeline import RUN_FILES, PruneSettings

DEFAULTS = PruneSettings()
app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Structured pruning of language models over one traced graph.")

PROMPT = "The capital of Germany is"


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


# PruneSettings fields the prune command sets, named as its flags in messages
PRUNE_FLAGS = {"ratio": "--ratio", "baseline": "--baseline", "eval_limit": "--eval-limit", "eval_tasks": "--tasks",
               "n_periods": "--n-periods", "period_steps": "--period-steps", "recovery_steps": "--recovery-steps",
               "lora_rank": "--lora-rank", "layer_shares": "--layer-shares", "distill": "--distill",
               "recovery_distill": "--recovery-distill", "peer_budget": "--baseline-budget",
               "keep_layers": "--keep-layers", "kinds": "--kinds", "dtype": "--dtype", "data_dir": "--data-dir",
               "round_to": "--round-to", "export": "--export",
               "eval_data_dir": "--data-dir",
               "resume=True": "--resume", "overwrite=True": "--overwrite"}
ANALYSIS_FILES = ("knowledge.json", "saliency.json", "report.html")  # everything `analyze` writes
ANALYZE_FLAGS = {"fraction": "--fraction", "unprunable_ratio": "--unprunable-ratio"}


def layer_indices(text: str) -> tuple:
    """``"0,1,-1"`` -> ``(0, 1, -1)``; ``""`` -> ``()``. Raises ValueError on anything else
    (an empty item included, so a typo such as ``1,,2`` is not read as ``1,2``)."""
    return tuple(int(x) for x in text.split(",")) if text != "" else ()


def kind_names(text: str) -> tuple:
    """``"ffn, attention_head"`` -> ``("ffn", "attention_head")``: items stripped, none dropped
    (an empty item stays, for the settings check to refuse)."""
    return tuple(k.strip() for k in text.split(","))


def _as_flags(message: str, flags: dict) -> str:
    """``message`` with Python setting names replaced by the command's flags."""
    import re

    named = re.sub(r"(?<![\w.-])(" + "|".join(re.escape(k) for k in sorted(flags, key=len, reverse=True))
                   + r")(?![\w-])", lambda m: flags[m.group(1)], message)
    return re.sub(r"(--[\w-]+) \((\1[^)]*)\)", r"\2", named)  # "--ratio (--ratio)" -> "--ratio"


def _check_device(device: str) -> None:
    """Refuse a device this machine cannot use, before any model is loaded."""
    import torch

    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        _fail(f"device {device!r} is not usable here: {str(e).splitlines()[0]}; use --device cpu, or a machine "
              "and a torch build that have it")


def _exists_message(out: Path, resumable: bool) -> str:
    """Why an existing ``out`` is refused, offering ``--resume`` only where a run can go on in it."""
    if resumable and (out / ".work" / "settings.json").is_file():
        return f"{out} holds an unfinished run; pass --resume to continue it or --overwrite to start afresh"
    if (out / "results.json").is_file():
        return f"{out} holds a complete run (results.json); pass --overwrite to replace it or choose another --out"
    return f"{out} exists; pass --overwrite to replace it or choose another --out"


def _check_out(out: Path, overwrite: bool, resume: bool | None = None, written=None,
               model: str | None = None) -> None:
    """Refuse, before any work, an ``out`` that overlaps the input ``model`` folder, exists (unless told) or cannot
    be written; with ``written`` (``out`` is a folder), one that is the working directory, a file or a folder
    holding what the command did not write (:func:`~shear_graph.checkpoint.check_replaceable`)."""
    import tempfile

    from shear_graph.checkpoint import check_replaceable
    from shear_graph.errors import CheckpointError

    if model is not None and Path(model).exists():
        src, dst = Path(model).resolve(), out.resolve()
        if dst == src or dst in src.parents or src in dst.parents:
            _fail(f"--out {out} overlaps the input model folder {model}; write the pruned model elsewhere")
    if written is not None:
        try:
            check_replaceable(out, written, what="--out")
        except CheckpointError as e:
            _fail(str(e))
    if out.exists() and not (overwrite or resume):
        _fail(_exists_message(out, resumable=resume is not None))
    # the nearest folder that exists is the one to probe: creating the missing ones now would leave them
    # behind when a later check refuses the run
    parent = next(p for p in out.absolute().parents if p.exists())
    try:
        tempfile.NamedTemporaryFile(dir=parent).close()
    except OSError as e:
        _fail(f"cannot write to {out.parent} ({e.strerror or e}); choose another --out")


@app.command()
def groups(model: Optional[str] = typer.Argument(None, help="Local model folder; default: the embedded SmolLM2-135M"),
           explain: list[str] = typer.Option([], help="Also say, for this parameter, which dims are in groups and "
                                                      "which op and module froze the rest (repeatable)")):
    """Trace MODEL and print its removal groups."""
    import shear_graph as sg
    from shear_graph.default_model import load_model

    try:
        m, _ = load_model(model)
        graph = sg.trace(m)
        gs = sg.find_groups(graph)
        explained = [sg.explain(graph, p) for p in explain]
    except sg.ShearGraphError as e:
        _fail(str(e))
    typer.echo(f"{'group':<24} {'kind':<15} {'layer':>5} {'channels':>8}  params per channel")
    for g in gs:
        per = sum(s.width * _other_dims(m, s) for s in g.slices)
        typer.echo(f"{g.id:<24} {g.kind:<15} {str(g.layer):>5} {g.n_channels:>8}  {per}")
    for e in explained:
        typer.echo(f"\n{e}")


def _other_dims(model, s) -> int:
    p = dict(model.named_parameters(remove_duplicate=False))[s.param]
    return p.numel() // p.shape[s.dim]


@app.command()
def oneshot(
    model: Optional[str] = typer.Argument(None, help="Local model folder; default: the embedded SmolLM2-135M"),
    ratio: float = typer.Option(0.2, help="Fraction of total parameters to remove, above 0 and below 1"),
    out: Path = typer.Option(Path("out/oneshot"), help="Output folder for the pruned model, plan.json, summary.json"),
    kinds: str = typer.Option("ffn,attention_head", help="Group kinds to prune, comma-separated "
                                                          "(attention_head, ffn, hidden)"),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists"),
    prompt: str = typer.Option(PROMPT, help="Prompt for the generation check"),
    round_to: int = typer.Option(1, help="Keep FFN widths in multiples of this many channels (8, 64, 128, 256: "
                                         "exports need less padding, tensor-core shapes); 1: exact ratio"),
):
    """One-shot pruning in seconds, no training: trace, find removal groups,
    prune RATIO of the parameters by magnitude, save, reload and generate."""
    import torch
    from tqdm import tqdm

    import shear_graph as sg
    from shear_graph.default_model import load_model

    _check_out(out, overwrite, written=is_saved_model, model=model)
    wanted = [k.strip() for k in kinds.split(",") if k.strip()]
    unknown = set(wanted) - {"attention_head", "ffn", "hidden", "other"}
    if unknown or not wanted:
        _fail(f"unknown group kind(s) {sorted(unknown) or repr(kinds)}; use attention_head, ffn, hidden")
    if not 0 < ratio < 1:
        _fail(f"--ratio must be above 0 and below 1 (the share of parameters to remove), got {ratio}")
    times = {}
    steps = tqdm(total=6, desc="shear-graph oneshot", unit="step")
    try:
        t = time.perf_counter()
        m, tok = load_model(model)
        times["load"] = time.perf_counter() - t
        steps.update(); steps.set_postfix_str("trace")
        t = time.perf_counter()
        graph = sg.trace(m)
        gs = sg.find_groups(graph)
        times["trace+groups"] = time.perf_counter() - t
        steps.update(); steps.set_postfix_str("plan")
        t = time.perf_counter()
        plan = sg.plan_by_magnitude(m, gs, ratio, kinds=wanted, round_to=round_to)
        times["plan"] = time.perf_counter() - t
        steps.update(); steps.set_postfix_str("apply")
        t = time.perf_counter()
        pruned = sg.apply_plan(m, plan)
        times["apply"] = time.perf_counter() - t
        steps.update(); steps.set_postfix_str("save")
        t = time.perf_counter()
        sg.save_pruned(pruned, out, tokenizer=tok, overwrite=overwrite)
        plan.save(out / "plan.json")
        times["save"] = time.perf_counter() - t
        steps.update(); steps.set_postfix_str("reload")
        t = time.perf_counter()
        reloaded = sg.load_pruned(out)
        if tok is not None:
            ids = tok(prompt, return_tensors="pt").input_ids
        else:
            ids = torch.randint(0, reloaded.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            same = torch.equal(pruned(ids).logits, reloaded(ids).logits)
        generated = reloaded.generate(ids, max_new_tokens=20, do_sample=False)[0]
        text = tok.decode(generated, skip_special_tokens=True) if tok is not None else generated.tolist()
        times["reload+generate"] = time.perf_counter() - t
        steps.update()
    except sg.ShearGraphError as e:
        steps.close()
        _fail(_as_flags(str(e), PRUNE_FLAGS))
    steps.close()
    before, after = sg.count_params(m), sg.count_params(reloaded)
    summary = {
        "model": model or "smollm2-135m", "ratio_requested": ratio, "round_to": round_to, "params_before": before,
        "params_after": after, "removed_fraction": round(1 - after / before, 4),
        "groups_pruned": len(plan.removals), "reload_logits_identical": same,
        "generation": text, "seconds": {k: round(v, 2) for k, v in times.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    for kind in ("attention_head", "ffn", "hidden"):
        rows = [r for r in plan.removals if r.kind == kind]
        if rows:
            typer.echo(f"{kind:<15} {len(rows):>3} groups, {sum(len(r.channels) for r in rows):>6} of "
                       f"{sum(r.n_channels for r in rows):>6} channels removed")
    typer.echo(f"full plan: {out / 'plan.json'}")
    typer.echo(json.dumps(summary, indent=2))
    if not same:
        _fail("reloaded model's logits differ from the pruned model's")


@app.command()
def analyze(
    model: Optional[str] = typer.Argument(None, help="Local model folder; default: the embedded SmolLM2-135M"),
    out: Path = typer.Option(Path("out/analysis"), help="Output folder: report.html, knowledge.json, saliency.json"),
    saliency: str = typer.Option("taylor", help="Saliency criterion: magnitude, taylor, activation, lora"),
    domain: list[Path] = typer.Option([], help="A text (.txt/.jsonl) domain; repeat for several. "
                                                 "Default: Python docs, standard-library code and "
                                                 "the Brown Corpus (general English, when installed)"),
    fraction: float = typer.Option(0.25, help="Share of each cluster's channels masked"),
    unprunable_ratio: float = typer.Option(0.2, help="Share of clusters marked unprunable"),
    block_len: int = typer.Option(128, help="Tokens per block"),
    n_eval: int = typer.Option(8, help="Held-out blocks per domain"),
    n_calib: int = typer.Option(16, help="Calibration blocks per domain"),
    batch_size: int = typer.Option(4, help="Blocks per forward"),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16 (bf16 on GPU)"),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists"),
):
    """Knowledge distribution analysis: saliency per channel, loss increase per
    group cluster, unprunable clusters; one HTML report with every view."""
    import torch

    import shear_graph as sg
    from shear_graph.data import check_tokenizer
    from shear_graph.default_model import load_model

    from shear_graph.knowledge import check_analysis_settings

    _check_out(out, overwrite, written=ANALYSIS_FILES)
    if dtype not in ("float32", "bfloat16", "float16"):
        _fail(f"--dtype must be float32, bfloat16 or float16, got {dtype}")
    for name, value in (("--n-eval", n_eval), ("--n-calib", n_calib), ("--block-len", block_len),
                        ("--batch-size", batch_size)):
        if value < 1:
            _fail(f"{name} must be at least 1, got {value}")
    try:
        check_analysis_settings(fraction, unprunable_ratio)
    except sg.ShearGraphError as e:
        _fail(_as_flags(str(e), ANALYZE_FLAGS))
    _check_device(device)
    times = {}
    try:
        t = time.perf_counter()
        domains = [sg.domain_from_file(p) for p in domain] or sg.default_domains()
        m, tok = load_model(model, dtype=getattr(torch, dtype))
        if tok is None:
            _fail(f"{model} has no tokenizer; analysis needs one to read text")
        check_tokenizer(m, tok)
        m = m.to(device)
        blocks = sg.make_blocks(tok, domains, block_len=block_len, n_eval=n_eval, n_calib=n_calib)
        times["load model + data"] = time.perf_counter() - t
        t = time.perf_counter()
        graph = sg.trace(m)
        groups = sg.find_groups(graph)
        times["trace + groups"] = time.perf_counter() - t
        t = time.perf_counter()
        sal = sg.compute_saliency(m, groups, saliency, blocks.all_calib(), batch_size=batch_size,
                                  split=blocks.split.to_dict())
        times[f"saliency ({saliency})"] = time.perf_counter() - t
        t = time.perf_counter()
        km = sg.analyze_knowledge(m, groups, sal, blocks.all_eval(), fraction=fraction,
                                  unprunable_ratio=unprunable_ratio, batch_size=batch_size,
                                  split=blocks.split.to_dict())
        times["knowledge analysis"] = time.perf_counter() - t
    except (sg.ShearGraphError, RuntimeError) as e:
        _fail(str(e).splitlines()[0])
    from viz.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    km.seconds = {k: round(v, 1) for k, v in times.items()}
    km.save(out / "knowledge.json")
    from shear_graph.plan import atomic_write_text

    atomic_write_text(out / "saliency.json", sal.to_json())
    params = {"fraction": fraction, "unprunable_ratio": unprunable_ratio, "block_len": block_len,
              "eval blocks per domain": n_eval, "calibration blocks per domain": n_calib, "device": device,
              "dtype": dtype}
    write_report(out / "report.html", model_name=model or "smollm2-135m", graph=graph, groups=groups, saliency=sal,
                 km=km, params=params, timings={k: round(v, 1) for k, v in times.items()})
    times["report"] = time.perf_counter() - t
    fixed = [c.id for c in km.clusters if c.unprunable]
    typer.echo(f"base loss {km.base_loss:.4f} nats/token; {len(km.clusters)} clusters; max/min positive Δloss "
               f"{km.non_uniformity:.1f}; {km.n_harmless} clusters did not raise the loss")
    typer.echo(f"unprunable ({len(fixed)}): {', '.join(fixed)}")
    typer.echo(f"report: {out / 'report.html'}")
    typer.echo(json.dumps({k: round(v, 1) for k, v in times.items()}))


def _pairs(values, what: str) -> dict:
    """``NAME=PATH`` strings as a dict; a bare ``NAME`` maps to None."""
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        name = name.strip()
        if not name or (sep and not path.strip()):
            _fail(f"bad {what} {v!r}: write NAME or NAME=PATH")
        if name in out:
            _fail(f"{what} {name!r} is given twice")
        out[name] = Path(path.strip()) if sep else None
    return out


@app.command("eval")
def eval_(
    model: Optional[str] = typer.Argument(None, help="Local model folder (pruned ones too); default: the "
                                                     "embedded SmolLM2-135M"),
    tasks: Optional[str] = typer.Option(None, help="Comma-separated tasks: boolq, piqa, hellaswag, winogrande, "
                                                   "arc_easy, arc_challenge, openbookqa, wikitext2; NAME=FILE reads "
                                                   "a task from FILE. Default: every task found in the data folder"),
    text: list[str] = typer.Option([], help="Perplexity on a text domain, NAME=FILE (repeatable)"),
    limit: Optional[int] = typer.Option(None, help="Score the first N items of each zero-shot task"),
    seq_len: str = typer.Option("128", help="Perplexity window length(s), comma-separated (papers: 128 "
                                            "LLM-Pruner, 2048 SliceGPT)"),
    batch_size: int = typer.Option(16, help="Requests (or perplexity windows) per forward pass"),
    out: Optional[Path] = typer.Option(None, help="Write the results as JSON here"),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists"),
    data_dir: Optional[Path] = typer.Option(None, help="Folder of task files in the default layout; "
                                                       "default: $SHEAR_GRAPH_EVAL_DATA"),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, ...; auto: cuda when available"),
    dtype: str = typer.Option("auto", help="float32, bfloat16 or float16; auto: bfloat16 on GPU, float32 on CPU"),
    exclude: list[str] = typer.Option([], help="A calibration/recovery source (file, folder or domain name) that "
                                               "must not be evaluated on (repeatable)"),
):
    """Zero-shot accuracy (lm-eval conventions) and perplexity of MODEL, offline."""
    import torch

    import shear_graph as sg
    from shear_graph.default_model import load_model
    from shear_graph.tasks import available

    if out is not None:
        _check_out(out, overwrite)
        if out.is_dir():
            _fail(f"--out {out} is a folder; give the path of the JSON file to write")
    if tasks is not None and not tasks.strip(", "):
        _fail("--tasks is empty; name tasks (e.g. --tasks piqa,boolq) or leave it out for every task found")
    try:
        lengths = [int(n) for n in seq_len.split(",") if n.strip()]
    except ValueError:
        lengths = []
    if not lengths or min(lengths) < 2:
        _fail(f"--seq-len takes window lengths of at least 2 tokens, comma-separated; got {seq_len!r}")
    if limit is not None and limit < 1:
        _fail(f"--limit must be at least 1, got {limit}")
    if batch_size < 1:
        _fail(f"--batch-size must be at least 1, got {batch_size}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    if dtype not in dtypes:
        _fail(f"unknown --dtype {dtype!r}; use {', '.join(dtypes)} or auto")
    _check_device(device)
    try:
        chosen = _pairs(tasks.split(","), "task") if tasks else {t: None for t in available(data_dir)}
        if not chosen and not text:
            _fail(f"no task file found under {data_dir or '$SHEAR_GRAPH_EVAL_DATA'}; name tasks with --tasks")
        domains = _pairs(text, "text domain")
        if any(p is None for p in domains.values()):
            _fail("--text takes NAME=FILE")
        # check names, files and the calibration guard before the model loads
        sg.evaluation.check_not_calibration(sg.evaluation.resolve_sources(chosen, domains, data_dir), exclude)
        m, tok = load_model(model, dtype=dtypes[dtype])
        if tok is None:
            _fail(f"{model} has no tokenizer; evaluation needs one (save it with the model: "
                  "save_pruned(model, path, tokenizer=tok))")
        report = sg.evaluate(m, tok, chosen, texts=domains, data_dir=data_dir, limit=limit, seq_len=lengths,
                             batch_size=batch_size, device=device, exclude=exclude,
                             model_name=model or "smollm2-135m")
    except sg.ShearGraphError as e:
        _fail(str(e))
    if out is not None:
        report.save(out)
    typer.echo(f"{report.model['name']} ({report.model['class']}, {report.model['parameters']:,} parameters, "
               f"fingerprint {report.model['fingerprint']}, {report.model['dtype']} on {report.model['device']})")
    typer.echo(report.table())
    typer.echo(f"total {report.seconds:.1f} s" + (f"; results in {out}" if out is not None else ""))


@app.command("export")
def export_model(
    model: str = typer.Argument(..., help="A model folder: a pruned one (oneshot's --out, prune's OUT/model) or a "
                                          "plain Llama"),
    out: Path = typer.Argument(..., help="Output: a folder for hf and decilm, a .gguf file for gguf; must not exist"),
    format: str = typer.Option("hf", "--format", help="hf (stock transformers, widths padded to the widest layer), "
                               "decilm (nemotron-nas: vLLM, SGLang, TensorRT-LLM) or gguf (llama.cpp deci arch, "
                               "exact widths)"),
    dtype: str = typer.Option("f32", help="Weight dtype: f32, f16 or bf16"),
):
    """Write a pruned model in a format inference engines load."""
    import shear_graph as sg

    try:
        written = sg.export(model, out, format=format, dtype=dtype)
    except sg.ShearGraphError as e:
        _fail(str(e).splitlines()[0])
    typer.echo(f"{format} export: {written}")


def main() -> None:  # pragma: no cover
    app()


@app.command()
def prune(
    model: Optional[str] = typer.Argument(None, help="Local model folder; default: the embedded SmolLM2-135M"),
    ratio: float = typer.Option(0.2, help="Fraction of total parameters to remove, above 0 and below 1"),
    out: Path = typer.Option(Path("out/pruned"), help="Output folder: model/, plan.json, knowledge.json, "
                                                       "results.json, report.html"),
    baseline: str = typer.Option("taylor", help="One-shot baseline pruned to the same size and recovered on the "
                                                "budget (--baseline-budget): taylor, magnitude or none"),
    baseline_budget: str = typer.Option(DEFAULTS.peer_budget, help="tokens: the baseline recovers on as many "
                                        "tokens as LHSPG and recovery together (equal compute); recovery: on the "
                                        "recovery steps alone"),
    domain: list[Path] = typer.Option([], help="A training text (.txt/.jsonl) domain; repeat for several. "
                                                 "Default: Python docs, standard-library code and "
                                                 "the Brown Corpus (general English, when installed)"),
    data_dir: Optional[Path] = typer.Option(None, help="Zero-shot task folder (default $SHEAR_GRAPH_EVAL_DATA); "
                                                        "without one, zero-shot tasks are skipped with a note"),
    tasks: str = typer.Option(",".join(DEFAULTS.eval_tasks), help="Zero-shot tasks to evaluate, comma-separated; "
                                                                  "none for no zero-shot evaluation; wikitext2 adds "
                                                                  "its perplexity (minutes per model on CPU)"),
    eval_limit: int = typer.Option(DEFAULTS.eval_limit, help="Items per zero-shot task"),
    n_periods: int = typer.Option(DEFAULTS.n_periods, help="LHSPG pruning periods"),
    period_steps: int = typer.Option(DEFAULTS.period_steps, help="Steps per LHSPG period"),
    recovery_steps: int = typer.Option(DEFAULTS.recovery_steps, help="Recovery steps (LoRA) for LoRAShear and for the baseline"),
    lora_rank: int = typer.Option(DEFAULTS.lora_rank, help="LoRA rank for LHSPG and recovery"),
    layer_shares: str = typer.Option(DEFAULTS.layer_shares, help="uniform: every prunable layer loses the same "
                                     "share; knowledge: layers whose masking cost less in the knowledge analysis "
                                     "lose more (up to twice the uniform share)"),
    keep_layers: str = typer.Option("", help="Decoder layers LHSPG leaves whole, comma-separated; negative "
                                    "counts from the end (LLM-Pruner keeps 0,1,2,3,-2,-1). Default: none"),
    distill: float = typer.Option(DEFAULTS.distill, help="Weight from 0 to 1 of distillation from the dense model "
                                  "in LHSPG's loss (0: language-modelling loss only)"),
    recovery_distill: float = typer.Option(DEFAULTS.recovery_distill, help="Weight from 0 to 1 of distillation "
                                           "from the dense model in the recovery of LoRAShear and the baseline "
                                           "alike (0: language-modelling loss only)"),
    kinds: str = typer.Option(",".join(DEFAULTS.kinds), help="Group kinds LHSPG and the baseline prune, "
                              "comma-separated: attention_head, ffn (ffn alone keeps every attention head)"),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16 (bf16 on GPU)"),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists"),
    resume: bool = typer.Option(False, help="Continue the run in OUT from its last finished stage"),
    keep_work: bool = typer.Option(False, help="Keep OUT/.work (every intermediate model, ~1.7 GB for the "
                                               "default model) after the run; removed by default"),
    round_to: int = typer.Option(DEFAULTS.round_to, help="Keep FFN widths in multiples of this many channels "
                                 "(8, 64, 128, 256), in LHSPG and the baseline; 1: exact ratio"),
    export: str = typer.Option("", help="Formats written beside OUT/model, comma-separated: hf (model-hf/), "
                               "decilm (model-decilm/), gguf (model.gguf). Default: none"),
):
    """The main job: knowledge analysis, LHSPG progressive pruning, physical
    pruning, dynamic recovery and evaluation, next to a one-shot baseline;
    one HTML report."""
    import shear_graph as sg
    from shear_graph.default_model import load_model
    from shear_graph.pipeline import prune as run_prune

    _check_out(out, overwrite, resume, written=RUN_FILES, model=model)
    none = tasks.strip().lower() == "none"
    chosen = () if none else tuple(t.strip() for t in tasks.split(",") if t.strip())
    if not chosen and not none:
        _fail("--tasks is empty; name tasks (e.g. --tasks piqa,boolq) or none for no zero-shot evaluation")
    try:
        kept = layer_indices(keep_layers)
    except ValueError:
        _fail(f"--keep-layers takes comma-separated layer indices such as 0,1,-1, got {keep_layers!r}")
    settings = PruneSettings(ratio=ratio, baseline=None if baseline == "none" else baseline, eval_limit=eval_limit,
                             n_periods=n_periods, period_steps=period_steps, recovery_steps=recovery_steps,
                             lora_rank=lora_rank, layer_shares=layer_shares, distill=distill,
                             recovery_distill=recovery_distill, keep_layers=kept,
                             kinds=kind_names(kinds), device=device, dtype=dtype,
                             eval_tasks=chosen, peer_budget=baseline_budget, round_to=round_to,
                             export=kind_names(export) if export else ())
    try:
        settings.check()
    except sg.ShearGraphError as e:
        _fail(_as_flags(str(e), PRUNE_FLAGS))
    _check_device(device)
    try:
        domains = [sg.domain_from_file(p) for p in domain] or None
        m, tok = (None, None) if model is None else load_model(model)
        if model is not None and tok is None:
            _fail(f"{model} has no tokenizer; the job needs one to read text")
        from viz.prune_report import write_prune_report

        result = run_prune(m, tok, out=out, settings=settings, domains=domains, data_dir=data_dir,
                           overwrite=overwrite, resume=resume, report=write_prune_report, keep_work=keep_work)
    except sg.ShearGraphError as e:
        _fail(_as_flags(str(e).splitlines()[0], PRUNE_FLAGS))
    except KeyboardInterrupt:
        work = out / ".work"
        if work.is_dir() and any(p.name != "settings.json" for p in work.iterdir()):
            typer.secho(f"\ninterrupted: the finished stages are kept in {work}; continue with the same "
                        "command and --resume", fg=typer.colors.YELLOW, err=True)
        elif work.is_dir():
            typer.secho("\ninterrupted before any stage finished; --resume starts from the beginning",
                        fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130)
    for name, row in result.stages.items():
        ppl = ", ".join(f"{d} {v:.2f}" for d, v in row["perplexity"].items())
        extra = f"; zero-shot avg {row['zero_shot_average']:.3f}" if "zero_shot_average" in row else ""
        typer.echo(f"{name:<20} {row['params'] / 1e6:7.1f} M params; perplexity {ppl}{extra}")
    typer.echo(f"report: {out / 'report.html'}")
    typer.echo(json.dumps(result.seconds))
