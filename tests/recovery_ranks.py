"""One rank of a two-process recovery run, and the data the recovery tests share.

Not a test module: ``test_recovery`` runs
``torchrun --standalone --nproc-per-node 2 tests/recovery_ranks.py OUT_DIR``,
and each rank saves its merged weights and result to ``OUT_DIR/rank{r}.pt``.
"""
import sys
from pathlib import Path

import torch

import shear_graph as sg
from conftest import VOCAB, build

L = 16
RUN = {"steps": 6, "update_every": 2, "lr": 1e-2, "device": "cpu", "progress": False}


def arithmetic(n: int, stride: int, seed: int) -> torch.Tensor:
    """Blocks [n, L] of ids start, start + stride, ... (mod VOCAB): learnable by a tiny LoRA."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, VOCAB, (n, 1), generator=g) + stride * torch.arange(L)) % VOCAB


def recovery_data() -> tuple:
    """(train, probe, reference_loss) over two domains: the reference puts 'count'
    far behind (gap ~5 nats) and 'skip' level with the dense model (gap 0)."""
    train = {"count": arithmetic(32, 1, 0), "skip": arithmetic(32, 3, 1)}
    probe = {"count": arithmetic(4, 1, 2), "skip": arithmetic(4, 3, 3)}
    reference = {"count": 0.0, "skip": sg.held_out_loss(build("llama"), probe["skip"])}
    return train, probe, reference


if __name__ == "__main__":
    result = sg.recover(build("llama"), *recovery_data(), batch_size=2, **RUN)
    rank = torch.distributed.get_rank()
    torch.save({"state": result.model.state_dict(), "result": result.to_dict()}, Path(sys.argv[1]) / f"rank{rank}.pt")
