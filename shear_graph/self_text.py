"""Text sampled from the dense model itself: a training domain for when no
pretraining-like text is at hand.

A model's own samples follow the distribution it was trained on, so they stand
in for its pretraining data in calibration and training (self-calibration,
Williams et al. 2024, arXiv 2410.17170; sequence-level distillation, Kim and
Rush 2016, arXiv 1606.07947).
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from .data import DataError, Domain, check_tokenizer
from .distill import frozen_teacher
from .errors import ShearGraphError


EMPTY_BATCHES = 3  # batches in a row with no text before the model is judged unable to give any


def _check_settings(n_tokens, max_new_tokens, batch_size, temperature, top_p) -> None:
    for arg, value in (("n_tokens", n_tokens), ("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ShearGraphError(f"{arg} must be a whole number of at least 1, got {value!r}")
    for arg, value, top in (("temperature", temperature, math.inf), ("top_p", top_p, 1.0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= top \
                or not math.isfinite(value):
            raise ShearGraphError(f"{arg} must be a finite number above 0{' and at most 1' if top == 1 else ''}, "
                                  f"got {value!r}")


def domain_from_model(model: nn.Module, tokenizer, n_tokens: int = 40_000, name: str = "dense_samples",
                      max_new_tokens: int = 512, batch_size: int = 64, temperature: float = 1.0,
                      top_p: float = 0.95, seed: int = 0, device=None, dtype=None, start: str | None = None,
                      progress: bool = True) -> Domain:
    """A :class:`~shear_graph.data.Domain` of documents sampled from ``model``,
    each started from ``start``.

    Parameters
    ----------
    model : transformers causal LM
        Not changed: sampling runs in eval mode without gradients and the training
        flag is put back; it runs on ``device`` in ``dtype`` (a copy is made only
        when they differ from the model's own).
    tokenizer : transformers tokenizer
        The model's own. One with more ids than the model's embedding rows is
        refused; one with fewer cannot be told apart from a padded embedding.
    n_tokens : int
        New tokens to draw, at least (documents end at EOS or padding, or after
        ``max_new_tokens``; the last batch is cut to the rows still needed).
    max_new_tokens, batch_size : int
        Tokens per document at most; documents drawn at once (about 120 tokens/s
        for SmolLM2-135M at batch 64-128 on 2 CPU cores, so 40 000 take 6 min).
    temperature, top_p : float
        Sampling settings of ``model.generate`` (nucleus sampling; Holtzman et
        al. 2020, arXiv 1904.09751).
    seed : int
        The same seed, settings, model, device and dtype give the same text; the
        caller's random state (CPU and every CUDA device) is left as it was.
    device, dtype
        Default: where the model's parameters are, in their dtype (bf16 on GPU
        works unchanged).
    start : str, optional
        Text whose tokens begin every document: the token that separated
        documents in pretraining is the one to give (``"<|endoftext|>"`` for
        SmolLM2, whose Instruct tokenizer's BOS is the chat marker
        ``<|im_start|>``). Default: the tokenizer's BOS token, EOS when it has none.
    progress : bool
        A tqdm bar over the tokens drawn.

    Returns
    -------
    Domain
        ``texts``: one string per document (special tokens removed); ``source``
        records the model, every sampling setting and the tokens drawn.

    Raises
    ------
    ShearGraphError
        A setting out of range, or a model that is not a transformers language
        model (no ``generate``).
    DataError
        No tokenizer, a tokenizer of another model (more ids than the embedding
        has rows), no ``start`` and a tokenizer with neither BOS nor EOS, a
        ``start`` that encodes to no tokens, or a model that samples only empty
        documents.
    """
    from tqdm.auto import tqdm

    _check_settings(n_tokens, max_new_tokens, batch_size, temperature, top_p)
    if not callable(getattr(model, "generate", None)) or not callable(getattr(model, "get_input_embeddings", None)):
        raise ShearGraphError(f"domain_from_model samples text with a transformers causal language model; got "
                              f"{type(model).__name__}, which has no generate()")
    if not callable(tokenizer):
        raise DataError(f"domain_from_model needs the model's tokenizer, got {type(tokenizer).__name__}")
    check_tokenizer(model, tokenizer)
    prefix = _start_ids(tokenizer, start)
    param = next(model.parameters())
    device = torch.empty(0, device=device if device is not None else param.device).device
    dtype = dtype or param.dtype
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stops = {i for i in [tokenizer.eos_token_id, pad, *(configured if isinstance(configured, list) else [configured])]
             if i is not None}
    texts, drawn, empty = [], 0, 0
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    bar = tqdm(total=n_tokens, desc=f"sampling {name}", unit="tok", disable=not progress)
    try:
        with frozen_teacher(model, device, dtype) as sampler, torch.random.fork_rng(devices=cuda), torch.no_grad():
            torch.manual_seed(seed)
            while drawn < n_tokens:
                rows = min(batch_size, math.ceil((n_tokens - drawn) / max_new_tokens))
                ids = torch.tensor([prefix] * rows, dtype=torch.long, device=device)
                out = sampler.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                       temperature=temperature, top_p=top_p, top_k=0,
                                       max_new_tokens=max_new_tokens, pad_token_id=pad)
                got = 0
                new = out[:, len(prefix):]
                for row, n in zip(new, _lengths(new, stops).tolist()):
                    text = tokenizer.decode(row[:n], skip_special_tokens=True) if n else ""
                    if text:
                        texts.append(text)
                        got += n
                empty = 0 if got else empty + 1
                if empty == EMPTY_BATCHES:
                    raise DataError(f"{type(model).__name__} sampled only empty documents (EOS first) in "
                                    f"{EMPTY_BATCHES} batches in a row; it cannot give a text domain")
                drawn += got
                bar.update(got)
    finally:
        bar.close()
    label = getattr(model.config, "_name_or_path", "") or type(model).__name__
    begun = "" if start is None else f"start {start!r}, "
    return Domain(name, texts, f"samples:{label} ({begun}seed {seed}, temperature {temperature}, top_p {top_p}, "
                               f"max_new_tokens {max_new_tokens}, batch_size {batch_size}; {drawn} tokens, "
                               f"{device.type} {str(dtype).removeprefix('torch.')})")


def _start_ids(tokenizer, start: str | None) -> list:
    """Token ids every document begins with."""
    if start is None:
        first = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if first is None:
            raise DataError("the tokenizer has neither a BOS nor an EOS token to start documents from; give start=")
        return [first]
    ids = tokenizer(start, add_special_tokens=False).input_ids
    if not ids:
        raise DataError(f"start={start!r} encodes to no tokens; give the text documents should begin with")
    return list(ids)


def _lengths(new: torch.Tensor, stops: set) -> torch.Tensor:
    """Tokens before the first stop id (EOS or padding) in each row of ``new``
    [batch, steps] (the whole row without one)."""
    hit = torch.isin(new, torch.tensor(sorted(stops), dtype=new.dtype, device=new.device))
    first = hit.int().argmax(dim=1)
    return torch.where(hit.any(dim=1), first, torch.full_like(first, new.shape[1]))
