"""Training with ``torch.distributed``: DistributedDataParallel under ``torchrun``.

``augkit train`` detects ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``) and then trains with DistributedDataParallel; without it
nothing changes. ``augkit train --nproc N`` starts ``torch.distributed.run`` itself on this
machine. What changes under DDP (see :mod:`augkit.training.loop` for the hooks):

* the process group uses **nccl** on CUDA (one GPU per process, ``cuda:LOCAL_RANK``) and
  **gloo** on CPU;
* each rank reads its own shard of the training set (:class:`DistributedSampler`, reshuffled per
  epoch with ``set_epoch``; the order depends only on ``(seed, epoch)``); each sample's
  augmentation still comes from ``derive_seed(seed, relpath, epoch)``, so a sample gets the same
  augmentation whichever rank reads it;
* the model is wrapped in ``DistributedDataParallel`` (rewrapped when the freeze phase changes,
  since DDP only synchronises the parameters that needed gradients when it was built);
* the validation set is split between ranks without padding, and losses, accuracies and image
  counts are summed over ranks, so the metrics cover every image exactly once;
* only rank 0 prints and writes the run folder (checkpoints, ``metrics.csv``, ``curves.png``,
  ``settings.yaml``, ``errors.jsonl``).

``--batch-size`` is per process: the global batch is ``batch_size x world size``. BatchNorm
statistics are per process (no SyncBatchNorm), as with torchvision's reference scripts.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import overload

import torch
from torch import nn
from torch.utils.data import DistributedSampler, Sampler

from augkit.errors import UsageError
from augkit.training.config import LIBRARY_ONLY

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by ``torchrun`` (1 when not launched by it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def under_torchrun() -> bool:
    return all(k in os.environ for k in ENV_KEYS) and env_world_size() > 1


def is_main() -> bool:
    """True on rank 0, and in a process that is not part of a distributed run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


@dataclass
class DistContext:
    """A process's place in a run: ``enabled`` is False for an ordinary one-process run."""

    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owned: bool = False  # this context started the process group (and so ends it)
    _wrapped: dict = field(default_factory=dict, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ data
    def train_sampler(self, ds, seed: int) -> DistributedSampler | None:
        """Per-rank shards of ``ds``, shuffled per epoch (padded so that every rank runs the same
        number of steps, as DDP needs); None when not distributed."""
        if not self.enabled:
            return None
        return DistributedSampler(
            ds, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed, drop_last=False
        )

    def eval_sampler(self, ds) -> ShardSampler | None:
        """Every ``world_size``-th image from ``rank`` on: each image once, no padding."""
        return ShardSampler(len(ds), self.rank, self.world_size) if self.enabled else None

    @staticmethod
    def set_epoch(loader, epoch: int) -> None:
        sampler = getattr(loader, "sampler", None)
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    # ------------------------------------------------------------------ model
    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel (the model itself when not distributed).

        DDP synchronises only the parameters that need gradients when it is built, so a model is
        wrapped again when that set changes (the head-only warm-up, then all layers)."""
        if not self.enabled:
            return model
        key = (id(model), tuple(p.requires_grad for p in model.parameters()))
        if key not in self._wrapped:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self._wrapped.clear()
            ids = [self.device.index if self.device.index is not None else 0] if self.device.type == "cuda" else None
            self._wrapped[key] = DDP(model, device_ids=ids, output_device=ids[0] if ids else None)
        return self._wrapped[key]

    # ------------------------------------------------------------------ metrics
    @overload
    def reduce(self, stats: dict) -> dict: ...
    @overload
    def reduce(self, stats: None) -> None: ...
    def reduce(self, stats: dict | None) -> dict | None:
        """Sum a :func:`~augkit.training.loop.train_one_epoch` / :func:`~augkit.training.loop.validate` result
        over ranks: loss and accuracy weighted by each rank's images, the slowest rank's seconds."""
        if not self.enabled or stats is None:
            return stats
        n = float(stats["images"])
        t = torch.tensor([stats["loss"] * n, stats["acc"] * n, n], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        out = dict(
            stats,
            loss=t[0].item() / max(1.0, t[2].item()),
            acc=t[1].item() / max(1.0, t[2].item()),
            images=int(round(t[2].item())),
        )
        if "seconds" in stats:
            s = torch.tensor([float(stats["seconds"])], dtype=torch.float64)
            torch.distributed.all_reduce(s, op=torch.distributed.ReduceOp.MAX)
            out["seconds"] = s.item()
        return out

    def close(self) -> None:
        """End the process group if this context started it."""
        self._wrapped.clear()
        if self.owned and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owned = False


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of ``n``: shards of unequal length, each index once."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return max(0, math.ceil((self.n - self.rank) / self.world_size))


def setup(device: torch.device) -> DistContext:
    """The run's :class:`DistContext`: joins (or starts) the process group when launched by
    ``torchrun``; otherwise a disabled context on ``device``. Under torchrun on CUDA each process
    takes ``cuda:LOCAL_RANK``."""
    if not under_torchrun():
        return DistContext(device=device)
    if not torch.distributed.is_available():
        raise UsageError("this torch was built without torch.distributed: cannot train under torchrun")
    rank, world, local = (int(os.environ[k]) for k in ENV_KEYS)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UsageError(
                f"LOCAL_RANK {local}: only {torch.cuda.device_count()} CUDA device(s) on this node "
                "(use --nproc-per-node <= the GPU count)"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UsageError(f"--device {device.type}: distributed training runs on cuda (nccl) or cpu (gloo)")
    owned = False
    if not torch.distributed.is_initialized():
        # device_id binds the group to this process's GPU; None (the default) on CPU under gloo
        torch.distributed.init_process_group(
            backend=backend, rank=rank, world_size=world, device_id=device if device.type == "cuda" else None
        )
        owned = True
    return DistContext(
        True,
        torch.distributed.get_rank(),
        torch.distributed.get_world_size(),
        local,
        torch.distributed.get_backend(),
        device,
        owned,
    )


# ====================================================================== --nproc: relaunch under torchrun


def relaunch_args(argv: Sequence[str], option: str = "--nproc") -> list[str]:
    """The command line the user gave (``sys.argv[1:]``) without ``option`` and its value: what
    each torchrun process runs, so a new ``augkit train`` option needs no change here."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def train_cli_args(cfg) -> list[str]:
    """``augkit train`` arguments that reproduce a :class:`~augkit.training.config.TrainConfig`, derived
    from its fields (``batch_size`` -> ``--batch-size``; ``out`` -> ``--output``), for launching
    from Python: ``launch(n, ["train", *train_cli_args(cfg)])``."""
    args = [str(cfg.data), "--output", str(cfg.out)]
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in ("data", "out", *LIBRARY_ONLY) or value is None and f.name != "recipe":
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            args += [flag] if value else []
        else:
            args += [flag, "none" if value is None else repr(value) if isinstance(value, float) else str(value)]
    return args


def torchrun_command(nproc: int, module_args: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m augkit ARGS``."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "augkit",
        *module_args,
    ]


def local_world_size() -> int:
    """Processes of this run on this machine (``LOCAL_WORLD_SIZE`` from torchrun; 1 otherwise)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def launch(nproc: int, module_args: Sequence[str]) -> int:
    """Run ``augkit ARGS`` in ``nproc`` processes on this machine through torchrun; its exit code
    (the first failing rank's, else 0)."""
    if nproc < 1:
        raise UsageError(f"--nproc must be >= 1, got {nproc}")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("LOGLEVEL", "WARNING")
    return subprocess.run(torchrun_command(nproc, module_args), env=env).returncode
