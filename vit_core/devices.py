"""Which device runs a model: CUDA, then Apple MPS, then the CPU; one server setting overrides it.

Training (`TrainConfig.device`) and inference (the app's traces and analyses) make the same
choice (`resolve_device("auto")`). The app reads `VIT_EXPLORER_DEVICE` (`auto`, the default,
`cpu`, `cuda`, `cuda:N` or `mps`) through `server_device()`: a value it does not know, or a
device this process cannot use, falls back to the CPU with a note that says why and how to
fix it (shown in the sidebar and the server log), never an error.

Tensors a caller makes for a model go to `model_device(model)`; what comes back for plotting
goes to the CPU (`Tensor.cpu()`), where numpy can read it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

DEVICE_ENV = "VIT_EXPLORER_DEVICE"
DEVICE_SETTINGS = ("auto", "cpu", "cuda", "mps")  # and "cuda:N" for one GPU of several
CPU = torch.device("cpu")


def cuda_available() -> bool:
    """Whether this process can use a CUDA GPU (torch built with CUDA, a driver, a visible device)."""
    return torch.cuda.is_available()


def mps_available() -> bool:
    """Whether this process can use Apple's Metal (MPS) backend."""
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" -> CUDA if available, else Apple MPS, else CPU; anything else as given (`torch.device(name)`)."""
    if name == "auto":
        if cuda_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return CPU
    return torch.device(name)


@dataclass(frozen=True)
class DeviceChoice:
    """The device the server runs models on, and why it is not the one asked for (if it is not)."""

    device: torch.device
    setting: str  # the value of VIT_EXPLORER_DEVICE as given ("auto" when unset)
    note: str = ""  # empty when the setting was met; else what went wrong and what the server does instead


def server_device(environ: Mapping[str, str] | None = None) -> DeviceChoice:
    """The inference device `VIT_EXPLORER_DEVICE` asks for, or the CPU with a note saying why not."""
    env = os.environ if environ is None else environ
    raw = env.get(DEVICE_ENV, "").strip()
    setting = raw.lower() or "auto"
    if setting == "auto":
        return DeviceChoice(resolve_device("auto"), "auto")
    if setting == "cpu":
        return DeviceChoice(CPU, "cpu")
    kind, sep, index = setting.partition(":")
    if kind not in ("cuda", "mps") or (sep and (kind != "cuda" or not index.isdigit())):
        return DeviceChoice(
            CPU,
            raw,
            f"{DEVICE_ENV}={raw!r} is not one of auto, cpu, cuda, cuda:N, mps: the model runs on the CPU. "
            f"Set {DEVICE_ENV}=auto (or leave it unset) to use a GPU when there is one.",
        )
    if kind == "mps":
        if mps_available():
            return DeviceChoice(torch.device("mps"), setting)
        return DeviceChoice(
            CPU, raw, f"{DEVICE_ENV}=mps, but Apple's MPS is not available here: the model runs on the CPU."
        )
    if not cuda_available():
        return DeviceChoice(
            CPU,
            raw,
            f"{DEVICE_ENV}={raw}, but this process sees no CUDA GPU (no GPU, no driver, or torch built for the CPU "
            "only): the model runs on the CPU.",
        )
    if sep and int(index) >= torch.cuda.device_count():
        return DeviceChoice(
            CPU,
            raw,
            f"{DEVICE_ENV}={raw}, but this process sees {torch.cuda.device_count()} CUDA GPU(s), numbered from 0: "
            "the model runs on the CPU.",
        )
    return DeviceChoice(torch.device(setting), setting)


def device_label(device: torch.device | str, cpu_threads: int | None = None) -> str:
    """A device in words: "CPU (2 threads)", "CUDA: NVIDIA H200", "Apple MPS"."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return f"CUDA: {torch.cuda.get_device_name(device)}"
        except Exception:  # noqa: BLE001 - a name is decoration; never fail for it
            return "CUDA"
    if device.type == "mps":
        return "Apple MPS"
    if device.type == "cpu":
        n = torch.get_num_threads() if cpu_threads is None else cpu_threads
        return f"CPU ({n} thread{'s' if n != 1 else ''})"
    return str(device)


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (or buffer); the CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return CPU


def to_model_device(x: Tensor, model: nn.Module) -> Tensor:
    """`x` on the model's device (the same tensor when it is there already)."""
    return x.to(model_device(model))
