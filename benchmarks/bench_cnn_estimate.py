"""How close the Train page's time estimate is for the CNN baseline, against a measured training step.

    python benchmarks/bench_cnn_estimate.py [--threads 1] [--batch 64] [--repeats 4]

Per CNN preset (vit_core.cnn.CNN_PRESETS, 32x32, 10 classes): the forward FLOPs counted on its
layers (vit_core.costs.cnn_forward_flops), the seconds per training image the estimate gives with
the CNN's own calibration and with the ViT's (what a CNN run would get if timed against the ViT
calibration model), and the measured seconds per image of an AdamW training step (fastest of
`--repeats` after one warm-up). Figures only, no assertions.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vit_core import costs  # noqa: E402
from vit_core.cnn import CNN_PRESETS, ResNet  # noqa: E402
from vit_core.train import TrainConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    vit_cal, cnn_cal = costs.calibrate(args.threads), costs.calibrate(args.threads, arch="resnet")
    print(f"calibration on {args.threads} thread(s): ViT {vit_cal.flops_per_s / 1e9:.2f} GFLOP/s, "
          f"ResNet {cnn_cal.flops_per_s / 1e9:.2f} GFLOP/s")  # fmt: skip
    print(f"{'preset':8} {'MFLOP fwd':>10} {'est (CNN cal)':>14} {'est (ViT cal)':>14} {'measured':>10}  s/img")
    for name in CNN_PRESETS:
        cfg = TrainConfig(arch="resnet", cnn_preset=name, batch_size=args.batch)
        torch.manual_seed(0)
        model = ResNet(cfg.model_config(10)).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
        best = float("inf")
        for i in range(args.repeats + 1):
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i:
                best = min(best, time.perf_counter() - t0)
        print(
            f"{name:8} {costs.forward_flops(cfg) / 1e6:10.1f} {costs.seconds_per_image(cfg, cnn_cal):14.4f} "
            f"{costs.seconds_per_image(cfg, vit_cal):14.4f} {best / args.batch:10.4f}"
        )


if __name__ == "__main__":
    main()
