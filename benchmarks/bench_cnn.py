"""The ResNet baselines next to the ViT presets on this CPU, and what the receptive field costs.

    python benchmarks/bench_cnn.py [--batch 128] [--repeats 5] [--threads N] [--erf-images 32]

Prints, per model (CNN "quick" and "bundled" from vit_core.cnn.CNN_PRESETS; the ViTs with the
shapes of vit_core.train.PRESETS "quick" and "bundled"), on 32x32 inputs and 10 classes:
  * parameters;
  * forward images/s (eval mode, no grad) and training-step images/s (forward, cross-entropy,
    backward, SGD step; train mode), median of `--repeats` after one warm-up;
  * for the CNNs, the effective receptive field of every layer over `--erf-images` images, its
    time and the distances (pixels) it gives at random init; for the ViTs, the time of
    `mean_attention_distance_by_depth` on as many images.
Weights are random, which does not change the timings. Figures only, no assertions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vit_core.analysis.emergence import mean_attention_distance_by_depth  # noqa: E402
from vit_core.analysis.receptive_field import effective_receptive_field  # noqa: E402
from vit_core.cnn import CNN_PRESETS, ResNet  # noqa: E402
from vit_core.config import ViTConfig  # noqa: E402
from vit_core.model import VisionTransformer  # noqa: E402

# The architecture fields of vit_core.train.PRESETS (read there, repeated so that this script
# does not depend on the trainer's module).
VIT_SHAPES = {
    "quick": dict(patch_size=4, embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.0),
    "bundled": dict(patch_size=4, embed_dim=192, depth=6, num_heads=4, mlp_ratio=2.0),
}


def median_seconds(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def throughput(model: torch.nn.Module, batch: int, repeats: int) -> tuple[float, float]:
    """(forward images/s, training-step images/s)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.eval()
    fwd = batch / median_seconds(forward, repeats)
    model.train()
    train = batch / median_seconds(step, repeats)
    model.eval()
    return fwd, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--erf-images", type=int, default=32)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, 32x32 inputs")
    torch.manual_seed(0)
    models = {f"CNN {k}": ResNet(cfg) for k, cfg in CNN_PRESETS.items()}
    for k, shape in VIT_SHAPES.items():
        models[f"ViT {k}"] = VisionTransformer(ViTConfig(img_size=32, num_classes=10, **shape))
    probe = torch.randn(args.erf_images, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    print(f"{'model':<12} {'params':>10} {'fwd img/s':>10} {'train img/s':>12} {'depth measure':>14}")
    notes = []
    for name, model in models.items():
        fwd, train = throughput(model, args.batch, args.repeats)
        t0 = time.perf_counter()
        if isinstance(model, ResNet):
            _, dist = effective_receptive_field(model, probe)
            notes.append(f"{name}: ERF distance by depth (px, random init) " + ", ".join(f"{d:.2f}" for d in dist))
        else:
            dist = mean_attention_distance_by_depth(model, probe)
            notes.append(
                f"{name}: mean attention distance by depth (px, random init) " + ", ".join(f"{d:.2f}" for d in dist)
            )
        took = time.perf_counter() - t0
        print(f"{name:<12} {model.num_params():>10,} {fwd:>10,.0f} {train:>12,.0f} {took:>12.2f} s")
    print(f"depth measure: ERF of every layer (CNN) or mean attention distance (ViT) over {args.erf_images} images")
    for line in notes:
        print(line)


if __name__ == "__main__":
    main()
