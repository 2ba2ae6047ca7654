"""Pretrained-weight status: which downloads the models and metrics need are on this machine."""

from __future__ import annotations

from pathlib import Path

import torch

# torchvision's ImageNet AlexNet, the trunk of LPIPS(net="alex"); LPIPS's own linear layers ship
# inside the `lpips` package.
ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"


def lpips_weights_path() -> Path:
    """Where torch hub keeps the AlexNet checkpoint (follows $TORCH_HOME at every call)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_CHECKPOINT


def lpips_weights_present() -> bool:
    return lpips_weights_path().is_file()
