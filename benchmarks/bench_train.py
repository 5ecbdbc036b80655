"""Training speed on this machine: our ViT vs transformers' ViT, data cost, augmentation, time to accuracy.

    python benchmarks/bench_train.py [--steps 8] [--rounds 3] [--threads N] [--metrics runs/quick/metrics.json]

Prints
  * training images/s (forward, backward, gradient clipping, AdamW, batch-wise augmentation;
    batch 128, synthetic CIFAR-sized uint8 data) for the `quick` and `bundled` recipes, ours and
    transformers' `ViTForImageClassification` with the same architecture (sdpa attention, no
    dropout) under the same loop. The two are measured in alternating rounds of `--steps`
    steps and the ratio is the median of per-round ratios, so a CPU shared with other work
    slows both alike;
  * the share of step time spent on data (gather of a shuffled batch, crop + flip, normalise);
  * batch-wise tensor augmentation images/s vs per-image PIL transforms (pad, random crop,
    flip, to tensor, normalise), the way a torchvision-style pipeline does it, and the tensor
    rate with Mixup/CutMix added;
  * the accuracy-vs-training-time curve of a CLI run's metrics JSON (default runs/quick), made with
    `python -m vit_core.train --preset quick --data data/cifar10 --out runs/quick`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vit_core.batches import augment_batch, mix_batch, normalize_batch  # noqa: E402
from vit_core.config import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from vit_core.data import ImageDataset  # noqa: E402
from vit_core.model import VisionTransformer  # noqa: E402
from vit_core.train import PRESETS, TrainConfig, param_groups  # noqa: E402

BATCH = 128


def hf_model(cfg: TrainConfig) -> torch.nn.Module:
    """transformers' ViT with our architecture: same widths, depth, heads, eps, no dropout."""
    from transformers import ViTConfig as HFConfig
    from transformers import ViTForImageClassification

    hf = HFConfig(
        image_size=cfg.img_size,
        patch_size=cfg.patch_size,
        num_channels=3,
        hidden_size=cfg.embed_dim,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads,
        intermediate_size=int(cfg.embed_dim * cfg.mlp_ratio),
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=1e-6,
        qkv_bias=True,
        num_labels=10,
        attn_implementation="sdpa",
    )
    model = ViTForImageClassification(hf)

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(pixel_values=x).logits

    return Wrapped()


class Loop:
    """The trainer's step (same order of work as `Trainer.run`), timed in parts."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, data: ImageDataset) -> None:
        self.model, self.cfg, self.data = model.train(), cfg, data
        self.opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.g = torch.Generator().manual_seed(0)
        self.order = torch.randperm(len(data), generator=self.g)
        self.pos = 0
        self.data_s = 0.0
        self.total_s = 0.0
        self.images = 0

    def step(self) -> None:
        cfg = self.cfg
        t0 = time.perf_counter()
        if self.pos + BATCH > len(self.data):
            self.pos = 0
        idx = self.order[self.pos : self.pos + BATCH]
        self.pos += BATCH
        x, y = self.data.images[idx], self.data.labels[idx]
        x = normalize_batch(augment_batch(x, self.g, padding=cfg.crop_padding, flip=cfg.hflip), cfg.mean, cfg.std)
        t1 = time.perf_counter()
        loss = F.cross_entropy(self.model(x), y, label_smoothing=cfg.label_smoothing)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        loss.item()
        t2 = time.perf_counter()
        self.data_s += t1 - t0
        self.total_s += t2 - t0
        self.images += BATCH

    def timed(self, steps: int) -> float:
        """Images/s over `steps` steps."""
        t = time.perf_counter()
        for _ in range(steps):
            self.step()
        return steps * BATCH / (time.perf_counter() - t)


def compare(name: str, cfg: TrainConfig, data: ImageDataset, steps: int, rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    ours = Loop(VisionTransformer(cfg.vit_config(10)), cfg, data)
    theirs = Loop(hf_model(cfg), cfg, data)
    for loop in (ours, theirs):  # warm-up: allocator, kernels
        loop.timed(2)
        loop.data_s = loop.total_s = 0.0
        loop.images = 0
    r_ours, r_hf, ratios = [], [], []
    for i in range(rounds):
        pair = (ours, theirs) if i % 2 == 0 else (theirs, ours)
        rates = {id(loop): loop.timed(steps) for loop in pair}
        r_ours.append(rates[id(ours)])
        r_hf.append(rates[id(theirs)])
        ratios.append(rates[id(ours)] / rates[id(theirs)])
    res = {
        "ours_img_s": statistics.median(r_ours),
        "hf_img_s": statistics.median(r_hf),
        "ratio": statistics.median(ratios),
        "data_share": ours.data_s / ours.total_s,
        "params": sum(p.numel() for p in ours.model.parameters()),
    }
    print(
        f"{name:8s} p{cfg.patch_size} D{cfg.embed_dim} L{cfg.depth} ({res['params'] / 1e6:.2f}M): "
        f"ours {res['ours_img_s']:7.1f} img/s | transformers {res['hf_img_s']:7.1f} img/s | "
        f"ours/transformers {res['ratio']:.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)}) | "
        f"data share of our step {res['data_share']:.2%}",
        flush=True,
    )
    return res


def augmentation_speed(data: ImageDataset, seconds: float = 3.0) -> tuple[float, float]:
    """(batch-wise tensor images/s, per-image PIL images/s) for crop(pad 4) + flip + normalise."""
    g = torch.Generator().manual_seed(0)
    n = 0
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        idx = torch.randint(0, len(data), (BATCH,), generator=g)
        normalize_batch(augment_batch(data.images[idx], g), CIFAR10_MEAN, CIFAR10_STD)
        n += BATCH
    tensor_rate = n / (time.perf_counter() - t)
    n = 0
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:  # the same plus Mixup/CutMix on every batch (run 5's extras)
        idx = torch.randint(0, len(data), (BATCH,), generator=g)
        mix_batch(normalize_batch(augment_batch(data.images[idx], g), CIFAR10_MEAN, CIFAR10_STD), g)
        n += BATCH
    mixed_rate = n / (time.perf_counter() - t)

    pil = [Image.fromarray(data.images[i].permute(1, 2, 0).numpy()) for i in range(512)]
    mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(3, 1, 1)
    rng = random.Random(0)
    n = 0
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        batch = []
        for _ in range(BATCH):
            im = ImageOps.expand(pil[rng.randrange(len(pil))], border=4, fill=0)
            ox, oy = rng.randint(0, 8), rng.randint(0, 8)
            im = im.crop((ox, oy, ox + 32, oy + 32))
            if rng.random() < 0.5:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
            batch.append((x - mean) / std)
        torch.stack(batch)
        n += BATCH
    pil_rate = n / (time.perf_counter() - t)
    print(
        f"augmentation (pad-4 crop + flip + normalise, batch {BATCH}): batch-wise tensors {tensor_rate:,.0f} img/s | "
        f"per-image PIL {pil_rate:,.0f} img/s | {tensor_rate / pil_rate:.1f}x",
        flush=True,
    )
    print(f"  with Mixup/CutMix on every batch as well: batch-wise tensors {mixed_rate:,.0f} img/s", flush=True)
    return tensor_rate, pil_rate


def time_to_accuracy(path: Path) -> None:
    if not path.is_file():
        print(
            f"time to accuracy: no {path} (run: python -m vit_core.train --preset quick --data data/cifar10 --out {path.parent})"
        )
        return
    doc = json.loads(path.read_text())
    cfg = doc["config"]
    print(
        f"time to accuracy: {path} ({cfg['name']}, p{cfg['patch_size']} D{cfg['embed_dim']} L{cfg['depth']}, "
        f"{cfg['epochs']} epochs, {doc['train_images_per_s']} img/s average, {doc['threads']} threads; "
        f"training time excludes evaluation)"
    )
    first_60 = None
    for h in doc["history"]:
        print(f"  {h['elapsed_s'] / 60:6.2f} min  epoch {h['epoch']:5.2f}  test acc {h['acc']:.2%}")
        if first_60 is None and h["acc"] >= 0.60:
            first_60 = h["elapsed_s"]
    if first_60 is not None:
        print(f"  60% test accuracy after {first_60 / 60:.1f} min of training")
    else:
        print("  60% test accuracy not reached")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per model")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--presets", default="quick,bundled")
    p.add_argument("--metrics", default="runs/quick/metrics.json", help="a CLI run's metrics JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.1f} (other processes share this CPU), batch {BATCH}, fp32",
        flush=True,
    )
    g = torch.Generator().manual_seed(0)
    data = ImageDataset(
        torch.randint(0, 256, (4096, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (4096,), generator=g),
        [str(i) for i in range(10)],
    )
    for name in args.presets.split(","):
        compare(name, PRESETS[name], data, args.steps, args.rounds)
    augmentation_speed(data)
    time_to_accuracy(Path(args.metrics))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
