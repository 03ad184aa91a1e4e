"""Dynamic knowledge recovery: LoRA fine-tuning over an adaptive data mixture.

After pruning, LoRAShear (Chen et al. 2023, arXiv 2310.18356, Sec. 3.4) recovers
lost knowledge by LoRA fine-tuning on a mixture of data domains that favours
the domains on which the pruned model lags the dense one most. The mixture
rule here is Sheared-LLaMA's dynamic batch loading (Xia et al. 2023,
arXiv 2310.06694, Alg. 1), itself DoReMi's exponentiated update (Xie et al.
2023, arXiv 2305.10429, Alg. 1): every ``update_every`` steps the per-domain
loss gap to the dense model is measured on small probe blocks and

    w <- normalize(w * exp(eta * gap)),    w <- (1 - c) w + c / k.

Training runs under ``accelerate``: in one process, or in several launched
with ``accelerate launch`` or ``torchrun`` (DDP, tested with two CPU processes
over gloo; FSDP through the accelerator's plugin is written for but untested). Each
step's domain and rows are drawn from a generator seeded by ``(seed, step)``,
so every rank draws the same domain and global batch and trains on its own
share of the rows, and a resumed run draws exactly what an uninterrupted one
would.

With ``distill > 0`` each step's loss mixes in the KL divergence to a dense
teacher's next-token distributions (:mod:`shear_graph.distill`), as pruned
models are recovered in Minitron (Muralidharan et al. 2024, arXiv 2407.14679):
the teacher's full distributions carry what it knows beyond the training text.
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import tempfile
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn
from tqdm.auto import tqdm

from .adapters import add_lora, gradient_checkpointing, lora_targets
from .distill import check_distill, distill_loss, frozen_teacher, teacher_logits
from .errors import ShearGraphError, TrainingError
from .plan import umask
from .trace import fingerprint

CHECKPOINT_FILE = "recovery_state.pt"
# A checkpoint whose adaptor was built on another model, with another rank or
# other targets, or over other domains cannot be loaded; other differences
# (lr, seed, data...) only make the resumed run differ from an uninterrupted one.
_STRUCTURAL = ("fingerprint", "domains", "lora_rank", "lora_alpha", "target_modules")


@dataclass
class RecoveryResult:
    """What :func:`recover` returns.

    Attributes
    ----------
    model : nn.Module
        The recovered model with the LoRA adaptor merged: a plain transformers
        model of the input's class and shapes, in eval mode, on the training
        device and dtype.
    weights_history : list of dict
        One entry per probe measurement: ``{"step", "weights": {domain: w},
        "gaps": {domain: nats}, "losses": {domain: nats}}``. ``weights`` is
        the mixture in force from ``step`` on (after the update, on scheduled
        steps); the last entry, at ``step == steps``, gives the final losses.
    loss_history : list of dict
        One entry per training step: ``{"step", "domain", "loss"}``, the mean
        token cross-entropy (nats) of the step's global batch (with ``distill``,
        the mixed loss that was minimised).
    tokens : int
        Tokens in all training batches, summed over processes (and over the
        run this one resumed).
    seconds : float
        Wall time of this call.
    start_step : int
        The step this call started at: 0, or the checkpoint's step on resume.
    config : dict
        The settings and data identity the run was made with.
    """

    model: nn.Module
    weights_history: list
    loss_history: list
    tokens: int
    seconds: float
    start_step: int = 0
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Everything but the model, JSON-able."""
        return {"weights_history": self.weights_history, "loss_history": self.loss_history, "tokens": self.tokens,
                "seconds": self.seconds, "start_step": self.start_step, "config": self.config}


@dataclass
class _Progress:
    """The run's state besides the adaptor and optimizer: what a checkpoint restores."""

    step: int
    weights: list
    weights_history: list = field(default_factory=list)
    loss_history: list = field(default_factory=list)
    tokens: int = 0


def update_weights(weights: np.ndarray, gaps: np.ndarray, eta: float = 1.0, smoothing: float = 1e-3) -> np.ndarray:
    """One step of the dynamic data adaptor: re-weight domains by their loss gap.

    Sheared-LLaMA's dynamic batch loading (Xia et al. 2023, Alg. 1), with
    DoReMi's step size and smoothing (Xie et al. 2023, Alg. 1):

        alpha_i = w_i * exp(eta * gap_i) / sum_j w_j * exp(eta * gap_j)
        w'_i    = (1 - c) * alpha_i + c / k

    computed in log space so that large gaps do not overflow.

    Parameters
    ----------
    weights : np.ndarray
        Current mixture, shape [k], non-negative (normalized here).
    gaps : np.ndarray
        Per-domain loss gap ``max(L_model - L_reference, 0)``, shape [k], nats
        per token.
    eta : float
        Step size, >= 0 (0 keeps the mixture).
    smoothing : float
        ``c`` in [0, 1]: the share mixed in uniformly, so that no domain's
        weight falls below ``c / k``.

    Returns
    -------
    np.ndarray
        The new mixture, shape [k], float64, summing to 1.

    Raises
    ------
    ShearGraphError
        Shapes differ, a weight or gap is negative or not finite, the weights
        sum to zero, or ``eta`` / ``smoothing`` is out of range.

    Examples
    --------
    >>> update_weights(np.array([0.5, 0.5]), np.array([1.0, 0.0]), eta=1.0, smoothing=0.0).round(4)
    array([0.7311, 0.2689])
    """
    _check_rule(eta, smoothing)
    w, g = np.asarray(weights, dtype=np.float64), np.asarray(gaps, dtype=np.float64)
    if w.ndim != 1 or w.shape != g.shape or w.size == 0:
        raise ShearGraphError(f"weights and gaps must be 1-D of one length, got shapes {w.shape} and {g.shape}")
    if not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
        raise ShearGraphError(f"weights must be finite, non-negative and not all zero, got {w.tolist()}")
    if not (np.isfinite(g).all() and (g >= 0).all()):
        raise ShearGraphError(f"gaps must be finite and non-negative (max(L_model - L_ref, 0)), got {g.tolist()}")
    with np.errstate(divide="ignore"):  # a zero weight stays zero: log 0 = -inf, exp(-inf) = 0
        logits = np.log(w / w.sum()) + eta * g
    alpha = np.exp(logits - logits.max())
    return (1.0 - smoothing) * alpha / alpha.sum() + smoothing / w.size


def _check_rule(eta: float, smoothing: float) -> None:
    if not (math.isfinite(eta) and eta >= 0):
        raise ShearGraphError(f"eta must be a finite number >= 0, got {eta}")
    if not 0 <= smoothing <= 1:
        raise ShearGraphError(f"smoothing must be in [0, 1], got {smoothing}")


def recover(model: nn.Module, train: dict, probe: dict, reference_loss: dict, *, steps: int, batch_size: int = 4,
            lr: float = 2e-4, lora_rank: int = 8, lora_alpha: int = 16, target_modules: list | str | None = None,
            update_every: int = 50, eta: float = 1.0, smoothing: float = 1e-3, seed: int = 0, device=None,
            dtype: torch.dtype | None = None, accelerator: Accelerator | None = None, progress: bool = True,
            checkpoint_dir=None, teacher: nn.Module | None = None, distill: float = 0.0, inplace: bool = False,
            checkpointing: bool | None = None) -> RecoveryResult:
    """Recover a pruned model's knowledge by LoRA fine-tuning over an adaptive domain mixture.

    A deep copy of ``model`` gets a peft LoRA adaptor (base frozen) and is
    trained with AdamW for ``steps`` steps; each step's batch comes from one
    domain, drawn from the current mixture. At step 0 and every
    ``update_every`` steps the mean token loss on ``probe[d]`` is measured
    (gathered over all processes), the gap ``max(loss - reference_loss[d], 0)``
    is taken and the mixture is updated with :func:`update_weights` (starting
    from uniform). Sheared-LLaMA's Alg. 1 first updates at step ``m``, from a
    mixture carried over from pruning; starting from uniform, updating at step
    0 lets the pruned model's initial gaps, its largest, set the mixture at
    once. At the end the adaptor is merged into the weights.
    ``model`` itself is never changed (unless ``inplace``); the copy needs as
    much memory again.

    Under ``accelerate launch`` every process calls this with the same
    arguments; ``batch_size`` is per process, and each process trains on its
    own rows of the step's global batch.

    Parameters
    ----------
    model : nn.Module
        A transformers causal LM (dense or pruned), without a peft adaptor.
    train : dict of str -> torch.Tensor
        Training blocks per domain, int64 [n, block_len] token ids.
    probe : dict of str -> torch.Tensor
        Small blocks per domain, int64 [m, block_len], disjoint from ``train``
        and from any evaluation split, on which gaps are measured.
    reference_loss : dict of str -> float
        The dense model's mean token cross-entropy (nats) on ``probe[d]``,
        e.g. ``held_out_loss(dense, probe[d])``.
    steps : int
        Optimizer steps in all (a resumed run continues up to this number).
    batch_size : int
        Blocks per process per step.
    lr : float
        AdamW learning rate (constant; no weight decay).
    lora_rank, lora_alpha : int
        LoRA ``r`` and ``alpha`` (scale alpha / r).
    target_modules : list of str or str, optional
        Modules to adapt, as peft matches them (names or name suffixes; a
        string is a regex). Default: every ``nn.Linear`` inside the decoder
        layers (any ``nn.ModuleList``), so not ``lm_head`` or the embeddings.
    update_every : int
        Steps between mixture updates (``m`` of Sheared-LLaMA's Alg. 1; its
        pruning stage uses 50 of 3,200 steps, its continued pre-training 400
        of 48,000).
    eta, smoothing : float
        Step size and uniform smoothing ``c`` of :func:`update_weights`.
        ``eta = 1`` as in DoReMi and Sheared-LLaMA; ``c = 1e-3`` as in the
        DoReMi paper (Sheared-LLaMA's code uses 1e-4): every domain keeps a
        weight of at least ``c / k``, so its gap stays measured and it is
        still sampled now and then.
    seed : int
        Seeds the adaptor's initialization and every step's draw.
    device : str or torch.device, optional
        Where to train; default: the accelerator's device (a GPU if any).
    dtype : torch.dtype, optional
        Of the base weights; default bf16 on a GPU that has it, else fp32.
        The adaptor stays fp32.
    accelerator : accelerate.Accelerator, optional
        Default: a new ``Accelerator`` (CPU-only when ``device`` is a CPU).
    progress : bool
        Show a tqdm bar with step, loss, domain and mixture (main process only).
    checkpoint_dir : str or Path, optional
        After each measurement, the LoRA weights, optimizer and mixture state
        are written to ``checkpoint_dir/recovery_state.pt`` (temporary file,
        then ``os.replace``), and a call given the same directory resumes from
        it: with the same arguments the result equals that of one
        uninterrupted run. Every process reads it, so under several
        processes it must be on a file system they share. Not supported
        under FSDP.
    teacher : nn.Module, optional
        The dense model, for ``distill`` (ignored when it is 0); never changed
        (moved to a copy only when it is not already on the training device in
        ``dtype``).
    distill : float
        Weight ``a`` in [0, 1]: each step minimises ``(1 - a) * CE + a *
        KL(teacher || model)`` per token (:func:`~shear_graph.distill.distill_loss`);
        0, the default, is plain language-modelling recovery. The mixture still
        follows the cross-entropy gaps. Costs one teacher forward per step.
    inplace : bool
        Train ``model`` itself, moved to the device and dtype, instead of a copy
        (no second copy of its weights); the returned model is ``model``.
    checkpointing : bool, optional
        Gradient checkpointing of the decoder layers (same result, activations
        recomputed in the backward pass); None, the default: on above
        :data:`~shear_graph.adapters.CHECKPOINTING_ABOVE` parameters.

    Returns
    -------
    RecoveryResult

    Raises
    ------
    ShearGraphError
        Bad input (no domains, domains without probe blocks or reference
        loss, blocks not int64 [n, block_len] token ids of this model, counts
        below 1, a model that already carries an adaptor), a ``device`` other
        than the accelerator's, a checkpoint of another model or adaptor,
        ``distill`` outside [0, 1], or above 0 without a ``teacher`` or with one
        of another vocabulary.
    TrainingError
        A training or probe loss was NaN or infinite; names the step and the
        domain. A checkpoint then holds the last good state.
    """
    t0 = time.perf_counter()
    domains = _check_inputs(model, train, probe, reference_loss, steps=steps, batch_size=batch_size,
                            lora_rank=lora_rank, lora_alpha=lora_alpha, update_every=update_every)
    _check_numbers(lr, seed)
    _check_rule(eta, smoothing)
    check_distill(distill)
    if distill and teacher is None:
        raise ShearGraphError(f"distill={distill} needs the dense model as teacher=: recover(..., teacher=dense, "
                              "distill=...)")
    if distill and (not callable(getattr(teacher, "get_input_embeddings", None))
                    or teacher.get_input_embeddings().weight.shape[0] != model.get_input_embeddings().weight.shape[0]):
        raise ShearGraphError(f"teacher= must be the dense language model the pruned one came from (the same "
                              f"vocabulary); got {type(teacher).__name__}")
    own_accelerator = accelerator is None
    acc = _accelerator(accelerator, device)
    if checkpoint_dir is not None and acc.distributed_type == DistributedType.FSDP:
        raise ShearGraphError("checkpoint_dir is not supported under FSDP (its optimizer state is sharded); "
                              "use DDP or run without checkpoint_dir")
    if dtype is None:
        dtype = torch.bfloat16 if acc.device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    work = (model if inplace else copy.deepcopy(model)).to(acc.device, dtype)
    trainable = {n for n, p in work.named_parameters() if p.requires_grad}
    targets = _targets(work, target_modules)
    config = {
        "fingerprint": fingerprint(work), "domains": domains, "lora_rank": lora_rank, "lora_alpha": lora_alpha,
        "target_modules": targets, "steps": steps, "batch_size": batch_size, "lr": lr, "update_every": update_every,
        "eta": eta, "smoothing": smoothing, "seed": seed, "dtype": str(dtype), "world_size": acc.num_processes,
        "reference_loss": {d: float(reference_loss[d]) for d in domains},
        "train_sha256": {d: _digest(train[d]) for d in domains},
        "probe_sha256": {d: _digest(probe[d]) for d in domains},
        **({"distill": float(distill)} if distill else {}),  # absent when 0: older checkpoints stay valid
    }
    run = _Run(acc, _with_lora(work, lora_rank, lora_alpha, targets, seed), config, train, probe,
               Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None)
    start = run.progress.step
    with frozen_teacher(teacher, acc.device, dtype) if distill else nullcontext() as run.teacher, \
            gradient_checkpointing(work, checkpointing):
        run.train_until(steps, progress)
    merged = acc.unwrap_model(run.model).merge_and_unload()
    for name, param in merged.named_parameters():
        param.requires_grad_(name in trainable)
    done = run.progress
    if own_accelerator:
        acc.free_memory()
    return RecoveryResult(merged.eval(), done.weights_history, done.loss_history, done.tokens,
                          round(time.perf_counter() - t0, 3), start, config)


class _Run:
    """One recovery run: the prepared model and optimizer, the data and the progress."""

    def __init__(self, acc: Accelerator, model: nn.Module, config: dict, train: dict, probe: dict, ckpt: Path | None):
        self.acc, self.config, self.train, self.probe, self.ckpt = acc, config, train, probe, ckpt
        self.domains = config["domains"]
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config["lr"],
                                      weight_decay=0.0)
        k = len(self.domains)
        self.progress = _Progress(0, [1.0 / k] * k)
        self.saved_step = None
        self.teacher = None
        if ckpt is not None and ckpt.is_file():
            self._restore(model, optimizer)
        self.model, self.optimizer = acc.prepare(model, optimizer)

    def train_until(self, steps: int, progress: bool) -> None:
        bar = tqdm(total=steps, initial=self.progress.step, desc="recovery", unit="step",
                   disable=not progress or not self.acc.is_local_main_process)
        self.model.train()
        for t in range(self.progress.step, steps + 1):
            last = self.progress.weights_history[-1]["step"] if self.progress.weights_history else None
            if (t % self.config["update_every"] == 0 or t == steps) and last != t:
                self._measure(t, scheduled=t % self.config["update_every"] == 0)
            if t == steps:
                break
            domain, loss = self._train_step(t)
            bar.update()
            bar.set_postfix_str(f"loss {loss:.3f} on {domain} | w " + " ".join(
                f"{d}={w:.2f}" for d, w in zip(self.domains, self.progress.weights)))
        bar.close()

    def _train_step(self, t: int) -> tuple:
        acc, cfg = self.acc, self.config
        sizes = [len(self.train[name]) for name in self.domains]
        d, rows, torch_seed = _draw(cfg["seed"], t, self.progress.weights, sizes, cfg["batch_size"] * acc.num_processes)
        domain = self.domains[d]
        mine = rows[acc.process_index * cfg["batch_size"]:(acc.process_index + 1) * cfg["batch_size"]]
        ids = self.train[domain][mine].to(acc.device)
        with _seeded(torch_seed, acc.device):  # dropout masks, if the model has dropout
            out = self.model(input_ids=ids, labels=ids, use_cache=False)
        loss = out.loss
        if self.teacher is not None:
            a = cfg["distill"]
            loss = (1 - a) * loss + a * distill_loss(out.logits, teacher_logits(self.teacher, ids))
        mean = acc.reduce(loss.detach().float(), "mean").item()
        if not math.isfinite(mean):
            raise TrainingError(f"training loss is {mean} at step {t} on domain '{domain}': training diverged. "
                                + self._hint(), t, domain)
        acc.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.progress.loss_history.append({"step": t, "domain": domain, "loss": mean})
        self.progress.tokens += ids.numel() * acc.num_processes
        return domain, mean

    def _measure(self, t: int, scheduled: bool) -> None:
        """Probe losses and gaps at step ``t``; on ``scheduled`` steps the mixture update.

        The checkpoint is written after the finite check, so it only ever
        holds a good state, and without an unscheduled (final) entry, so that
        a resumed run's history equals an uninterrupted one's.
        """
        losses = _probe_losses(self.model, self.probe, self.domains, self.config["batch_size"], self.acc)
        for d, v in losses.items():
            if not math.isfinite(v):
                raise TrainingError(f"probe loss is {v} at step {t} on domain '{d}': training diverged before "
                                    "this step. " + self._hint(), t, d)
        ref = self.config["reference_loss"]
        gaps = {d: max(losses[d] - ref[d], 0.0) for d in self.domains}
        p = self.progress
        if scheduled:
            p.weights = update_weights(np.array(p.weights), np.array([gaps[d] for d in self.domains]),
                                       self.config["eta"], self.config["smoothing"]).tolist()
        entry = {"step": t, "weights": dict(zip(self.domains, p.weights)), "gaps": gaps, "losses": losses}
        if scheduled:
            p.weights_history.append(entry)
        self._save(t)
        if not scheduled:
            p.weights_history.append(entry)

    def _hint(self) -> str:
        if self.saved_step is None:
            return "Lower lr; pass checkpoint_dir to keep the last good state."
        return (f"The last good state (step {self.saved_step}) is saved in {self.ckpt}; lower lr and call again "
                "with the same checkpoint_dir to resume from it.")

    def _save(self, t: int) -> None:
        if self.ckpt is None:
            return
        from peft import get_peft_model_state_dict

        if self.acc.is_main_process:
            _atomic_save({"config": self.config, "progress": asdict(replace(self.progress, step=t)),
                          "lora": get_peft_model_state_dict(self.acc.unwrap_model(self.model)),
                          "optimizer": self.optimizer.state_dict()}, self.ckpt)
        self.acc.wait_for_everyone()
        self.saved_step = t

    def _restore(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        from peft import set_peft_model_state_dict

        saved = _load_checkpoint(self.ckpt, self.config)
        set_peft_model_state_dict(model, saved["lora"])
        optimizer.load_state_dict(saved["optimizer"])
        for group in optimizer.param_groups:  # the lr of this call, not the checkpoint's
            group["lr"] = self.config["lr"]
        self.progress = _Progress(**saved["progress"])
        self.saved_step = self.progress.step


def _check_inputs(model, train, probe, reference_loss, **counts) -> list:
    """The domains, in ``train``'s order, once every input is usable."""
    if getattr(model, "peft_config", None):
        raise ShearGraphError("the model already carries a peft adaptor: merge it first (model.merge_and_unload())")
    if not isinstance(train, dict) or not train:
        raise ShearGraphError("train is empty: pass {domain name: int64 tensor [n_blocks, block_len]} "
                              "(e.g. make_blocks(...).calib)")
    domains = list(train)
    for label, given in (("probe", probe), ("reference_loss", reference_loss)):
        missing, extra = [d for d in domains if d not in given], [d for d in given if d not in train]
        if missing:
            raise ShearGraphError(f"domains {missing} are in train but not in {label}: every trained domain needs "
                                  "probe blocks and the dense model's loss on them (held_out_loss(dense, probe[d]))")
        if extra:
            raise ShearGraphError(f"{label} has domains {extra} that train has not: give each the same domains")
    vocab = model.get_input_embeddings().weight.shape[0]
    for d in domains:
        _check_blocks(f"train['{d}']", train[d], vocab)
        _check_blocks(f"probe['{d}']", probe[d], vocab)
        try:
            ref = float(reference_loss[d])
        except (TypeError, ValueError) as e:
            raise ShearGraphError(f"reference_loss['{d}'] must be a number (nats per token), got "
                                  f"{reference_loss[d]!r}") from e
        if not (math.isfinite(ref) and ref >= 0):
            raise ShearGraphError(f"reference_loss['{d}'] must be a finite loss >= 0 (nats per token), got {ref}")
    for name, value in counts.items():
        if not _is_int(value) or value < 1:
            raise ShearGraphError(f"{name} must be an integer >= 1, got {value!r}")
    return domains


def _check_numbers(lr, seed) -> None:
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ShearGraphError(f"lr must be a finite number > 0, got {lr!r}")
    if not _is_int(seed) or seed < 0:
        raise ShearGraphError(f"seed must be an integer >= 0, got {seed!r}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_blocks(label: str, blocks, vocab: int) -> None:
    if not isinstance(blocks, torch.Tensor) or blocks.dtype != torch.int64 or blocks.dim() != 2:
        got = (f"{blocks.dtype} tensor of shape {tuple(blocks.shape)}" if isinstance(blocks, torch.Tensor)
               else type(blocks).__name__)
        raise ShearGraphError(f"{label} must be an int64 tensor [n_blocks, block_len] of token ids, got {got}; "
                              "cut text into blocks with shear_graph.make_blocks")
    if blocks.shape[0] < 1 or blocks.shape[1] < 2:
        raise ShearGraphError(f"{label} has shape {tuple(blocks.shape)}: at least one block of at least 2 tokens "
                              "is needed")
    if blocks.min() < 0 or blocks.max() >= vocab:
        raise ShearGraphError(f"{label} holds token ids in [{int(blocks.min())}, {int(blocks.max())}] but the "
                              f"model's embedding has {vocab} rows: tokenize with the model's own tokenizer")


def _accelerator(accelerator: Accelerator | None, device) -> Accelerator:
    if accelerator is None:
        accelerator = Accelerator(cpu=device is not None and torch.device(device).type == "cpu")
    if device is not None:
        want, got = torch.device(device), accelerator.device
        if want.type != got.type or (want.index is not None and want.index != (got.index or 0)):
            raise ShearGraphError(f"device {want} was asked for but accelerate runs this process on {got}: choose "
                                  "GPUs with CUDA_VISIBLE_DEVICES or accelerate launch, or leave device=None")
    return accelerator


def _targets(model: nn.Module, target_modules) -> list | str:
    if target_modules is None:
        return lora_targets(model)
    # a string is a peft regex; a list is order-free, so sort it for the checkpoint's identity
    return target_modules if isinstance(target_modules, str) else sorted(target_modules)


def _with_lora(model: nn.Module, rank: int, alpha: int, targets: list, seed: int) -> nn.Module:
    device = next(model.parameters()).device
    with _seeded(seed, device):  # lora_A's random init, identical on every rank and every resume
        return add_lora(model, rank, alpha, targets)


@contextmanager
def _seeded(seed: int, device: torch.device):
    """Seed torch's generators inside the block and restore the caller's state after it."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _draw(seed: int, step: int, weights: list, sizes: list, n_rows: int) -> tuple:
    """Step ``step``'s domain index, its global batch rows [n_rows] and a torch seed.

    A generator seeded by ``(seed, step)`` alone makes the draw the same on
    every rank and after a resume. Rows are without replacement within a step
    (with it, if the domain has fewer than ``n_rows`` blocks).
    """
    rng = np.random.default_rng([seed, step])
    d = int(rng.choice(len(weights), p=weights))
    rows = rng.choice(sizes[d], size=n_rows, replace=sizes[d] < n_rows)
    return d, torch.as_tensor(rows), int(rng.integers(2 ** 62))


def _probe_losses(model: nn.Module, probe: dict, domains: list, batch_size: int, acc: Accelerator) -> dict:
    """Mean next-token cross-entropy (nats) per domain over all of ``probe[d]``.

    Each process scores its share of the blocks and the sums are reduced over
    processes. Shares are padded (padding counts zero) so that every process
    runs the same number of forward passes, which FSDP requires.
    """
    model.eval()
    out = {}
    with torch.no_grad():
        for d in domains:
            blocks = probe[d]
            n, world = len(blocks), acc.num_processes
            idx = torch.arange(-(-n // world) * world)[acc.process_index::world]
            nll = torch.zeros((), dtype=torch.float64, device=acc.device)
            for rows in torch.split(idx, batch_size):
                ids = blocks[rows % n].to(acc.device)
                logits = model(input_ids=ids, use_cache=False).logits.float()
                per_block = nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:],
                                                        reduction="none").sum(1)
                nll += (per_block.double() * (rows < n).to(acc.device)).sum()
            out[d] = acc.reduce(nll, "sum").item() / (n * (blocks.shape[1] - 1))
    model.train()
    return out


def _digest(blocks: torch.Tensor) -> str:
    return hashlib.sha256(blocks.contiguous().numpy()).hexdigest()[:16]


def _atomic_save(obj, path: Path) -> None:
    """``torch.save`` through a temporary file and ``os.replace``: ``path`` always
    holds a whole checkpoint, the old one or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _load_checkpoint(path: Path, config: dict) -> dict:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ShearGraphError(f"{path} is not a readable recovery checkpoint ({e}); delete it or use another "
                              "checkpoint_dir") from e
    parts = {"config", "progress", "lora", "optimizer"}
    if not isinstance(saved, dict) or not parts <= set(saved):
        raise ShearGraphError(f"{path} is not a recovery checkpoint (it lacks {sorted(parts - set(saved or {}))}); "
                              "delete it or use another checkpoint_dir")
    old = saved["config"]
    wrong = [k for k in _STRUCTURAL if old.get(k) != config[k]]
    if wrong:
        raise ShearGraphError(f"the checkpoint in {path} was made for another run ({', '.join(wrong)} differ): use "
                              "another checkpoint_dir, or the same model, domains and LoRA settings")
    if saved["progress"]["step"] > config["steps"]:
        raise ShearGraphError(f"the checkpoint in {path} is at step {saved['progress']['step']}, past "
                              f"steps={config['steps']}: ask for at least that many steps")
    changed = [k for k in config if k not in _STRUCTURAL and k != "steps" and old.get(k) != config[k]]
    if changed:
        warnings.warn(f"resuming from {path} with other {', '.join(changed)} than the checkpoint was made with: "
                      "the result will differ from an uninterrupted run", stacklevel=3)
    return saved
