"""Knowledge distribution analysis (LoRAShear, Chen et al. 2023, Sec. 3.2).

For each group cluster (the groups of one kind in one layer) the lowest-saliency
``fraction`` of its channels is masked and the loss on held-out blocks is
measured; the increase over the dense loss says how much knowledge the cluster
carries. The clusters that deteriorate most, ``unprunable_ratio`` of them, are
marked unprunable: plans leave them whole.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import ShearGraphError
from .plan import PrunePlan, atomic_write_text
from .trace import fingerprint


@dataclass
class Cluster:
    """One group cluster's result. ``removed`` maps group id -> channels masked."""

    id: str
    kind: str
    layer: int | None
    n_channels: int
    removed: dict
    loss: float
    loss_delta: float
    unprunable: bool = False


@dataclass
class KnowledgeMap:
    """The knowledge distribution of one model on one evaluation split.

    Attributes
    ----------
    clusters : list of Cluster
    base_loss : float
        Mean token cross-entropy (nats) of the dense model on the evaluation blocks.
    fraction : float
        Share of each cluster's channels masked (at least one channel).
    unprunable_ratio : float
        Share of clusters marked unprunable (the largest loss deltas).
    split : dict
        The data split (:class:`shear_graph.data.DataSplit`), so results say
        which tokens they were measured on.
    """

    model_class: str
    fingerprint: str
    saliency: str
    fraction: float
    unprunable_ratio: float
    base_loss: float
    clusters: list
    split: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    @property
    def unprunable_groups(self) -> list:
        """Group ids a plan must leave whole: the plan constraint."""
        return sorted(g for c in self.clusters if c.unprunable for g in c.removed)

    @property
    def non_uniformity(self) -> float:
        """max / min of the positive cluster loss deltas (a cluster whose
        masking lowers the loss carries no measurable knowledge and is left
        out; :attr:`n_harmless` counts those). NaN if fewer than one positive."""
        deltas = [c.loss_delta for c in self.clusters if c.loss_delta > 0]
        return max(deltas) / min(deltas) if deltas else float("nan")

    @property
    def n_harmless(self) -> int:
        """Clusters whose masking did not raise the held-out loss."""
        return sum(c.loss_delta <= 0 for c in self.clusters)

    def prune_shares(self) -> dict:
        """Shares of the cut for :func:`~shear_graph.plan.plan_by_saliency`, one
        per group: groups of prunable clusters whose masking cost less lose more
        channels.

        For a prunable cluster (one kind in one layer) with loss delta ``d``
        (negative counts as 0) and ``m`` the median delta of the prunable
        clusters of its kind, each of its groups gets ``2 m / (d + m)``, clipped
        to [0.25, 2]: a cluster at the median gets 1, one whose masking cost
        nothing 2, one at three times the median 0.5. The plan scales all shares
        by one fraction found to reach the ratio, so 1 is the share of a typical
        cluster rather than exactly the uniform plan's. The clip keeps a noisy
        delta from a few probe blocks from stripping or freezing a layer. This
        is shear-graph's extension of the analysis (LoRAShear, Sec. 3.2, only
        marks unprunable clusters), in the spirit of non-uniform layer-wise
        ratios (OWL, Yin et al. 2023). A kind whose median delta is 0 gets 1.

        Returns
        -------
        dict
            Group id -> share (float); unprunable clusters' groups are absent.
        """
        by_kind = {}
        for c in self.clusters:
            if not c.unprunable:
                by_kind.setdefault(c.kind, []).append(c)
        shares = {}
        for members in by_kind.values():
            deltas = [max(c.loss_delta, 0.0) for c in members]
            m = float(np.median(deltas))
            for c, d in zip(members, deltas):
                share = min(max(2 * m / (d + m), 0.25), 2.0) if m > 0 else 1.0
                shares.update({g: share for g in c.removed})
        return shares

    def cluster_plan(self, model: nn.Module, groups: list, cluster_id: str) -> PrunePlan:
        """The plan that removes exactly what the analysis masked in one cluster."""
        c = next((c for c in self.clusters if c.id == cluster_id), None)
        if c is None:
            raise ShearGraphError(f"no cluster '{cluster_id}'")
        return PrunePlan.from_channels(model, groups, c.removed, method=f"knowledge:{cluster_id}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "KnowledgeMap":
        try:
            d = json.loads(text)
            d["clusters"] = [Cluster(**c) for c in d["clusters"]]
            return cls(**d)
        except (ValueError, TypeError, KeyError) as e:
            raise ShearGraphError(f"not a shear-graph knowledge map: {e}") from e

    def save(self, path) -> None:
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path) -> "KnowledgeMap":
        if not Path(path).is_file():
            raise ShearGraphError(f"no knowledge map at {path}")
        return cls.from_json(Path(path).read_text())


def clusters_of(groups: list) -> dict:
    """Cluster id (``"ffn.L3"``, ``"attention_head.L3"``, ``"hidden"``) -> groups."""
    out: dict = {}
    for g in groups:
        out.setdefault(g.kind if g.layer is None else f"{g.kind}.L{g.layer}", []).append(g)
    return out


def held_out_loss(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats per predicted token) over ``blocks``
    (int64 [n, block_len]), in fp32 accumulation."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in torch.split(blocks, batch_size):
            ids = ids.to(device)
            logits = model(input_ids=ids).logits.float()
            nll = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                              reduction="sum")
            total += nll.item()
            count += ids[:, 1:].numel()
    return total / count


def check_analysis_settings(fraction: float, unprunable_ratio: float) -> None:
    """Raise :class:`ShearGraphError` unless ``fraction`` is in (0, 1) and
    ``unprunable_ratio`` in [0, 1] (checked before any work is done)."""
    if not 0 < fraction < 1:
        raise ShearGraphError(f"fraction must be in (0, 1), got {fraction}")
    if not 0 <= unprunable_ratio <= 1:
        raise ShearGraphError(f"unprunable_ratio must be in [0, 1], got {unprunable_ratio}")


def analyze_knowledge(model: nn.Module, groups: list, saliency, eval_blocks: torch.Tensor, fraction: float = 0.25,
                      unprunable_ratio: float = 0.2, batch_size: int = 8, split: dict | None = None,
                      progress: bool = True) -> KnowledgeMap:
    """Measure how much each group cluster matters.

    Masking happens in place on ``model`` itself, slice by slice, and each
    cluster's masked values are copied back bit for bit after its evaluation
    (and on any error), so the analysis needs no copy of the weights, only the
    values of one cluster's masked channels; ``model`` is unchanged on return.

    Parameters
    ----------
    model : nn.Module
        On the device and dtype to evaluate in.
    groups : list of RemovalGroup
    saliency : Saliency
        Channels with the lowest scores are masked first.
    eval_blocks : torch.Tensor
        Held-out tokens, int64 [n, block_len] (never the calibration blocks).
    fraction : float
        Share of each cluster's channels to mask, in (0, 1); at least one channel,
        never all of a group.
    unprunable_ratio : float
        Share of clusters (largest loss increase first) marked unprunable, in [0, 1].
    progress : bool
        Show a tqdm bar over the clusters.

    Returns
    -------
    KnowledgeMap

    Raises
    ------
    ShearGraphError
        Bad fraction or ratio, no evaluation blocks, or saliency of another model.
    """
    check_analysis_settings(fraction, unprunable_ratio)
    if eval_blocks is None or len(eval_blocks) == 0:
        raise ShearGraphError("knowledge analysis needs held-out evaluation blocks")
    if saliency.fingerprint != fingerprint(model):
        raise ShearGraphError("the saliency was computed on another model; compute it on this one")
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        base, clusters = _masked_losses(model, groups, saliency, eval_blocks, fraction, batch_size, progress)
    finally:
        model.train(was_training)
    n_fixed = int(round(unprunable_ratio * len(clusters)))
    for c in sorted(clusters, key=lambda c: -c.loss_delta)[:n_fixed]:
        c.unprunable = True
    return KnowledgeMap(type(model).__name__, fingerprint(model), saliency.method, fraction, unprunable_ratio, base,
                        clusters, split or {}, {"analysis": round(time.perf_counter() - t0, 2)})


def _masked_losses(model, groups, saliency, eval_blocks, fraction, batch_size, progress) -> tuple:
    """The unmasked held-out loss and one :class:`Cluster` per cluster, each measured
    with its lowest-saliency channels zeroed in ``model`` and restored afterwards."""
    params = dict(model.named_parameters(remove_duplicate=False))
    base = held_out_loss(model, eval_blocks, batch_size)
    clusters = []
    for cid, members in tqdm(clusters_of(groups).items(), desc="knowledge analysis", unit="cluster",
                              disable=not progress):
        removed = {}
        for g in members:
            k = min(max(1, math.ceil(fraction * g.n_channels)), g.n_channels - 1)
            if k >= 1:
                removed[g.id] = sorted(torch.argsort(torch.as_tensor(saliency.scores[g.id]))[:k].tolist())
        saved = []
        try:
            with torch.no_grad():
                for g in members:
                    if g.id not in removed:
                        continue
                    for s in g.slices:
                        p = params[s.param]
                        idx = torch.as_tensor(s.indices[removed[g.id]].ravel(), device=p.device)
                        saved.append((p, s.dim, idx, p.index_select(s.dim, idx).clone()))
                        p.index_fill_(s.dim, idx, 0)
            loss = held_out_loss(model, eval_blocks, batch_size)
        finally:
            with torch.no_grad():
                for p, dim, idx, values in reversed(saved):  # reversed: a tied tensor gets its first saved values
                    p.index_copy_(dim, idx, values)
        g0 = members[0]
        clusters.append(Cluster(cid, g0.kind, g0.layer, sum(g.n_channels for g in members), removed, loss, loss - base))
    return base, clusters
