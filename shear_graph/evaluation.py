"""Evaluate a model (dense or pruned) as the pruning papers report it.

Zero-shot multiple choice (BoolQ, PIQA, HellaSwag, WinoGrande, ARC-e, ARC-c,
OBQA) in lm-evaluation-harness conventions, and perplexity on WikiText-2 or
any text domain at stated sequence lengths, from local files only. The
result is an :class:`EvalReport` that round-trips through JSON.

Evaluation refuses data that was used for calibration or recovery
(:func:`check_not_calibration`). :func:`lm_eval_model` hands a loaded model to
lm-evaluation-harness itself when it is installed.
"""
from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import CalibrationOverlapError, EvalDataError, ShearGraphError
from .plan import atomic_write_text, count_params
from .prune import METADATA_KEY
from .scoring import encode_pair, loglikelihoods, max_length, perplexity, window_ids
from .tasks import TASKS, TEXTS, data_dir as resolve_data_dir, read_text
from .trace import fingerprint

FORMAT = 1  # version of the results JSON


@dataclass
class TaskResult:
    """One figure: a task's reported metric, or a text's perplexity at one length.

    Attributes
    ----------
    task : str
        Task or text domain name.
    metric : str
        ``acc``, ``acc_norm`` or ``perplexity``.
    value : float
    n : int
        Items scored; for perplexity, tokens predicted.
    stderr : float or None
        Sample standard error of the mean for accuracies; None for perplexity.
    seq_len : int
        Perplexity window length; for zero-shot tasks the length inputs are
        left-truncated to (the model's maximum).
    n_windows : int or None
        Perplexity windows scored.
    metrics : dict
        Every metric computed, with stderrs (``acc``, ``acc_stderr``,
        ``acc_norm``, ...; ``nll`` and ``dropped_tokens`` for perplexity).
    source : dict
        The files read and their sha256.
    seconds : float
    """

    task: str
    metric: str
    value: float
    n: int
    stderr: float | None
    seq_len: int
    n_windows: int | None = None
    metrics: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class EvalReport:
    """Results of :func:`evaluate`: model identity, settings, one
    :class:`TaskResult` per figure, and timing."""

    model: dict
    results: list
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0
    versions: dict = field(default_factory=dict)
    format: int = FORMAT

    def average(self) -> dict | None:
        """Mean of the reported zero-shot metrics (the papers' "Average"
        column), over the tasks run; None with fewer than two."""
        rows = [r for r in self.results if r.metric != "perplexity"]
        if len(rows) < 2:
            return None
        return {"value": float(np.mean([r.value for r in rows])), "tasks": [r.task for r in rows]}

    def table(self) -> str:
        """The results as aligned text, one line per figure."""
        lines = [f"{'task':<16} {'metric':<11} {'value':>9} {'stderr':>8} {'n':>8} {'seq_len':>7} {'seconds':>8}"]
        for r in self.results:
            err = f"{r.stderr:.4f}" if r.stderr is not None else "-"
            window = r.seq_len if r.metric == "perplexity" else "-"  # zero-shot: only a truncation bound
            lines.append(f"{r.task:<16} {r.metric:<11} {r.value:>9.4f} {err:>8} {r.n:>8} {window:>7} "
                         f"{r.seconds:>8.1f}")
        avg = self.average()
        if avg:
            lines.append(f"{'average':<16} {'':<11} {avg['value']:>9.4f}   ({', '.join(avg['tasks'])})")
        return "\n".join(lines)

    def to_json(self) -> str:
        d = asdict(self)
        d["average"] = self.average()
        return json.dumps(d, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "EvalReport":
        """Parse a report; raises :class:`ShearGraphError` on malformed JSON."""
        try:
            d = json.loads(text)
            d.pop("average", None)
            d["results"] = [TaskResult(**r) for r in d["results"]]
            return cls(**d)
        except (ValueError, TypeError, KeyError) as e:
            raise ShearGraphError(f"not a shear-graph evaluation report: {e}") from e

    def save(self, path) -> None:
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path) -> "EvalReport":
        path = Path(path)
        if not path.is_file():
            raise ShearGraphError(f"no evaluation report at {path}")
        return cls.from_json(path.read_text())


# -- sources and the calibration guard --------------------------------------------

def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_sources(tasks=None, texts=None, data_dir=None) -> dict:
    """The files each evaluation reads: ``{name: [Path, ...]}``.

    Parameters
    ----------
    tasks : iterable of str, or dict
        Task names (zero-shot tasks and ``wikitext2``), found under the data
        folder; or ``{name: file}`` to read a task from a given file (a value
        of None means the data folder's).
    texts : dict, optional
        ``{domain name: text file}`` for perplexity.
    data_dir : path, optional
        The data folder (default ``$SHEAR_GRAPH_EVAL_DATA``); needed only for
        tasks without a file of their own.

    Raises
    ------
    EvalDataError
        Unknown task, a name used twice, or a file that does not exist.
    """
    tasks = dict(tasks) if isinstance(tasks, dict) else {t: None for t in tasks or ()}
    texts = dict(texts or {})
    known = sorted(TASKS) + sorted(TEXTS)
    sources = {}
    for name, path in tasks.items():
        if name not in TASKS and name not in TEXTS:
            raise EvalDataError(f"unknown task {name!r}; known tasks: {', '.join(known)} "
                                "(perplexity on another text: name it as a text domain)")
        if path is None:
            default = TASKS[name].path if name in TASKS else TEXTS[name][0]
            path = resolve_data_dir(data_dir) / default
        sources[name] = Path(path)
    for name, path in texts.items():
        if name in sources:
            raise EvalDataError(f"text domain {name!r} has the name of a task; name it otherwise")
        sources[name] = Path(path)
    for name, path in sources.items():
        if not path.is_file():
            raise EvalDataError(f"{name}: no file {path}")
    return {name: TASKS[name].files(path) if name in TASKS else [path] for name, path in sources.items()}


def check_not_calibration(sources: dict, exclude) -> None:
    """Refuse to evaluate on data used for calibration or recovery.

    Parameters
    ----------
    sources : dict
        ``{name: [files]}`` to evaluate (:func:`resolve_sources`).
    exclude : iterable of str or Path
        Calibration and recovery sources: files, folders (every file under
        them) or domain names. An entry that is not an existing path is a
        name, matched against task and domain names.

    Raises
    ------
    CalibrationOverlapError
        An evaluation file is an excluded file (same resolved path, or same
        content by sha256), or an evaluation name is an excluded name.

    Notes
    -----
    Whole files are compared: a slice of an evaluation file used for
    calibration is not detected, so split before use and calibrate on the
    other part's own file.
    """
    files, names = [], set()
    for entry in exclude or ():
        p = Path(entry)
        if p.is_dir():
            files += [f for f in p.rglob("*") if f.is_file()]
        elif p.is_file():
            files.append(p)
        else:
            names.add(str(entry).lower())
    excluded = {f.resolve(): f for f in files}
    by_size: dict = {}
    for resolved, f in excluded.items():
        by_size.setdefault(f.stat().st_size, []).append(f)
    hashes: dict = {}
    for name, paths in sources.items():
        if name.lower() in names:
            raise CalibrationOverlapError(
                f"refusing to evaluate on {name!r}: it is listed among the calibration/recovery sources"
            )
        for path in paths:
            if path.resolve() in excluded:
                raise CalibrationOverlapError(
                    f"refusing to evaluate {name} on {path}: that file was used for calibration/recovery"
                )
            for other in by_size.get(path.stat().st_size, []):
                for f in (path, other):
                    if f not in hashes:
                        hashes[f] = sha256(f)
                if hashes[path] == hashes[other]:
                    raise CalibrationOverlapError(
                        f"refusing to evaluate {name} on {path}: it has the same content (sha256 "
                        f"{hashes[path][:12]}) as calibration/recovery file {other}"
                    )


# -- evaluation ----------------------------------------------------------------

def model_identity(model, name: str | None = None) -> dict:
    """Name, class, shear-graph fingerprint, parameter count, pruned or not,
    dtype and device of ``model``."""
    p = next(model.parameters())
    config = getattr(model, "config", None)
    return {
        "name": name or getattr(config, "_name_or_path", "") or type(model).__name__,
        "class": type(model).__name__,
        "fingerprint": fingerprint(model),
        "parameters": count_params(model),
        "pruned": getattr(config, METADATA_KEY, None) is not None,
        "dtype": str(p.dtype).removeprefix("torch."),
        "device": str(p.device),
    }


def _mean_stderr(x: np.ndarray) -> float | None:
    """Sample standard deviation over sqrt(n), as lm-eval's ``mean_stderr``
    (None for a single item)."""
    return float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else None


def score_items(model, tokenizer, items: list, batch_size: int = 16, progress: bool = False,
                desc: str = "") -> list:
    """Summed continuation log-probabilities of each item: a list (one per
    item) of arrays (one value per choice)."""
    from tqdm import tqdm

    flat = [req for item in items for req in item.requests]
    encoded = [encode_pair(tokenizer, c, x) for c, x in flat]
    with tqdm(total=len(encoded), desc=desc, unit="req", disable=not progress) as bar:
        scores = loglikelihoods(model, encoded, batch_size, progress=bar)
    out, at = [], 0
    for item in items:
        out.append(np.array(scores[at:at + len(item.requests)]))
        at += len(item.requests)
    return out


def accuracy(items: list, lls: list) -> dict:
    """``acc`` (argmax of summed log-probability) and ``acc_norm`` (argmax of
    the sum over the choice's UTF-8 byte length), each with its stderr."""
    gold = np.array([item.gold for item in items])
    acc = np.array([int(np.argmax(ll)) for ll in lls]) == gold
    lengths = [np.array([max(len(c.encode("utf-8")), 1) for c in item.choices]) for item in items]
    acc_norm = np.array([int(np.argmax(ll / n)) for ll, n in zip(lls, lengths)]) == gold
    return {"acc": float(acc.mean()), "acc_stderr": _mean_stderr(acc.astype(float)),
            "acc_norm": float(acc_norm.mean()), "acc_norm_stderr": _mean_stderr(acc_norm.astype(float))}


def evaluate(model, tokenizer, tasks=("wikitext2",), *, texts=None, data_dir=None, limit: int | None = None,
             seq_len=(128,), batch_size: int = 16, device=None, dtype=None, exclude=(),
             model_name: str | None = None, progress: bool = True) -> EvalReport:
    """Zero-shot accuracy and perplexity of ``model``, as the pruning papers report them.

    Parameters
    ----------
    model : transformers causal LM
        Dense or pruned (:func:`shear_graph.load_pruned`); moved in place to
        ``device``/``dtype`` when given.
    tokenizer : transformers tokenizer
    tasks : iterable of str, or dict
        Zero-shot tasks (``boolq``, ``piqa``, ``hellaswag``, ``winogrande``,
        ``arc_easy``, ``arc_challenge``, ``openbookqa``) and ``wikitext2``; a
        dict ``{name: file}`` reads a task from the user's own copy.
    texts : dict, optional
        ``{domain: text file}``: perplexity on each file, read verbatim.
    data_dir : path, optional
        Folder with the tasks' default layout (see :mod:`shear_graph.tasks`);
        default ``$SHEAR_GRAPH_EVAL_DATA``.
    limit : int, optional
        Score only the first ``limit`` items of each zero-shot task.
    seq_len : int or iterable of int
        Perplexity window length(s); every perplexity is reported per length.
    batch_size : int
        Requests (or windows) per forward pass.
    device, dtype : optional
        Where and in which dtype to run (e.g. ``"cuda"``, ``torch.bfloat16``).
    exclude : iterable of str or Path
        Calibration/recovery sources (files, folders, domain names); see
        :func:`check_not_calibration`.
    model_name : str, optional
        Recorded as the model's name (e.g. its folder).
    progress : bool
        Show tqdm progress bars.

    Returns
    -------
    EvalReport

    Raises
    ------
    EvalDataError
        Unknown task, missing data folder or file, malformed task file.
    CalibrationOverlapError
        An evaluation source is among ``exclude``; checked before any scoring.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    seq_lens = [seq_len] if isinstance(seq_len, int) else list(seq_len)
    if limit is not None and limit < 1:
        raise EvalDataError(f"limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise EvalDataError(f"batch_size must be at least 1, got {batch_size}")
    sources = resolve_sources(tasks, texts, data_dir)
    check_not_calibration(sources, exclude)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    model.eval()
    results = []
    for name, files in sources.items():
        source = {"files": [str(f) for f in files], "sha256": [sha256(f) for f in files]}
        t = time.perf_counter()
        if name in TASKS:
            task = TASKS[name]
            items = task.read(files[0])[:limit]
            lls = score_items(model, tokenizer, items, batch_size, progress, desc=name)
            metrics = {k: v for k, v in accuracy(items, lls).items() if k.removesuffix("_stderr") in task.metrics}
            results.append(TaskResult(name, task.metric, metrics[task.metric], len(items),
                                      metrics[f"{task.metric}_stderr"], max_length(model), None, metrics, source,
                                      round(time.perf_counter() - t, 2)))
            continue
        text = (TEXTS[name][1] if name in TEXTS else read_text)(files[0])
        for n in seq_lens:
            t = time.perf_counter()
            windows, dropped = window_ids(tokenizer, text, n)
            with tqdm(total=len(windows), desc=f"{name}@{n}", unit="win", disable=not progress) as bar:
                stats = perplexity(model, windows, batch_size, bar, dropped)
            results.append(TaskResult(name, "perplexity", stats.perplexity, stats.n_tokens, None, n,
                                      stats.n_windows, {"nll": stats.nll / stats.n_tokens, "dropped_tokens": dropped},
                                      source, round(time.perf_counter() - t, 2)))
    import transformers

    return EvalReport(
        model=model_identity(model, model_name),
        results=results,
        settings={"limit": limit, "batch_size": batch_size, "seq_len": seq_lens, "num_fewshot": 0,
                  "tokenizer": getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
                  "conventions": "lm-evaluation-harness 0.4 prompts; acc_norm divides by choice UTF-8 bytes; "
                                 "perplexity over non-overlapping windows (LLM-Pruner)",
                  "exclude": [str(e) for e in exclude or ()]},
        seconds=round(time.perf_counter() - start, 2),
        versions={"shear_graph": _version(), "torch": torch.__version__, "transformers": transformers.__version__,
                  "python": platform.python_version()},
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shear-graph")
    except PackageNotFoundError:
        return "unknown"


def lm_eval_model(model, tokenizer, **kwargs):
    """Wrap a loaded model, pruned ones included, as lm-evaluation-harness's ``HFLM``.

    Pruned models with per-layer widths load only through
    :func:`shear_graph.load_pruned`, so lm-eval's own loader cannot open them;
    hand it the loaded model instead::

        import lm_eval
        lm = sg.lm_eval_model(sg.load_pruned("out/m"), tokenizer, batch_size=16)
        lm_eval.simple_evaluate(model=lm, tasks=["boolq", "piqa", "hellaswag"])

    lm-eval is not a dependency of shear-graph: ``pip install lm-eval``.

    Parameters
    ----------
    model : transformers causal LM
    tokenizer : transformers tokenizer
    **kwargs
        Passed to ``HFLM`` (``batch_size``, ``max_length``, ...).

    Raises
    ------
    ShearGraphError
        lm-eval is not installed.
    """
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError as e:
        raise ShearGraphError("lm-eval is not installed: pip install lm-eval (shear-graph does not depend on it)"
                              ) from e
    return HFLM(pretrained=model, tokenizer=tokenizer, **kwargs)
