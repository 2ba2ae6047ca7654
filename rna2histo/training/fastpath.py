"""The GPU fast path: channels_last, fused optimisers, pinned memory and loader workers, cuDNN
benchmark mode and (opt-in) ``torch.compile``; resolved once per run by `fast_path`.

Every switch left at None ("auto") is on where the device is CUDA and off elsewhere, except
fused Adam, which is on wherever torch has it (CUDA and CPU): on 2 CPU cores it made the thesis
presets' training steps 1.07-1.28x faster (measured 2026-12-02, in one run against the unfused
step). Mixed precision is the loop's `amp` (`rna2histo.training.step.Step`).
The training loop and the bench (`python -m rna2histo bench`) share these switches, so the bench times
what training runs.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError

SWITCHES = ("channels_last", "fused", "cudnn_benchmark", "compile", "workers")  # fit's parameters
MAX_AUTO_WORKERS = 8


@dataclass(frozen=True)
class FastPath:
    """The switches as resolved for one device: what ran (recorded in a run's params.json)."""

    channels_last: bool = False  # images and conv weights in NHWC: tensor cores' layout
    fused: bool = False  # one fused Adam/AdamW kernel for all parameters
    cudnn_benchmark: bool = False  # cuDNN times conv algorithms once per shape, keeps the fastest
    compile: bool = False  # torch.compile each network in place (see `prepare`)
    workers: int = 0  # DataLoader processes decoding and augmenting tiles
    pin_memory: bool = False  # page-locked batches: host-to-device copies overlap compute

    def prepare(self, model: nn.Module) -> nn.Module:
        """channels_last and compile, in place; call before building the optimisers.

        ``nn.Module.compile()`` compiles a module's forward without wrapping it, so state_dict
        keys stay those of the plain model (no ``_orig_mod.``) and checkpoints load anywhere.
        Each child network is compiled: the generators' own forward is never called.
        """
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # 4-D parameters only
        if self.compile:
            for net in model.children():
                net.compile()
        return model

    def to_device(self, batch, device: torch.device) -> list[torch.Tensor]:
        """A batch on `device`; images (4-D) in channels_last when that is on."""
        return [self._to(t, device) for t in batch]

    def _to(self, t: torch.Tensor, device: torch.device) -> torch.Tensor:
        if self.channels_last and t.dim() == 4:
            return t.to(device, non_blocking=True, memory_format=torch.channels_last)
        return t.to(device, non_blocking=True)  # asynchronous from pinned memory on CUDA

    @contextlib.contextmanager
    def backends(self):
        """cuDNN benchmark mode for the block (when on), then the previous setting."""
        if not self.cudnn_benchmark:
            yield
            return
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = before


def fast_path(
    device: torch.device,
    processes: int = 1,
    *,
    channels_last: bool | None = None,
    fused: bool | None = None,
    cudnn_benchmark: bool | None = None,
    compile: bool = False,
    workers: int | str | None = "auto",
) -> FastPath:
    """Resolve the switches for `device`: None (and workers "auto") mean on where it is CUDA;
    `fused` None means on wherever torch has a fused Adam for the device.

    `processes`: how many training processes share this machine's CPUs (torchrun), so that
    automatic loader workers do not oversubscribe them. Reads no CUDA state: `device` decides.
    """
    cuda = device.type == "cuda"
    supported = _fused_supported(device)
    fused = supported if fused is None else bool(fused)
    if fused and not supported:
        raise UserError(f"fused=True: torch {torch.__version__} has no fused Adam for {device.type}; "
                        "use fused=None (auto) or False")
    return FastPath(
        channels_last=cuda if channels_last is None else bool(channels_last),
        fused=fused,
        cudnn_benchmark=cuda if cudnn_benchmark is None else bool(cudnn_benchmark),
        compile=bool(compile),
        workers=_workers(workers, cuda, processes),
        pin_memory=cuda,
    )


def _workers(workers: int | str | None, cuda: bool, processes: int) -> int:
    """"auto" (or None): up to 8 per process on CUDA, where the GPU outruns one process's
    augmentation; 0 elsewhere (the model, not the loader, is a CPU run's bottleneck)."""
    if workers is None or workers == "auto":
        return min(MAX_AUTO_WORKERS, _cpus() // max(processes, 1)) if cuda else 0
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UserError(f"workers must be 'auto' or an integer >= 0 (got {workers!r})")
    return workers


def _cpus() -> int:
    """CPUs this process may run on (a container's share, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _fused_supported(device: torch.device) -> bool:
    # torch keeps this list private; without it, trust the device types fused Adam has had since 2.4
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:
        return device.type in ("cuda", "cpu", "mps")
    return device.type in _get_fused_kernels_supported_devices()
