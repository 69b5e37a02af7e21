"""Training on more than one device: torch DistributedDataParallel, the same fastai Learner in every process.

`fit_ddp` starts `world_size` processes (gloo on CPUs, NCCL on GPUs, one GPU per process), each holding the same
seeded initial weights and its own shard of the training items (every `world_size`-th item from its rank, shuffled
by seed and epoch). The global batch stays `batch_size` (each process takes its share), and DDP averages the
gradients, so a step sees the same amount of data as single-process training. Every process validates on the
whole validation split; rank 0 hands back the trained weights and the per-epoch history. Stage 04 uses it with
`trainer: ddp` and `world_size: N`; the world size is recorded in the run's lineage.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from . import cpus
from .errors import StagebookError


def _worker(rank: int, world_size: int, rendezvous: str, backend: str, spec: dict, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from .training import KeepBest, epoch_history, make_learner

    dist.init_process_group(backend, init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(max(1, cpus.threads() // world_size))
        cuda = backend == "nccl"
        device = torch.device(f"cuda:{rank}") if cuda else torch.device("cpu")
        torch.manual_seed(spec["seed"])  # the same initial weights in every process (DDP also broadcasts rank 0's)
        model = spec["build"]().to(device)
        ddp = DistributedDataParallel(model, device_ids=[rank] if cuda else None)
        x, y = spec["x_train"][rank::world_size], spec["y_train"][rank::world_size]
        learn = make_learner(ddp, x, y, spec["x_valid"], spec["y_valid"], max(1, spec["batch_size"] // world_size),
                             spec["seed"] + rank, spec["weight_decay"], spec["augment"], device=device)
        learn.logger = lambda *args, **kwargs: None  # the history comes back from rank 0; no table per process
        cbs = []
        if spec["patience"]:  # the valid split is whole in every process, so every process stops at the same epoch
            from fastai.callback.tracker import EarlyStoppingCallback
            cbs = [EarlyStoppingCallback(monitor="valid_loss", patience=spec["patience"]), KeepBest()]
        learn.fit_one_cycle(spec["epochs"], spec["lr"], cbs=cbs)
        if rank == 0:
            torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                        "history": epoch_history(learn), "best_epoch": cbs[1].best_epoch if cbs else None}, out)
    finally:
        dist.destroy_process_group()


def fit_ddp(build, x_train, y_train, x_valid, y_valid, batch_size: int, seed: int, epochs: int, lr: float,
            weight_decay: float = 0.0, augment=None, world_size: int = 2, device: str = "cpu",
            patience: int | None = None) -> tuple[dict, dict, int | None]:
    """Train `build()` (a picklable function returning a fresh model) with DDP over `world_size` processes; returns
    rank 0's weights (state dict), its per-epoch history, and with `patience` (early stopping on valid loss, the best
    epoch's weights kept) the best epoch. `device` cpu uses gloo; cuda, NCCL over as many GPUs."""
    import torch.multiprocessing as mp

    if world_size < 1:
        raise StagebookError(f"world_size {world_size}: expected 1 or more processes.")
    backend = "nccl" if device == "cuda" else "gloo"
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise StagebookError(f"world_size {world_size} needs as many GPUs; this machine has {torch.cuda.device_count()}.")
    spec = {"build": build, "x_train": torch.as_tensor(x_train), "y_train": torch.as_tensor(y_train),
            "x_valid": torch.as_tensor(x_valid), "y_valid": torch.as_tensor(y_valid), "batch_size": batch_size,
            "seed": seed, "epochs": epochs, "lr": lr, "weight_decay": weight_decay, "augment": augment,
            "patience": patience}
    with tempfile.TemporaryDirectory(prefix="stagebook-ddp-") as tmp:
        out = Path(tmp) / "rank0.pt"
        mp.spawn(_worker, args=(world_size, str(Path(tmp) / "rendezvous"), backend, spec, str(out)),
                 nprocs=world_size, join=True)
        saved = torch.load(out, weights_only=False)
    return saved["state_dict"], saved["history"], saved["best_epoch"]
