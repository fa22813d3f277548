"""What a figure was measured on: the machine, and how busy it was meanwhile."""

from __future__ import annotations

import os
import platform
from typing import Any

import psutil
import torch

__all__ = ["describe", "load_1m"]


def load_1m() -> float:
    """The 1-minute load average: other work on the machine shows in every figure."""
    return round(os.getloadavg()[0], 2)


def describe(device: str) -> dict[str, Any]:
    """Platform, processor, CPU count, memory, torch's threads, and the GPU when one is used."""
    gpu = None
    if device.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": gpu,
        "load_1m_at_start": load_1m(),
    }
