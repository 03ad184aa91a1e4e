"""Streaming moments of the inputs of linear layers over a calibration set.

FLAP's fluctuation metric and its bias compensation (An et al., AAAI 2024,
arXiv 2312.11983) need, per input feature ``j`` of an output projection, the
mean and the variance of ``X_j`` over every calibration token; Wanda-sp needs
``||X_j||_2^2``. One forward hook per layer keeps a running count, mean and sum
of squared deviations, merged batch by batch with Chan et al.'s parallel
update (1979): each batch is centred on its own mean first, so float32 on the
model's device is enough (no cancellation of ``E[x^2] - E[x]^2``) and nothing
is copied to the host per batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm


@dataclass
class InputMoments:
    """Moments of one layer's input features over the calibration tokens.

    Attributes
    ----------
    count : int
        Tokens seen.
    mean : torch.Tensor
        float32 [in_features], on the model's device: ``E[X_j]``.
    m2 : torch.Tensor
        float32 [in_features]: ``sum_t (X_tj - E[X_j])^2``.
    """

    count: int
    mean: torch.Tensor
    m2: torch.Tensor

    @property
    def var(self) -> torch.Tensor:
        """Sample variance over the tokens (Bessel-corrected, as FLAP's ``fluc_inp``)."""
        return self.m2 / max(self.count - 1, 1)

    @property
    def sq_norm(self) -> torch.Tensor:
        """``||X_j||_2^2 = sum_t X_tj^2`` (a sum of non-negative terms: no cancellation)."""
        return self.m2 + self.count * self.mean.pow(2)

    def add(self, x: torch.Tensor) -> None:
        """Merge a batch ``x`` [..., in_features] (any dtype) into the moments."""
        x = x.detach().reshape(-1, x.shape[-1]).float()
        n_b = x.shape[0]
        mean_b = x.mean(0)
        m2_b = (x - mean_b).pow(2).sum(0)
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta.pow(2) * (self.count * n_b / n)
        self.count = n


def input_dim(module: nn.Module):
    """The weight dim holding a layer's input features: 1 for ``nn.Linear``
    ([out, in]), 0 for transformers' ``Conv1D`` ([in, out]); None otherwise."""
    if isinstance(module, nn.Linear):
        return 1
    if type(module).__name__ == "Conv1D":
        return 0
    return None


def collect_input_moments(model: nn.Module, modules: dict, batches, progress: bool = True,
                          desc: str = "input moments") -> dict:
    """Run ``model`` over ``batches`` and return the moments of each module's input.

    Parameters
    ----------
    model : nn.Module
        Run as it is (call ``eval()`` first for deterministic statistics); not changed.
    modules : dict
        Name -> ``nn.Linear`` or ``Conv1D`` submodule of ``model``.
    batches : iterable of torch.Tensor
        int64 token ids [batch, block_len], on the model's device.
    progress : bool
        Show a tqdm bar over the batches.

    Returns
    -------
    dict
        Name -> :class:`InputMoments` (on the model's device), for the modules
        the forward reached.
    """
    moments: dict = {}

    def hook_for(name):
        def hook(_mod, args, _out):
            x = args[0]
            if name not in moments:
                zeros = torch.zeros(x.shape[-1], dtype=torch.float32, device=x.device)
                moments[name] = InputMoments(0, zeros, zeros.clone())
            moments[name].add(x)
        return hook

    hooks = [m.register_forward_hook(hook_for(name)) for name, m in modules.items()]
    try:
        with torch.no_grad():
            for ids in tqdm(batches, desc=desc, unit="batch", leave=False, disable=not progress):
                model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return moments
