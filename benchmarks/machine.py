"""Which machine a benchmark ran on: CPU model, cores, memory, GPU and the torch device."""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def describe_machine(device: str) -> dict[str, Any]:
    """The machine and the torch device the lesion model runs on.

    Parameters
    ----------
    device : str
        The device setting of the run (``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``).

    Returns
    -------
    dict
        ``cpu`` (model name), ``cores`` (usable by this process), ``logical_cpus``, ``memory_gib``,
        ``gpu`` (name and memory, or None), ``torch_device`` (what ``device`` resolves to), ``torch``,
        ``python``, ``os``.
    """
    import torch

    gpu: str | None = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name}, {props.total_memory / 1024**3:.0f} GiB ({torch.cuda.device_count()} visible)"
    resolved = device
    if device == "auto":
        resolved = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "cpu": _cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "logical_cpus": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "gpu": gpu,
        "torch_device": resolved,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def one_line(machine: dict[str, Any]) -> str:
    """The machine in one line, as the report's heading shows it."""
    memory = f"{machine['memory_gib']} GiB RAM" if machine.get("memory_gib") else "RAM unknown"
    return (f"{machine['cpu']}, {machine['cores']} cores usable ({machine['logical_cpus']} logical), {memory}; "
            f"GPU: {machine['gpu'] or 'none'}; torch device: {machine['torch_device']} (torch {machine['torch']})")
