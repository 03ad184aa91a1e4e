"""A seeded generator of small random programs over the op families of the
rule table, and the soundness run over them (issue 20).

Each program is ``input_ids -> embedding -> blocks -> lm head``; a block is
drawn from :data:`BLOCKS` (linear / gated MLPs, fused gate-up chunk, norms as
modules and functionals, sdpa and eager attention with MHA / GQA / MQA /
single head, strided and literal slices, literal and derived splits, cat,
select, unbind, gather, cumsum, softmax and mean over channels, view with and
without size-1 dims, permute, matmul / bmm with a parameter, broadcasting,
a second embedding) and some programs are tiny transformers Llama models
(sdpa or eager). For every program, :func:`run_program` checks each offered
group with :func:`soundness_check.check_group`.
"""
from __future__ import annotations

import time
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import shear_graph as sg
from soundness_check import check_group

V = 24


def _lin(rng, a, b):
    return nn.Linear(a, b, bias=bool(rng.integers(2)))


class Mlp(nn.Module):
    def __init__(self, rng, h):
        super().__init__()
        f = int(rng.integers(3, 12))
        self.kind = rng.choice(["relu", "gated", "fused"])
        self.up = _lin(rng, h, 2 * f if self.kind == "fused" else f)
        self.gate = _lin(rng, h, f) if self.kind == "gated" else None
        self.down = _lin(rng, f, h)

    def forward(self, h):
        if self.kind == "fused":
            g, u = self.up(h).chunk(2, dim=-1)
            return h + self.down(F.silu(g) * u)
        u = self.up(h)
        return h + self.down(F.silu(self.gate(h)) * u if self.gate is not None else torch.relu(u))


class Norm(nn.Module):
    def __init__(self, rng, h):
        super().__init__()
        self.kind = rng.choice(["layernorm", "rmsnorm", "f_layer_norm", "f_rms_norm", "manual_rms", "groupnorm"])
        self.mod = {"layernorm": lambda: nn.LayerNorm(h), "rmsnorm": lambda: nn.RMSNorm(h),
                    "groupnorm": lambda: nn.GroupNorm(2 if h % 2 == 0 else 1, h)}.get(self.kind, lambda: None)()
        self.weight = nn.Parameter(torch.rand(h) + 0.5) if self.mod is None else None
        self.h = h

    def forward(self, h):
        if self.kind == "groupnorm":
            return self.mod(h.transpose(1, 2)).transpose(1, 2)
        if self.mod is not None:
            return self.mod(h)
        if self.kind == "f_layer_norm":
            return F.layer_norm(h, (self.h,), self.weight)
        if self.kind == "f_rms_norm":
            return F.rms_norm(h, (self.h,), self.weight, eps=1e-6)
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Attention(nn.Module):
    def __init__(self, rng, h):
        super().__init__()
        self.heads = int(rng.choice([1, 2, 4]))
        self.kv = int(rng.choice([d for d in (1, 2, 4) if self.heads % d == 0]))
        self.d = int(rng.integers(2, 5))
        self.eager = bool(rng.integers(2))
        self.literal = bool(rng.integers(2))
        self.q = _lin(rng, h, self.heads * self.d)
        self.k = _lin(rng, h, self.kv * self.d)
        self.v = _lin(rng, h, self.kv * self.d)
        self.o = _lin(rng, self.heads * self.d, h)

    def forward(self, h):
        b, s, _ = h.shape
        split = lambda x, n: x.view(b, s, n if self.literal else -1, self.d).transpose(1, 2)
        q, k, v = split(self.q(h), self.heads), split(self.k(h), self.kv), split(self.v(h), self.kv)
        g = self.heads // self.kv
        if g > 1:
            k = k[:, :, None].expand(b, self.kv, g, s, self.d).reshape(b, self.heads, s, self.d)
            v = v[:, :, None].expand(b, self.kv, g, s, self.d).reshape(b, self.heads, s, self.d)
        if self.eager:
            p = torch.softmax(q @ k.transpose(-1, -2) / self.d ** 0.5, dim=-1)
            a = p @ v
        else:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return h + self.o(a.transpose(1, 2).reshape(b, s, -1))


class Slices(nn.Module):
    def __init__(self, rng, h):
        super().__init__()
        self.kind = rng.choice(["step", "literal", "split_literal", "chunk", "cat_split", "select", "unbind"])
        self.h = h
        half = h // 2
        self.a = _lin(rng, h - half if self.kind in ("step",) else half, h)
        self.b = _lin(rng, half, h)
        self.c = _lin(rng, h, 2 * half)

    def forward(self, h):
        half = self.h // 2
        if self.kind == "step":
            return self.a(h[..., ::2]) + self.b(h[..., 1::2])
        if self.kind == "literal":
            return self.a(h[..., :half]) + self.b(h[..., half:2 * half])
        if self.kind == "split_literal":
            x, y = torch.split(self.c(h), [half, half], dim=-1)
            return self.a(x) + self.b(y)
        if self.kind == "chunk":
            x, y = self.c(h).chunk(2, dim=-1)
            return self.a(x * y) + self.b(torch.relu(y))
        if self.kind == "cat_split":
            t = torch.cat([self.c(h)[..., :half], self.c(h)[..., half:]], -1)
            x, y = t.split(half, dim=-1)
            return self.a(x) + self.b(y)
        t = self.c(h).view(*h.shape[:-1], 2, half)
        x, y = (t[..., 0, :], t[..., 1, :]) if self.kind == "select" else t.unbind(-2)
        return self.a(x) + self.b(y)


class Mixing(nn.Module):
    def __init__(self, rng, h):
        super().__init__()
        self.kind = rng.choice(["gather", "cumsum_seq", "cumsum_ch", "softmax_ch", "mean_ch", "sum_ch",
                                "matmul", "bmm", "bias", "view_ones", "view_split", "permute", "embed2", "expand"])
        f = int(rng.integers(3, 9))
        self.w = nn.Parameter(torch.randn(h, f) / h ** 0.5)
        self.out = _lin(rng, f, h)
        self.bias = nn.Parameter(torch.randn(h))
        self.embed = nn.Embedding(V, h)
        self.register_buffer("idx", torch.tensor([2, 0, 1]))
        self.h = h

    def forward(self, h, ids=None):
        k = self.kind
        if k == "gather":
            return h + self.out(torch.relu(h @ self.w).index_select(-1, self.idx).sum(-1, keepdim=True)
                                .expand(*h.shape[:-1], self.out.in_features))
        if k == "cumsum_seq":
            return h + torch.cumsum(h, dim=1)
        if k == "cumsum_ch":
            return h + self.out(torch.cumsum(h @ self.w, dim=-1))
        if k == "softmax_ch":
            return h + self.out(torch.softmax(h @ self.w, dim=-1))
        if k == "mean_ch":
            return h + (h @ self.w).mean(-1, keepdim=True)
        if k == "sum_ch":
            return h * torch.sigmoid(self.out(h @ self.w)).sum(-1, keepdim=True)
        if k == "matmul":
            return h + self.out(torch.relu(torch.matmul(h, self.w)))
        if k == "bmm":
            w = self.w.unsqueeze(0).expand(h.shape[0], *self.w.shape)
            return h + self.out(torch.bmm(h, w))
        if k == "bias":
            return h + self.bias
        if k == "view_ones":
            t = (h @ self.w).reshape(*h.shape[:-1], 1, self.out.in_features)
            return h + self.out(torch.relu(t)).squeeze(-2)
        if k == "view_split":
            f = self.out.in_features
            t = torch.relu(h @ self.w).unsqueeze(-1).expand(*h.shape[:-1], f, 2).reshape(*h.shape[:-1], 2 * f)
            return h + self.out(t[..., ::2])
        if k == "permute":
            return h + self.out((h @ self.w).permute(1, 0, 2)).transpose(0, 1)
        if k == "expand":
            return h + self.bias[None, None, :].expand(h.shape[0], 1, self.h)
        return h + self.embed(ids) if ids is not None else h


BLOCKS = [Mlp, Norm, Attention, Slices, Mixing]


class Program(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        h = int(rng.choice([4, 6, 8, 12]))
        self.embed = nn.Embedding(V, h)
        self.blocks = nn.ModuleList([BLOCKS[int(rng.integers(len(BLOCKS)))](rng, h)
                                     for _ in range(int(rng.integers(1, 4)))])
        self.head = nn.Linear(h, V, bias=bool(rng.integers(2)))

    def forward(self, input_ids):
        h = self.embed(input_ids)
        for b in self.blocks:
            h = b(h, input_ids) if isinstance(b, Mixing) else b(h)
        return self.head(h)


def tiny_llama(seed: int):
    from transformers import AutoModelForCausalLM, LlamaConfig

    rng = np.random.default_rng(seed)
    heads = int(rng.choice([1, 2, 4]))
    kv = int(rng.choice([d for d in (1, 2, 4) if heads % d == 0]))
    d = int(rng.choice([2, 4]))
    cfg = LlamaConfig(hidden_size=int(rng.choice([8, 12])), intermediate_size=int(rng.integers(3, 10)),
                      num_hidden_layers=1, num_attention_heads=heads, num_key_value_heads=kv, head_dim=d,
                      vocab_size=V, initializer_range=0.2,
                      attn_implementation=str(rng.choice(["eager", "sdpa"])))
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).eval()


def make_program(seed: int):
    """``(model, inputs)`` for ``seed``: one program in eight is a tiny Llama."""
    model = tiny_llama(seed) if seed % 8 == 7 else Program(seed).eval()
    ids = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(seed))
    return model, {"input_ids": ids}


def run_program(seed: int, stats: dict) -> None:
    """Check one program; count into ``stats`` (programs, groups checked,
    outcomes, refusals by reason, failures with their seed)."""
    model, inputs = make_program(seed)
    stats["programs"] += 1
    try:
        groups = sg.find_groups(sg.trace(model, example_inputs=inputs))
    except sg.ShearGraphError as e:
        stats["refusals"][f"find_groups: {type(e).__name__}"] += 1
        return
    rng = np.random.default_rng(seed)
    for g in groups:
        if g.n_channels < 2:
            continue
        stats["groups_checked"] += 1
        inplace = bool(rng.integers(2))
        try:
            outcome = check_group(model, groups, g, inputs, rng, inplace=inplace)
        except AssertionError as e:
            stats["failures"].append({"seed": seed, "group": g.id, "kind": g.kind, "inplace": inplace,
                                      "error": str(e)[:300]})
            outcome = "failed"
        if outcome.startswith("refused"):
            stats["refusals"][f"apply_plan ({g.kind}): {outcome.split(': ', 1)[1]}"] += 1
        elif outcome != "failed":
            stats["outcomes"][f"{g.kind}: {outcome}"] += 1
        if inplace and not outcome.startswith("refused"):  # the check consumed the model
            model, inputs = make_program(seed)


def new_stats() -> dict:
    return {"programs": 0, "groups_checked": 0, "outcomes": Counter(), "refusals": Counter(), "failures": []}


def run(seeds, stats: dict | None = None, budget_s: float | None = None) -> dict:
    stats = stats or new_stats()
    t0 = time.perf_counter()
    for seed in seeds:
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            break
        run_program(int(seed), stats)
    return stats
