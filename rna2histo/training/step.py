"""One optimisation step as every model takes it (`Step`: backward, gradient clipping at 1.0,
optimiser step, mixed precision, gradients averaged over processes), and the device it runs on."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch

from ..errors import UserError
from . import distributed
from .distributed import World

CLIP_NORM = 1.0  # the study's gradient-norm clipping


class NonFiniteLoss(UserError):
    """A loss became NaN or inf: training stops, the last good checkpoint is kept."""


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): elsewhere bf16 autocast is
    emulated and slower than fp32. Read from Linux's `cpuinfo`; False where there is none."""
    try:
        flags = cpuinfo.read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class Step:
    """Backward, clip, step and zero for named optimisers, with mixed precision.

    ``step("g", loss)`` optimises the parameters of optimiser "g" only. On CUDA (`amp`), autocast
    runs in bf16 where the device supports it (no scaler needed), else fp16 with a gradient
    scaler. On a CPU, `cpu_bf16` asks for bf16 autocast, granted only where the CPU computes bf16
    natively (`cpu_has_bf16`), else fp32. On several processes the gradients are averaged over
    them before clipping, as DDP would.
    """

    def __init__(self, optimizers: dict, device: torch.device, amp: bool = True, world: World = World(),
                 cpu_bf16: bool = False):
        self.optimizers = {name: pair[0] for name, pair in optimizers.items()}
        self.device = device
        self.world = world
        self.amp_dtype = None
        if amp and device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif cpu_bf16 and device.type == "cpu" and cpu_has_bf16():
            self.amp_dtype = torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def __call__(self, name: str, loss: torch.Tensor) -> float:
        value = float(loss.detach())
        if not math.isfinite(value) and self.world.size == 1:  # several processes decide together
            raise NonFiniteLoss(f"loss for optimiser {name!r} is {value}; training stopped")
        opt = self.optimizers[name]
        params = [p for group in opt.param_groups for p in group["params"]]
        opt.zero_grad(set_to_none=True)
        # Gradients for this optimiser's parameters only: the generator's loss passes through
        # the discriminator, and its weight gradients there (with the spectral norm's backward)
        # were most of a thesis cGAN step on a CPU, computed only to be thrown away.
        self.scaler.scale(loss).backward(inputs=params)
        if self.world.size > 1:
            mean = distributed.average_gradients(params, value, self.world)
            if not math.isfinite(mean):
                message = f"loss for optimiser {name!r} is {mean} (mean over processes); training stopped"
                raise NonFiniteLoss(message)
        self.scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
        self.scaler.step(opt)
        self.scaler.update()
        return value


def pick_device(device: str = "auto") -> torch.device:
    """`auto`: cuda, then mps, then cpu."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
