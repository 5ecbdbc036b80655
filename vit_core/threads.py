"""How many CPU threads torch should use for a model's inference: one, up to ViT-B size.

A forward pass on one image is a chain of matrix products too small to split well over
OpenMP threads (the bundled CIFAR-10 ViT: 0.2 GFLOP; ViT-B/16: 34 GFLOP). Worse, when the CPU
is busy with anything else (another session, a training run, another program), threads that
spin-wait for each other make a step many times slower. Measured on the 2-core machine with a
training run beside it (`python benchmarks/bench_pages.py --repeats 3 --compare-threads`),
2 threads against 1, new image to every figure of a page: 8-41x slower on the bundled model,
2.4-53x slower on ViT-B/16. On an idle machine two threads win only on big models, by less
than 2x. A server that many sessions share gets its parallelism from the sessions, so each
script run uses one thread; only models bigger than `SMALL_MODEL_GFLOP` (ViT-L and up) use
every core.

`torch.set_num_threads` acts on the calling thread (and threads started after it), so the
app calls `use_inference_threads(model)` at the start of each script run, and the training
thread sets its own count (`training_threads()`).
"""

from __future__ import annotations

import os

import torch
from torch import nn

SMALL_MODEL_GFLOP = 50.0  # up to this many GFLOP per image (ViT-B/16: 34), inference runs on one thread
_DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice at import: the usable cores


def forward_gflop(model: nn.Module) -> float:
    """About 2 x parameters x tokens: the multiply-adds of one image through the model, in GFLOP."""
    cfg = model.cfg
    gh, gw = cfg.grid_size
    tokens = gh * gw + cfg.num_prefix_tokens
    params = sum(p.numel() for p in model.parameters())
    return 2.0 * params * tokens / 1e9


def inference_threads(model: nn.Module) -> int:
    """1 up to ViT-B size, else every core torch would use by default."""
    return 1 if forward_gflop(model) < SMALL_MODEL_GFLOP else max(1, _DEFAULT_THREADS)


def use_inference_threads(model: nn.Module) -> int:
    """Set the calling thread's torch thread count for `model`; returns it."""
    n = inference_threads(model)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


TRAIN_THREADS_ENV = "VIT_EXPLORER_TRAIN_THREADS"


def training_threads() -> int:
    """Threads for an in-app training run: $VIT_EXPLORER_TRAIN_THREADS, else every usable core."""
    env = os.environ.get(TRAIN_THREADS_ENV, "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass  # a typo in a server setting must not stop training: use the default
    return max(1, _DEFAULT_THREADS)
