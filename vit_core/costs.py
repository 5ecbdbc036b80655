"""What a training run will cost, before it starts: model size, FLOPs, and a time estimate.

The estimate is a FLOP count divided by this server's training speed in FLOP/s, which is
measured once per process (`calibrate`, a few training steps of a small fixed model, well
under a second of CPU) and shared by every session. Changing the form costs arithmetic only:
no step of the user's model is ever timed in a page run.

The ViT's FLOPs are a formula in its shapes (`forward_flops`); the CNN baseline's are counted
from its layers (`cnn_forward_flops`: every convolution's and Linear's multiply-adds), and the
CNN is timed against its own calibration model, a small ResNet: a CPU runs 3x3 convolutions
at another FLOP/s than the ViT's matrix products.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cnn import CNN_ARCH, CNNConfig, ResNet
from .fileio import SingleFlight
from .model import VisionTransformer
from .train import TrainConfig, resolve_device

# The calibration model: the shape of the small presets, so that the FLOP/s it measures is the
# one a run of those shapes gets (tiny matrices run at a lower FLOP/s than large ones).
CALIBRATION = TrainConfig(patch_size=4, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0)
CNN_CALIBRATION = TrainConfig(arch=CNN_ARCH, cnn_preset="demo")  # the CNN's: the smallest ResNet preset
CALIBRATION_BATCH = 32
CALIBRATION_STEPS = 2


def model_size(cfg: TrainConfig, num_classes: int = 10) -> tuple[int, int]:
    """(parameters, tokens per image) of the ViT `cfg` trains; built on the meta device (no memory)."""
    with torch.device("meta"):
        model = VisionTransformer(cfg.vit_config(num_classes))
    gh, gw = model.cfg.grid_size
    return model.num_params(), model.num_prefix_tokens + gh * gw


def forward_flops(cfg: TrainConfig, num_classes: int = 10) -> float:
    """Multiply-adds x 2 of one image through the model `cfg` trains (FLOPs, no memory used).

    For the ViT, per block: qkv and output projections 4 N D^2, MLP 2 r N D^2, attention scores
    and weighted sum 2 N^2 D (multiply-adds); plus the patch embedding N P^2 C D and the head.
    For the CNN baseline (`arch` "resnet"): `cnn_forward_flops` of its config.
    """
    if cfg.arch == CNN_ARCH:
        return cnn_forward_flops(cfg.model_config(num_classes))
    n = (cfg.img_size // cfg.patch_size) ** 2
    tokens = n + 1
    d, r = cfg.embed_dim, cfg.mlp_ratio
    block = (4 + 2 * r) * tokens * d * d + 2 * tokens * tokens * d
    macs = n * cfg.patch_size**2 * 3 * d + cfg.depth * block + d * num_classes
    return 2.0 * macs


def cnn_forward_flops(cfg: CNNConfig) -> float:
    """Multiply-adds x 2 of one image through the ResNet `cfg` describes (FLOPs).

    Counted on the layers themselves: one forward pass of a (1, C, H, W) input on the meta
    device (shapes only, no memory, no arithmetic), with a hook on every convolution
    (output elements x input channels per group x kernel area) and every Linear (output x
    input features). BatchNorm, ReLU, the residual additions and the pooling, about one
    operation per activation, are left out, as the ViT's count leaves out LayerNorm and softmax.
    """
    macs = 0

    def count(module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs += out.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            macs += out.numel() * module.in_features

    with torch.device("meta"):
        model = ResNet(cfg)
    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(torch.empty(1, cfg.in_chans, *cfg.img_size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return 2.0 * macs


def train_flops_per_image(cfg: TrainConfig, num_classes: int = 10) -> float:
    """FLOPs of one training image: forward plus backward (about twice the forward)."""
    return 3.0 * forward_flops(cfg, num_classes)


@dataclass(frozen=True)
class Calibration:
    """This server's measured training speed."""

    flops_per_s: float  # training FLOP/s of the calibration model (forward + backward + AdamW)
    seconds: float  # how long the measurement took
    threads: int  # torch threads it ran on
    measured_at: float  # time.time() of the measurement


_CALIBRATION: dict[tuple[str, int, str], Calibration] = {}
_CALIBRATION_LOCK = threading.Lock()
_FLIGHT = SingleFlight()


def calibrate(threads: int | None = None, device: str = "auto", arch: str = "vit") -> Calibration:
    """This server's training FLOP/s on `threads` threads for a ViT (`arch` "vit") or the CNN
    baseline ("resnet"), measured at the first call and then cached for the process.

    Concurrent first calls (many sessions opening the Train page at once) share one measurement.
    """
    threads = torch.get_num_threads() if threads is None else int(threads)
    if arch not in ("vit", CNN_ARCH):
        raise ValueError(f"arch must be 'vit' or {CNN_ARCH!r}, not {arch!r}")
    key = (str(resolve_device(device)), threads, arch)
    with _CALIBRATION_LOCK:
        hit = _CALIBRATION.get(key)
    if hit is not None:
        return hit

    def measure() -> Calibration:
        cal = _measure(threads, device) if arch == "vit" else _measure_cnn(threads, device)
        with _CALIBRATION_LOCK:
            _CALIBRATION[key] = cal
        return cal

    return _FLIGHT.do(key, measure)


def _measure(threads: int, device: str) -> Calibration:
    return _measure_model(CALIBRATION, threads, device)


def _measure_cnn(threads: int, device: str) -> Calibration:
    return _measure_model(CNN_CALIBRATION, threads, device)


def _measure_model(calibration: TrainConfig, threads: int, device: str) -> Calibration:
    t_start = time.perf_counter()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cfg = calibration.replace(device=device)
        dev = resolve_device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = _build(cfg).to(dev)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            x = torch.randn(CALIBRATION_BATCH, 3, cfg.img_size, cfg.img_size, device=dev)
            y = torch.randint(0, 10, (CALIBRATION_BATCH,), device=dev)
            best = math.inf
            for i in range(CALIBRATION_STEPS + 1):  # one warm-up step, then the fastest timed one
                t0 = time.perf_counter()
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                if i > 0:
                    best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    flops = train_flops_per_image(calibration, 10) * CALIBRATION_BATCH / best
    return Calibration(flops, time.perf_counter() - t_start, threads, time.time())


def _build(cfg: TrainConfig) -> nn.Module:
    model_cfg = cfg.model_config(10)
    return ResNet(model_cfg) if isinstance(model_cfg, CNNConfig) else VisionTransformer(model_cfg)


def cached_calibration(arch: str = "vit") -> Calibration | None:
    """The calibration of `arch` measured so far in this process (any thread count), or None."""
    with _CALIBRATION_LOCK:
        return next((c for k, c in _CALIBRATION.items() if k[2] == arch), None)


def seconds_per_image(cfg: TrainConfig, calibration: Calibration, num_classes: int = 10) -> float:
    """Seconds one training image of `cfg` costs on this server: its FLOPs over the calibrated FLOP/s."""
    return train_flops_per_image(cfg, num_classes) / calibration.flops_per_s


def estimate_seconds(
    cfg: TrainConfig, seconds_per_image: float, train_size: int, eval_size: int, test_size: int
) -> float:
    """Wall-clock estimate of a run: training steps, evaluations during training, the final evaluation.

    A forward pass costs about a third of a training step (forward + backward), so an
    evaluated image is counted at a third of a trained one.
    """
    steps_per_epoch, total_steps = cfg.steps(train_size)
    evals = total_steps // (cfg.eval_every or steps_per_epoch) + 1
    train_s = total_steps * cfg.batch_size * seconds_per_image
    eval_s = (evals * eval_size + test_size) * seconds_per_image / 3  # the final pass gives accuracy and mistakes
    return train_s + eval_s
