"""Is the asked-for torch device here? Checked when a run starts, before any model loads."""
from __future__ import annotations

from ..errors import ConfigError


def check_device(device: str) -> str:
    """``device`` if torch can use it on this machine, else one ConfigError line saying why.

    The name itself is checked by the config (cpu, cuda, cuda:N, mps); this asks torch.
    """
    if device == "cpu":
        return device
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only torch build" if torch.version.cuda is None else "no CUDA GPU visible"
            raise ConfigError(f"--device {device}: CUDA is not available here ({build}); use --device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here "
                              f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: Apple's MPS backend is not available here; use --device cpu")
    return device
