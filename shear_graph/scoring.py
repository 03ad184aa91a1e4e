"""Log-likelihood of continuations and perplexity over fixed windows, batched.

Continuations are scored as lm-evaluation-harness's ``HFLM`` scores them:
context and context+continuation are encoded without special tokens and the
continuation's tokens are the difference (:func:`encode_pair`); the input is
left-truncated to the model's maximum length; the score is the sum of the
log-probabilities of the continuation tokens. Inputs are sorted by length
(longest first) and right-padded into batches of similar lengths, so the
padding never reaches a scored position of a causal model.

Perplexity follows LLM-Pruner and SparseGPT: the text is tokenized whole,
cut into non-overlapping windows of ``seq_len`` tokens (the remainder after
the last full window is dropped), each window is one independent sequence,
and perplexity is ``exp`` of the mean negative log-likelihood over every
predicted token (``seq_len - 1`` per window).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import EvalDataError

DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when a config states no context length
MAX_PADDING = 0.25  # largest fraction of a batch row that may be padding


def encode_pair(tokenizer, context: str, continuation: str) -> tuple:
    """Token ids of ``context`` and of ``continuation`` after it, split as lm-eval splits them.

    Trailing whitespace of the context moves to the front of the
    continuation; ``context + continuation`` and ``context`` are encoded
    without special tokens, and the continuation's tokens are what the whole
    has beyond the context's. An empty context becomes the BOS token (EOS
    where there is none), as lm-eval's prefix token.

    Returns
    -------
    (list of int, list of int)

    Raises
    ------
    EvalDataError
        The context is empty and the tokenizer has no BOS or EOS token.
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    if not context:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if prefix is None:
            raise EvalDataError("an empty context needs a BOS or EOS token, and the tokenizer has neither")
        return [prefix], tokenizer.encode(continuation, add_special_tokens=False)
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    context_ids = tokenizer.encode(context, add_special_tokens=False)
    return context_ids, whole[len(context_ids):]


def max_length(model) -> int:
    """The longest input the model takes (its config's context length)."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_MAX_LENGTH


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _logits(model, ids, mask, keep: int):
    """Logits of the last ``keep`` positions; models that take
    ``logits_to_keep`` skip the output projection of the others."""
    kwargs = {"input_ids": ids, "attention_mask": mask}
    params = inspect.signature(model.forward).parameters
    if "use_cache" in params:
        kwargs["use_cache"] = False
    if "logits_to_keep" in params:
        return model(**kwargs, logits_to_keep=keep).logits
    return model(**kwargs).logits[:, -keep:]


def loglikelihoods(model, encoded: list, batch_size: int = 16, progress=None) -> list:
    """Summed log-probability of each continuation given its context.

    Requests whose model inputs are identical share one row, as in lm-eval's
    logits cache: BoolQ's one-token answers " no" and " yes" are read off one
    forward pass.

    Parameters
    ----------
    model : transformers causal LM
        In eval mode, on the device and in the dtype to score with;
        log-softmax runs in float32 whatever the model's dtype.
    encoded : list of (list of int, list of int)
        ``(context ids, continuation ids)`` per request (see :func:`encode_pair`).
    batch_size : int
        Most input rows per forward pass (rows much shorter than a batch's
        first go to the next); 1 scores one at a time.
    progress : tqdm, optional
        Advanced by the number of requests of each batch.

    Returns
    -------
    list of float
        In the order of ``encoded``.

    Raises
    ------
    EvalDataError
        A continuation alone is longer than the model's maximum length.
    """
    limit = max_length(model)
    rows: dict = {}  # model input -> indices of the requests scored on it
    for i, (context, continuation) in enumerate(encoded):
        if len(continuation) > limit:
            raise EvalDataError(f"a continuation of {len(continuation)} tokens exceeds the model's {limit}")
        # lm-eval: keep the last limit+1 tokens, feed all but the last
        rows.setdefault(tuple((context + continuation)[-(limit + 1):][:-1]), []).append(i)
    device = _device(model)
    scores = [0.0] * len(encoded)
    with torch.inference_mode():
        for batch in _batches(sorted(rows, key=len, reverse=True), batch_size):
            width = len(batch[0])
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for r, row in enumerate(batch):
                ids[r, :len(row)] = torch.tensor(row)
                mask[r, :len(row)] = 1
            # logits at positions len(row) - len(cont) .. len(row) - 1 predict a continuation
            lo = min(len(row) - len(encoded[i][1]) for row in batch for i in rows[row])
            logits = _logits(model, ids.to(device), mask.to(device), keep=max(width - lo, 1))
            logp = torch.log_softmax(logits.float(), dim=-1)
            for r, row in enumerate(batch):
                for i in rows[row]:
                    continuation = encoded[i][1]
                    at = len(row) - len(continuation) - lo
                    target = torch.tensor(continuation, dtype=torch.long, device=logp.device)
                    scores[i] = logp[r, at:at + len(continuation)].gather(-1, target[:, None]).sum().item()
                if progress is not None:
                    progress.update(len(rows[row]))
    return scores


def _batches(rows: list, batch_size: int) -> list:
    """Cut rows sorted longest first into batches of at most ``batch_size``
    rows, none padded by more than ``MAX_PADDING`` of the batch's width: a
    forward pass costs its padded tokens, and one long passage must not make
    fifteen short ones pay its length."""
    batches: list = []
    for row in rows:
        if batches and len(batches[-1]) < batch_size and len(row) >= (1 - MAX_PADDING) * len(batches[-1][0]):
            batches[-1].append(row)
        else:
            batches.append([row])
    return batches


@dataclass
class PerplexityStats:
    """Negative log-likelihood summed over the windows of one text.

    Attributes
    ----------
    nll : float
        Sum over every predicted token (natural log).
    n_tokens : int
        Tokens predicted: ``n_windows * (seq_len - 1)``.
    n_windows : int
    seq_len : int
    dropped : int
        Tokens after the last full window, not scored.
    """

    nll: float
    n_tokens: int
    n_windows: int
    seq_len: int
    dropped: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.n_tokens)


def window_ids(tokenizer, text: str, seq_len: int) -> tuple:
    """``(windows [n, seq_len], tokens dropped)``: the text tokenized as
    ``tokenizer(text)`` (special tokens as the tokenizer adds them) and cut
    into non-overlapping windows.

    Raises
    ------
    EvalDataError
        ``seq_len`` < 2, or the text is shorter than one window.
    """
    if seq_len < 2:
        raise EvalDataError(f"seq_len must be at least 2 (one token predicted from another), got {seq_len}")
    ids = torch.tensor(tokenizer(text, verbose=False)["input_ids"], dtype=torch.long)
    n = ids.numel() // seq_len
    if n == 0:
        raise EvalDataError(f"the text has {ids.numel()} tokens, fewer than one window of {seq_len}")
    return ids[:n * seq_len].view(n, seq_len), ids.numel() - n * seq_len


def perplexity(model, windows: torch.Tensor, batch_size: int = 16, progress=None,
               dropped: int = 0) -> PerplexityStats:
    """Sum the negative log-likelihood of every window (see the module notes).

    Parameters
    ----------
    model : transformers causal LM
    windows : LongTensor [n_windows, seq_len]
        From :func:`window_ids`.
    batch_size : int
        Windows per forward pass.
    progress : tqdm, optional
        Advanced by the number of windows of each batch.
    dropped : int
        Recorded in the result: tokens left out after the last window.

    Returns
    -------
    PerplexityStats
    """
    device = _device(model)
    n_windows, seq_len = windows.shape
    nll = 0.0
    with torch.inference_mode():
        for start in range(0, n_windows, batch_size):
            batch = windows[start:start + batch_size].to(device)
            logits = _logits(model, batch, torch.ones_like(batch), keep=seq_len)
            for r in range(batch.shape[0]):  # row by row: one float32 copy of [seq_len, vocab] at a time
                nll += F.cross_entropy(logits[r, :-1].float(), batch[r, 1:], reduction="sum").item()
            if progress is not None:
                progress.update(batch.shape[0])
    return PerplexityStats(nll, n_windows * (seq_len - 1), n_windows, seq_len, dropped)
