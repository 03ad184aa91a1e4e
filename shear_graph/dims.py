"""Index spaces of tensor dimensions and the couplings between them.

Every dimension of every tensor in the traced program is a *dim key*
``(node name, output slot, dim)``. Couplings come in two strengths:

* ``tie(a, b)``: the two dims are the same index space (index ``i`` of one is
  index ``i`` of the other). Resolved first by a union-find over dim keys, which
  keeps the index-level problem small (the residual stream of a whole model is
  one index space).
* ``tie_indices(a, ia, b, ib)``: index ``ia[k]`` of ``a`` is coupled to index
  ``ib[k]`` of ``b`` (slices, concatenation, reshapes that split a dim into
  blocks, GQA head sharing).

``components()`` then labels every index of every dim with its connected
component: a component is the set of indices that must be removed together.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

DimKey = tuple  # (node_name: str, slot: int, dim: int)


class _UnionFind:
    def __init__(self):
        self.parent: dict = {}

    def find(self, x):
        parent = self.parent
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


@dataclass
class DimSpace:
    """Collects dims, their sizes and couplings; solves for index components."""

    sizes: dict = field(default_factory=dict)
    _uf: _UnionFind = field(default_factory=_UnionFind)
    _edges: list = field(default_factory=list)
    _frozen: list = field(default_factory=list)

    def add(self, key: DimKey, size: int) -> None:
        self.sizes[key] = int(size)

    def tie(self, a: DimKey, b: DimKey) -> None:
        """Couple two dims index by index. Broadcast (size 1 against N) is no coupling."""
        sa, sb = self.sizes[a], self.sizes[b]
        if sa != sb:
            if 1 in (sa, sb):
                return
            raise ValueError(f"tie of dims with sizes {sa} and {sb}: {a} {b}")
        self._uf.union(a, b)

    def tie_indices(self, a: DimKey, ia, b: DimKey, ib) -> None:
        self._edges.append((a, np.asarray(ia, dtype=np.int64), b, np.asarray(ib, dtype=np.int64)))

    def freeze(self, key: DimKey, reason=None) -> None:
        """Mark every index of a dim as not removable (graph inputs and outputs,
        buffers, index-dependent constants, inner dims of reshapes, gathers).
        ``reason`` (any object) is kept for the components it freezes first."""
        self._frozen.append((key, reason))

    def solve(self) -> "DimComponents":
        roots: dict = {}
        base: dict = {}
        offset = 0
        for key, size in self.sizes.items():
            r = self._uf.find(key)
            if r not in roots:
                roots[r] = offset
                offset += size
            base[key] = roots[r]
        # only the index couplings are edges: an index without one is its own component
        # all the same, and leaving out the identity diagonal (one entry per index of
        # the model's dims, tens of millions at 405B) halves the peak memory of the solve
        index = np.int32 if offset < 2 ** 31 else np.int64
        n_edges = sum(len(ia) for _, ia, _, _ in self._edges)
        r, c = np.empty(n_edges, dtype=index), np.empty(n_edges, dtype=index)
        at = 0
        for a, ia, b, ib in self._edges:
            r[at: at + len(ia)] = base[a] + ia
            c[at: at + len(ia)] = base[b] + ib
            at += len(ia)
        adj = csr_matrix((np.ones(n_edges, dtype=bool), (r, c)), shape=(offset, offset))  # duplicates OR: no overflow
        del r, c
        _, labels = connected_components(adj, directed=False)
        n = labels.max() + 1 if offset else 0
        frozen = np.zeros(n, dtype=bool)
        why = np.full(n, -1, dtype=np.int64)
        reasons = []
        for key, reason in self._frozen:
            comps = labels[base[key]: base[key] + self.sizes[key]]
            fresh = comps[why[comps] < 0]
            if len(fresh):
                why[fresh] = len(reasons)
                reasons.append((key, reason))
            frozen[comps] = True
        return DimComponents(base=base, sizes=self.sizes, labels=labels, frozen=frozen, why=why, reasons=reasons)


@dataclass
class DimComponents:
    """The solution: ``labels(key)`` gives each index of a dim its component id."""

    base: dict
    sizes: dict
    labels: np.ndarray
    frozen: np.ndarray
    why: np.ndarray = None  # component -> index into reasons of the freeze that reached it first, -1 if none
    reasons: list = field(default_factory=list)  # (dim key, reason) of each recorded freeze

    def freeze(self, comps, key: DimKey, reason=None) -> None:
        """Freeze components after solving (constants the rebuild cannot re-derive)."""
        comps = np.asarray(comps)
        fresh = comps[self.why[comps] < 0]
        if len(fresh):
            self.why[fresh] = len(self.reasons)
            self.reasons.append((key, reason))
        self.frozen[comps] = True

    def reason(self, comp: int):
        """``(dim key, reason)`` of the freeze that reached component ``comp``, or None."""
        i = int(self.why[comp])
        return self.reasons[i] if i >= 0 else None

    def of(self, key: DimKey) -> np.ndarray:
        """Component id of each index of ``key``: int64 array of shape [size]."""
        start = self.base[key]
        return self.labels[start: start + self.sizes[key]]
