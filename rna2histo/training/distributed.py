"""Training on several processes with torchrun: the process group, gradient averaging, batch shards.

``torchrun --nproc_per_node N -m rna2histo train MODEL -f FILE`` starts N copies of the
command; `session` joins them into one process group (NCCL on CUDA, one GPU per process; gloo
on CPU) when torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK) say so, and
`rna2histo.training.loop.fit` then trains one model on N processes. ``batch_size`` is per process: a
step sees N x batch_size tiles.

Gradients are averaged in `rna2histo.training.step.Step`, after backward and before clipping
(`average_gradients`), instead of wrapping networks in DistributedDataParallel. The average is
the one DDP computes, and the models stay untouched: they call their networks several times per
step (the GANs score real and fake tiles with one discriminator, the hybrid reads its features
under no_grad, the diffusion model calls ``embed`` beside ``forward``), which DDP's
one-forward-per-backward hooks do not expect, and their state dicts keep their own keys (no
``module.`` prefix). Every process starts from process 0's weights (`World.broadcast_state`, as
DDP does). The cost: communication does not overlap backward; it is one all-reduce per
optimiser step.

One run on N processes at batch B takes the steps of one process at batch N x B, by
construction: `ShardedBatches` cuts each batch of the one-process order (the same seeded
generator, drawn in the same order) into N consecutive shards of B, and the mean of the N
shards' mean gradients is the gradient of the batch mean (every loss here is a mean over tiles,
but for the cGAN's optional mode-seeking ratio). torch's DistributedSampler is not
used: it draws its own permutation and deals indices out round-robin, so its steps are not the
one-process steps. What differs from one process is what is per process by nature:

- BatchNorm (the cGAN, cVAE and hybrid) normalises each process's B tiles, not the N x B of
  the step; the diffusion U-Net's GroupNorm is per tile. The running statistics saved are
  process 0's, as with DDP's default buffer broadcast.
- Random draws (augmentations, noise, timesteps) come from per-process seeds (`rank_seed`), so
  the N shards of a step never share their noise; process 0 keeps the one-process seeds.

Process 0 alone validates (at the per-process batch_size), draws the sample grids and writes
the run folder; the others go on to the next epoch and wait for it in its first all-reduce.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler

from ..errors import UserError

TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# How long a process waits in a collective: the others wait there while process 0 validates,
# samples and saves at the end of an epoch (NCCL's own default is 10 minutes).
TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes; one process is ``World()``."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")  # where collectives put their tensors

    @property
    def main(self) -> bool:
        """Process 0 validates, samples and writes the run folder."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self):
        """Process 0 runs the block first (e.g. building a cohort); the others then read its result."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean of each value over processes (every process holds the same keys)."""
        if self.size == 1:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(keys, (t / self.size).tolist()))

    def broadcast_state(self, module: torch.nn.Module) -> None:
        """Every process takes process 0's weights and buffers (as DDP does when it wraps a model)."""
        if self.size > 1:
            for tensor in module.state_dict().values():  # views of the module's own tensors
                dist.broadcast(tensor, 0)


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return all(k in os.environ for k in TORCHRUN) and int(os.environ["WORLD_SIZE"]) > 1


def process_device(device: torch.device) -> torch.device:
    """Under torchrun each process takes the GPU of its LOCAL_RANK (unless a device index is given)."""
    if device.type == "cuda" and device.index is None and launched():
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


@contextlib.contextmanager
def session(device: torch.device):
    """The `World` of this process: joins torchrun's process group for the block when there is one.

    A group that is already open (the caller's) is used and left open. Open one per process:
    torch re-creates a closed group under the same names on torchrun's store, whose stale
    addresses then fail the connection.
    """
    device = process_device(device)
    opened = launched() and not dist.is_initialized()
    if opened:
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
        else:
            dist.init_process_group("gloo", timeout=TIMEOUT)
    try:
        if dist.is_available() and dist.is_initialized():
            yield World(dist.get_rank(), dist.get_world_size(), device)
        else:
            yield World(device=device)
    finally:
        if opened:
            dist.destroy_process_group()


def average_gradients(params: list[torch.Tensor], loss: float, world: World) -> float:
    """Replace every gradient by its mean over processes (DDP's average); returns the mean loss.

    One all-reduce of a flat buffer: the gradients (zeros where a process has none), one flag per
    parameter, and the loss. A parameter no process reached keeps ``grad = None``, so the optimiser
    skips it as one process would (AdamW would otherwise decay it). A NaN loss on any process makes
    the mean NaN on all of them, so they stop together instead of waiting for each other.
    """
    grads = [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in params]
    flags = [float(p.grad is not None) for p in params]
    tail = torch.tensor([*flags, loss], dtype=torch.float32, device=world.device)
    flat = torch.cat([*(g.float() for g in grads), tail])
    dist.all_reduce(flat)
    flat /= world.size
    reached = flat[-len(tail) : -1].tolist()
    offset = 0
    for p, seen in zip(params, reached):
        n = p.numel()
        p.grad = _as_grad_of(p, flat[offset : offset + n]) if seen > 0 else None
        offset += n
    return float(flat[-1])


def _as_grad_of(p: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """`values` (flat, logical order) as a gradient of `p`, strided like `p` (e.g. channels_last):
    autograd gives gradients the parameter's layout, and CUDA's fused Adam refuses any other."""
    grad = values.view_as(p).to(p.dtype)
    return grad if grad.stride() == p.stride() else torch.empty_like(p).copy_(grad)


class ShardedBatches(Sampler):
    """Process `rank`'s share of each batch of `batches`: its consecutive `len / size` indices."""

    def __init__(self, batches: BatchSampler, rank: int, size: int):
        self.batches, self.rank, self.size = batches, rank, size
        self.per = batches.batch_size // size

    def __iter__(self):
        for batch in self.batches:
            yield batch[self.rank * self.per : (self.rank + 1) * self.per]

    def __len__(self) -> int:
        return len(self.batches)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process `rank`'s random draws: `seed` itself on process 0, a derived one elsewhere."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def _seed_worker(rank: int, worker_id: int) -> None:
    """Loader workers are seeded from the loader's generator, the same on every process: add the rank."""
    seed = rank_seed(torch.initial_seed(), rank)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def sharded_loader(dataset, batch_size: int, world: World, seed: int, workers: int = 0,
                   pin_memory: bool = False) -> DataLoader:
    """This process's `batch_size` tiles of every shuffled batch of ``world.size * batch_size``.

    The sampler and the loader share one generator seeded with `seed`, drawn in the order
    ``make_loader(dataset, world.size * batch_size, shuffle=True, seed=seed, drop_last=True)``
    draws it, so the union of the shards of step k is that loader's batch k.
    """
    total = world.size * batch_size
    if len(dataset) < total:
        raise UserError(
            f"the training split has {len(dataset)} tiles, fewer than batch_size x processes = "
            f"{batch_size} x {world.size}; lower batch_size or use fewer processes"
        )
    generator = torch.Generator().manual_seed(seed)
    batches = BatchSampler(RandomSampler(dataset, generator=generator), total, drop_last=True)
    return DataLoader(
        dataset,
        batch_sampler=ShardedBatches(batches, world.rank, world.size),
        num_workers=workers,
        generator=generator,
        persistent_workers=workers > 0,
        collate_fn=dataset.collate,
        worker_init_fn=functools.partial(_seed_worker, world.rank) if workers > 0 else None,
        pin_memory=pin_memory,
    )
