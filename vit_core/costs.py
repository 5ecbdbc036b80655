"""What a training run will cost, before it starts: model size, measured speed, a time estimate."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from .model import VisionTransformer
from .train import TrainConfig, resolve_device


def model_size(cfg: TrainConfig, num_classes: int = 10) -> tuple[int, int]:
    """(parameters, tokens per image) of the ViT `cfg` trains; built on the meta device (no memory)."""
    with torch.device("meta"):
        model = VisionTransformer(cfg.vit_config(num_classes))
    gh, gw = model.cfg.grid_size
    return model.num_params(), model.num_prefix_tokens + gh * gw


def measure_seconds_per_image(cfg: TrainConfig, num_classes: int = 10, batch: int = 32, steps: int = 2) -> float:
    """Seconds one training image costs with this model shape on this machine, measured now.

    One warm-up step, then `steps` timed forward + backward + AdamW steps on a random batch
    of `batch` images; the fastest is kept (other work on the machine only ever slows a step).
    """
    device = resolve_device(cfg.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = VisionTransformer(cfg.vit_config(num_classes)).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(batch, 3, cfg.img_size, cfg.img_size, device=device)
        y = torch.randint(0, num_classes, (batch,), device=device)
        best = math.inf
        for i in range(steps + 1):
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i > 0:
                best = min(best, time.perf_counter() - t0)
    return best / batch


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
    eval_s = (evals * eval_size + 2 * test_size) * seconds_per_image / 3  # +2: final accuracy and the mistakes
    return train_s + eval_s
