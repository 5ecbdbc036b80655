"""Training a ViT on an in-memory image dataset: the config and a trainer any front end can drive.

    from vit_core.sources import load_split
    from vit_core.train import PRESETS, Trainer

    cfg = PRESETS["quick"].replace(epochs=3)            # or TrainConfig(...)
    trainer = Trainer(cfg, load_split(src, "train"), load_split(src, "test"),
                      out_dir="runs/quick",              # None: nothing written to disk
                      on_step=lambda m: ..., on_eval=lambda r: ...)
    thread = threading.Thread(target=trainer.run, daemon=True); thread.start()
    trainer.pause(); trainer.unpause()                   # the loop waits between steps
    trainer.request_stop()                               # honoured before the next step
    result = trainer.result                              # TrainResult once run() returns

* `on_step(StepMetrics)` is called after every optimiser step and `on_eval(EvalResult)` after
  every evaluation. Both run on the training thread: keep them short (copy into a queue or
  `st.session_state`).
* `run()` trains until the schedule ends, `request_stop()` is called, or the loss becomes
  NaN/inf, and returns a `TrainResult` with `status` "finished", "stopped" or "diverged".
* With `out_dir`, the trainer writes `last.pt` (full training state for an exact resume: model,
  AdamW state, step, RNG states) at every evaluation, on stop and at the end,
  `best.safetensors` (model only) whenever the test accuracy improves, `model.safetensors` at
  the end, and `metrics.json`. A diverged run keeps the last good `last.pt`.
* `Trainer.resume(path, train, test, ...)` continues a run from `last.pt` with the same batches,
  augmentations and learning rates as an uninterrupted run (same device and thread count);
  `config_changes={"epochs": ...}` moves the end of the cosine.
* `export_path=...` also writes the model as float16 there whenever it beats the test accuracy
  recorded in the file already there (how `assets/vit_cifar10.safetensors` is made).
* Data order and augmentation follow from (seed, epoch) and (seed, step), so a resumed run sees
  the same batches. Device "auto" picks CUDA, then Apple MPS, then CPU; bf16 autocast only on CUDA.

Evaluation is in `vit_core.evaluation`, export in `vit_core.export`, the command line in
`vit_core.cli`: `python -m vit_core.train --preset quick --data data/cifar10 --out runs/quick`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batches import augment_batch, iterate_batches, mix_batch, normalize_batch
from .checkpoints import load_checkpoint, save_checkpoint
from .cnn import CNN_ARCH, CNN_PRESETS, CNNConfig, build_model
from .config import CIFAR10_MEAN, CIFAR10_STD, ViTConfig
from .data import ImageDataset
from .devices import resolve_device
from .errors import CheckpointError, DataError
from .evaluation import EvalResult, eval_result, evaluate
from .export import exported_accuracy, save_float16
from .fileio import atomic_write
from .subsets import balanced_subset

ARCHS = ("vit", CNN_ARCH)
STATE_FORMAT = "vit-explorer-train/1"


@dataclass
class TrainConfig:
    """Model shape, optimisation and bookkeeping of a training run."""

    # model: a plain ViT (patch embedding, [CLS] token, learned positions)
    img_size: int = 32  # input side in pixels (images are this size already)
    patch_size: int = 4  # patch side P; tokens = (img_size / P)^2 + 1
    embed_dim: int = 192  # token width D
    depth: int = 6  # transformer blocks L
    num_heads: int = 4  # attention heads
    mlp_ratio: float = 2.0  # MLP hidden width / D
    # ViT variants (the ablations of the Experiments page); the defaults are the plain ViT above
    pos_embed_type: str = "learned"  # "learned", "sincos" (fixed 2-D sine-cosine) or "none" (no positions)
    global_pool: str = "token"  # read-out: "token" (the [CLS] token) or "avg" (mean of the patch tokens)
    class_token: bool = True  # prepend a [CLS] token (global_pool "token" needs it)
    reg_tokens: int = 0  # register tokens after the [CLS] token (Darcet et al. 2023)
    # or the CNN baseline instead of a ViT (vit_core.cnn), trained with the same recipe and data
    arch: str = "vit"  # "vit", or "resnet": the ResNet of `cnn_preset` (the ViT shape fields are then unused)
    cnn_preset: str = "quick"  # a key of vit_core.cnn.CNN_PRESETS ("quick" ~0.55M, "bundled" ~1.8M parameters)
    # data budget
    train_size: int = 0  # training images: 0 = all; else a class-balanced subset, fixed by `seed`
    # optimisation
    epochs: float = 30.0  # length of the schedule, in passes over the training set
    batch_size: int = 128  # images per step
    lr: float = 1e-3  # peak learning rate of AdamW
    min_lr: float = 1e-5  # learning rate at the end of the cosine
    warmup_epochs: float = 1.0  # linear warmup from 0 to `lr`
    weight_decay: float = 0.05  # AdamW decoupled decay (weights only; not biases, norms, tokens)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    label_smoothing: float = 0.1  # cross-entropy label smoothing
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    # augmentation (batch-wise, on the device)
    random_crop: bool = True  # random crop after zero padding
    crop_padding: int = 4  # pixels of padding for the random crop
    hflip: bool = True  # random horizontal flip
    # regularisation against overfitting (all off by default; see mix_batch and Block.drop_path)
    mixup_alpha: float = 0.0  # Mixup with lam ~ Beta(a, a); 0 = off
    cutmix_alpha: float = 0.0  # CutMix with lam ~ Beta(a, a); 0 = off
    mix_prob: float = 1.0  # share of steps whose batch is mixed (when an alpha is on)
    mix_switch_prob: float = 0.5  # with both on: chance a mixed batch gets CutMix, not Mixup
    drop_path: float = 0.0  # stochastic depth of the last block (DropPath); block i gets drop_path * i / (depth - 1)
    mean: tuple[float, ...] = CIFAR10_MEAN  # normalisation, per channel, of images in [0, 1]
    std: tuple[float, ...] = CIFAR10_STD
    # bookkeeping
    seed: int = 0  # model init, data order and augmentation all follow from it
    device: str = "auto"  # "auto" (CUDA, then Apple MPS, then CPU), or a torch device string
    amp: str = "auto"  # "auto": bf16 autocast on CUDA only (slower on CPU); "bf16" or "off"
    eval_every: int = 0  # evaluate every this many steps; 0 = once per epoch
    eval_batch_size: int = 500  # images per forward pass when evaluating
    name: str = "ViT-CIFAR10"  # the model's menu name in exported checkpoints
    init_from: str = ""  # start from these weights (a checkpoint of the same shape), not at random

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), not {self.drop_path}")
        if not 0.0 <= self.mix_prob <= 1.0 or not 0.0 <= self.mix_switch_prob <= 1.0:
            raise ValueError("mix_prob and mix_switch_prob must be in [0, 1]")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError("mixup_alpha and cutmix_alpha must be >= 0 (0 turns them off)")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, not {self.arch!r}")
        if self.cnn_preset not in CNN_PRESETS:
            raise ValueError(f"cnn_preset must be one of {sorted(CNN_PRESETS)}, not {self.cnn_preset!r}")
        if isinstance(self.train_size, bool) or not isinstance(self.train_size, int) or self.train_size < 0:
            raise ValueError(
                f"train_size must be 0 (all images) or a positive number of images, not {self.train_size!r}"
            )

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known})

    def steps(self, train_size: int) -> tuple[int, int]:
        """(steps per epoch, total steps) of this schedule on `train_size` images (a last partial batch is dropped)."""
        per_epoch = max(1, train_size // self.batch_size)
        return per_epoch, max(1, int(round(self.epochs * per_epoch)))

    def model_config(self, num_classes: int, in_chans: int = 3) -> ViTConfig | CNNConfig:
        """The architecture (and preprocessing) this run trains: a ViT's or, with arch "resnet", a CNN's."""
        if self.arch == CNN_ARCH:
            name = CNN_PRESETS[self.cnn_preset].name if self.name.startswith("ViT") else self.name
            return CNN_PRESETS[self.cnn_preset].replace(
                img_size=(self.img_size, self.img_size),
                in_chans=in_chans,
                num_classes=num_classes,
                mean=self.mean,
                std=self.std,
                crop_pct=1.0,
                interpolation="bicubic",
                name=name,
            )
        return self.vit_config(num_classes, in_chans)

    def vit_config(self, num_classes: int, in_chans: int = 3) -> ViTConfig:
        """The ViT this run trains (whatever `arch` says)."""
        prefix = int(self.class_token) + self.reg_tokens
        return ViTConfig(
            img_size=self.img_size,
            patch_size=self.patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            mean=self.mean,
            std=self.std,
            crop_pct=1.0,
            interpolation="bicubic",
            name=self.name,
            drop_path_rate=self.drop_path,
            pos_embed_type=self.pos_embed_type,
            global_pool=self.global_pool,
            class_token=self.class_token,
            reg_tokens=self.reg_tokens,
            # fixed sine-cosine positions are for patches only: prefix tokens then get none
            no_embed_class=self.pos_embed_type == "sincos" and prefix > 0,
        )


# One line per preset; measured times and the history of the bundled model's runs: assets/README.md, "Presets".
PRESETS: dict[str, TrainConfig] = {
    # for a lesson: past 50% CIFAR-10 test accuracy in about 3 minutes of training on one core of a
    # 2-core CPU, the row/column structure of the position embeddings visible from the first quarter
    # (benchmarks/bench_train_demo.py; the curve is in assets/README.md). Two blocks and no random
    # crop: a short schedule learns most per second from a shallow model and unshifted images.
    "demo": TrainConfig(
        patch_size=4,
        embed_dim=64,
        depth=2,
        num_heads=4,
        mlp_ratio=2.0,
        epochs=2.0,
        batch_size=64,
        lr=3e-3,
        warmup_epochs=0.1,
        label_smoothing=0.0,
        random_crop=False,
        name="ViT-CIFAR10 (demo)",
    ),
    # about 60% CIFAR-10 test accuracy after 10 minutes of training on a 2-core CPU
    "quick": TrainConfig(
        patch_size=4,
        embed_dim=128,
        depth=4,
        num_heads=4,
        mlp_ratio=2.0,
        epochs=5,
        batch_size=128,
        lr=1.5e-3,
        warmup_epochs=0.3,
        eval_every=195,
        name="ViT-CIFAR10 (quick)",
    ),
    # the first of the runs that made the bundled model in assets/
    "bundled": TrainConfig(
        patch_size=4,
        embed_dim=192,
        depth=6,
        num_heads=4,
        mlp_ratio=2.0,
        epochs=4,
        batch_size=128,
        lr=1.5e-3,
        warmup_epochs=0.5,
        name="ViT-CIFAR10 (bundled)",
    ),
    # the bundled shape for 100 epochs with the regularisation of its last runs (not run from scratch)
    "long": TrainConfig(
        patch_size=4,
        embed_dim=192,
        depth=6,
        num_heads=4,
        mlp_ratio=2.0,
        epochs=100,
        batch_size=128,
        lr=1e-3,
        warmup_epochs=5.0,
        mixup_alpha=0.8,
        cutmix_alpha=1.0,
        mix_prob=0.8,
        drop_path=0.1,
        name="ViT-CIFAR10 (long)",
    ),
}


@dataclass
class StepMetrics:
    """What one optimiser step reports."""

    step: int  # steps done so far (1 after the first)
    total_steps: int
    epoch: float  # fractional epochs done
    loss: float  # training loss of this batch (with label smoothing)
    acc: float  # training accuracy of this (augmented) batch; a mixed batch counts its own labels
    lr: float  # learning rate used for this step
    images_per_s: float  # smoothed training throughput (evaluation time excluded)
    eta_s: float  # estimated seconds until the schedule ends
    elapsed_s: float  # training seconds so far (evaluation excluded)


@dataclass
class TrainResult:
    """How a run ended."""

    status: str  # "finished", "stopped" or "diverged"
    message: str
    step: int
    final: EvalResult | None
    history: list[EvalResult] = field(default_factory=list)
    best_acc: float = 0.0


def lr_at(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Linear warmup to `cfg.lr`, then cosine down to `cfg.min_lr` at `total_steps`."""
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, total_steps - warm))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * t))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices and conv kernels, none on biases, norms and tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name in ("cls_token", "pos_embed", "dist_token", "reg_token"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def read_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """The training state `Trainer.save_state` wrote at `path`.

    Raises:
        CheckpointError: no file, an unreadable one, or not a training state of this trainer.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"No training checkpoint at {path}.") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise CheckpointError(f"{path} is not a readable training checkpoint: {e}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a vit_core training checkpoint.")
    return state


def training_subset(train: ImageDataset, size: int, seed: int) -> ImageDataset:
    """The class-balanced `size` images a run with `train_size=size` and `seed` trains on
    (`vit_core.subsets.balanced_subset`: deterministic, nested across sizes).

    Raises:
        DataError: the dataset cannot give `size` balanced images.
    """
    try:
        idx = balanced_subset(train.labels, size, seed, train.num_classes)
    except ValueError as e:
        raise DataError(f"train_size {size}: {e}") from None
    sub = train.subset(idx)
    sub.source = f"{train.source} (balanced subset of {size}, seed {seed})" if train.source else sub.source
    return sub


class Diverged(Exception):
    """The loss or the gradient norm stopped being finite (the message says which, and where)."""


class Trainer:
    """Trains a `VisionTransformer` on in-memory data; drive it from a thread with `run()`.

    Args:
        cfg: the run's configuration.
        train: training data (uint8 images, labels).
        test: evaluation data, or None to skip evaluation.
        out_dir: where checkpoints and metrics go; None writes nothing.
        on_step: called with `StepMetrics` after every step.
        on_eval: called with `EvalResult` after every evaluation.
        on_message: called with short human-readable lines (checkpoint written, diverged, ...).
        export_path: also write the model (model-only safetensors) here whenever its test accuracy
            beats the accuracy recorded in the file already there (so a new run never replaces a
            better exported model with a worse one).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        train: ImageDataset,
        test: ImageDataset | None = None,
        out_dir: str | os.PathLike | None = None,
        on_step: Callable[[StepMetrics], None] | None = None,
        on_eval: Callable[[EvalResult], None] | None = None,
        on_message: Callable[[str], None] | None = None,
        export_path: str | os.PathLike | None = None,
    ) -> None:
        if len(train) < cfg.batch_size:
            raise DataError(f"The training set has {len(train)} images, fewer than one batch of {cfg.batch_size}.")
        if train.image_size != (cfg.img_size, cfg.img_size):
            raise DataError(f"Images are {train.image_size}, but the config expects {cfg.img_size}x{cfg.img_size}.")
        if cfg.train_size and cfg.train_size != len(train):
            train = training_subset(train, cfg.train_size, cfg.seed)
            if len(train) < cfg.batch_size:
                raise DataError(f"train_size {cfg.train_size} is fewer images than one batch of {cfg.batch_size}.")
        self.cfg = cfg
        self.train_data = train
        self.test_data = test
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.export_path = Path(export_path) if export_path is not None else None
        self.on_step, self.on_eval, self.on_message = on_step, on_eval, on_message
        self.device = resolve_device(cfg.device)
        self.autocast_dtype = self._autocast_dtype()
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model_config(train.num_classes, int(train.images.shape[1])), train.class_names)
        if cfg.init_from:
            self._init_weights(cfg.init_from)
        self.model.to(self.device)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.steps_per_epoch, self.total_steps = cfg.steps(len(train))
        self.eval_every = cfg.eval_every or self.steps_per_epoch
        self.step = 0
        self.train_seconds = 0.0
        self.history: list[EvalResult] = []
        self.best_acc = -1.0
        self.result: TrainResult | None = None
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._loss_since_eval: list[float] = []
        self._last_good_step: int | None = None

    def _init_weights(self, path: str) -> None:
        """Warm start: copy every weight from `path`, which must hold a model of exactly this shape."""
        src = load_checkpoint(path)
        mine, theirs = self.model.state_dict(), src.state_dict()
        wrong = sorted(
            k for k in set(mine) | set(theirs) if k not in mine or k not in theirs or mine[k].shape != theirs[k].shape
        )
        if wrong:
            raise CheckpointError(
                f"{path} does not have the shape of the configured model ({len(wrong)} tensors differ, "
                f"first {wrong[0]}); set the model options to its shape or leave init_from empty."
            )
        generic = [f"class {i}" for i in range(len(src.class_names))]
        if src.class_names != generic and list(src.class_names) != list(self.train_data.class_names):
            raise CheckpointError(f"{path} was trained on other classes: {src.class_names[:5]}...")
        self.model.load_state_dict({k: v.float() for k, v in theirs.items()})

    def _autocast_dtype(self) -> torch.dtype | None:
        amp = self.cfg.amp
        if amp == "off":
            return None
        if amp == "bf16":
            return torch.bfloat16
        if amp == "auto" and self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None

    # -- control from another thread ---------------------------------------------------

    def request_stop(self) -> None:
        """Ask the loop to stop; it does so before the next step (and saves `last.pt`)."""
        self._stop.set()
        self._running.set()

    def pause(self) -> None:
        """Hold the loop between steps until `unpause()` (or `request_stop()`)."""
        self._running.clear()

    def unpause(self) -> None:
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    # -- the loop ------------------------------------------------------------------------

    def _epoch_order(self, epoch: int) -> Tensor:
        # The order of epoch e depends only on (seed, e), so a resumed run sees the same batches.
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.train_data), generator=g)

    def _step_generator(self, step: int) -> torch.Generator:
        # Augmentation randomness of step s depends only on (seed, s): exact resume for free.
        return torch.Generator().manual_seed((self.cfg.seed + 1) * 7_919_993 + step)

    def run(self) -> TrainResult:
        """Train until the schedule ends, a stop request, or a non-finite loss."""
        self.model.train()
        ema_rate: float | None = None
        status, message = "finished", ""
        if self.step == 0 and self.out_dir is not None:
            self.save_state()  # a good checkpoint exists from the start
        while self.step < self.total_steps and status == "finished" and not self._stop.is_set():
            epoch = self.step // self.steps_per_epoch
            start = self.step - epoch * self.steps_per_epoch
            batches = iterate_batches(
                self.train_data, self.cfg.batch_size, self._epoch_order(epoch), start=start, drop_last=True
            )
            for x, y in batches:
                if not self._running.is_set():
                    self._say("paused")
                    self._running.wait()
                if self._stop.is_set() or self.step >= self.total_steps:
                    break
                t0 = time.perf_counter()
                try:
                    loss, acc, lr = self.train_step(x, y)
                except Diverged as e:
                    status, message = "diverged", str(e)
                    break
                dt = time.perf_counter() - t0
                self.train_seconds += dt
                rate = x.shape[0] / max(dt, 1e-9)
                ema_rate = rate if ema_rate is None else 0.9 * ema_rate + 0.1 * rate
                self._loss_since_eval.append(loss)
                if self.on_step:
                    self.on_step(self._step_metrics(loss, acc, lr, ema_rate))
                if self.step % self.eval_every == 0 or self.step == self.total_steps:
                    self._evaluate_and_checkpoint()
        return self._finish(status, message)

    def train_step(self, x: Tensor, y: Tensor) -> tuple[float, float, float]:
        """One optimiser step on a batch: augment, (mix), forward, loss, backward, clip, AdamW.

        Args:
            x: (B, C, H, W) uint8 images, on any device.
            y: (B,) labels.

        Returns:
            (loss, accuracy on the batch, learning rate used).

        Raises:
            Diverged: the loss or the gradient norm is not finite (the weights are not updated).
        """
        cfg, model, opt = self.cfg, self.model, self.optimizer
        g = self._step_generator(self.step)
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if cfg.random_crop or cfg.hflip:
            x = augment_batch(x, g, padding=cfg.crop_padding if cfg.random_crop else 0, flip=cfg.hflip)
        x = normalize_batch(x, cfg.mean, cfg.std)  # (B, C, H, W) float32
        lam, y_mix = 1.0, y
        if (cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0) and torch.rand(1, generator=g).item() < cfg.mix_prob:
            x, lam = mix_batch(x, g, cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_switch_prob)
            y_mix = y.flip(0)  # mix_batch pairs image i with image B-1-i
        lr = lr_at(cfg, self.step, self.total_steps, self.steps_per_epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            logits = model(x)  # (B, num_classes)
        logits = logits.float()
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        if lam < 1.0:  # cross-entropy is linear in the target: the mixed label's loss
            loss = lam * loss + (1.0 - lam) * F.cross_entropy(logits, y_mix, label_smoothing=cfg.label_smoothing)
        loss_v = loss.item()
        if not math.isfinite(loss_v):
            raise Diverged(self._diverged_message("loss", loss_v))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            gnorm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if not torch.isfinite(gnorm):
                raise Diverged(self._diverged_message("gradient norm", gnorm.item()))
        opt.step()
        self.step += 1
        return loss_v, (logits.argmax(-1) == y).float().mean().item(), lr

    def _step_metrics(self, loss: float, acc: float, lr: float, images_per_s: float) -> StepMetrics:
        remaining = (self.total_steps - self.step) * self.cfg.batch_size / max(images_per_s, 1e-9)
        return StepMetrics(
            step=self.step,
            total_steps=self.total_steps,
            epoch=self.step / self.steps_per_epoch,
            loss=loss,
            acc=acc,
            lr=lr,
            images_per_s=images_per_s,
            eta_s=remaining,
            elapsed_s=self.train_seconds,
        )

    def _finish(self, status: str, message: str) -> TrainResult:
        """Save what a stop or the end leaves behind, and record the result."""
        if status == "finished" and self._stop.is_set() and self.step < self.total_steps:
            status = "stopped"
            message = f"Stopped at step {self.step} of {self.total_steps}."
            if self.out_dir is not None:
                self.save_state()
                message += f" Resume from {self.out_dir / 'last.pt'}."
        final = self.history[-1] if self.history else None
        if status == "finished":
            if final is None or final.step != self.step:
                final = self._evaluate_and_checkpoint()
            message = f"Finished {self.total_steps} steps" + (f": test accuracy {final.acc:.2%}." if final else ".")
            if self.out_dir is not None:
                save_checkpoint(self.model, self.out_dir / "model.safetensors", extra=self._provenance(final))
        self._say(message)
        self.result = TrainResult(status, message, self.step, final, list(self.history), max(self.best_acc, 0.0))
        self._write_metrics()
        return self.result

    def _say(self, msg: str) -> None:
        if self.on_message:
            self.on_message(msg)

    def _diverged_message(self, what: str, value: float) -> str:
        where = (
            f"; the last good checkpoint (step {self._last_good_step}) is kept at {self.out_dir / 'last.pt'}"
            if self.out_dir is not None and self._last_good_step is not None
            else ""
        )
        return (
            f"The {what} became {value} at step {self.step + 1}: training diverged and was stopped{where}. "
            "Lower the learning rate or keep gradient clipping on."
        )

    # -- evaluation ----------------------------------------------------------------------

    def _evaluate_and_checkpoint(self) -> EvalResult | None:
        train_loss = sum(self._loss_since_eval) / len(self._loss_since_eval) if self._loss_since_eval else float("nan")
        self._loss_since_eval = []
        res = None
        if self.test_data is not None:
            res = self.evaluate(self.test_data, train_loss=train_loss)
            self.history.append(res)
            if res.acc > self.best_acc:
                self.best_acc = res.acc
                if self.out_dir is not None:
                    save_checkpoint(self.model, self.out_dir / "best.safetensors", extra=self._provenance(res))
                if self.export_path is not None and res.acc > exported_accuracy(self.export_path):
                    save_float16(self.model, self.export_path, self._provenance(res))
                    self._say(f"exported {self.export_path} (test accuracy {res.acc:.2%})")
            if self.on_eval:
                self.on_eval(res)
        if self.out_dir is not None:
            self.save_state()
            self._write_metrics()
        return res

    def evaluate(self, dataset: ImageDataset, train_loss: float = float("nan")) -> EvalResult:
        """Accuracy, loss, per-class accuracy and confusion matrix of the current model."""
        cfg = self.cfg
        acc, loss, conf, _, _ = evaluate(
            self.model, dataset, cfg.mean, cfg.std, cfg.eval_batch_size, self.device, self.autocast_dtype
        )
        epoch = self.step / self.steps_per_epoch
        return eval_result(conf, acc, loss, self.step, epoch, dataset.class_names, self.train_seconds, train_loss)

    def _provenance(self, res: EvalResult | None) -> dict[str, Any]:
        return {
            "trained_by": "vit_core.train",
            "train_config": self.cfg.to_dict(),
            "train_data": self.train_data.source,
            "train_images": len(self.train_data),
            "test_data": self.test_data.source if self.test_data is not None else None,
            "test_acc": res.acc if res else None,
            "step": self.step,
            "epoch": round(self.step / self.steps_per_epoch, 3),
            "train_seconds": round(self.train_seconds, 1),
        }

    # -- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs; only tensors and plain containers (weights_only-safe)."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": STATE_FORMAT,
            "config": self.cfg.to_dict(),
            "class_names": list(self.train_data.class_names),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "train_seconds": self.train_seconds,
            "best_acc": self.best_acc,
            "history": [h.to_dict() for h in self.history],
            "rng": rng,
        }

    def save_state(self, path: str | os.PathLike | None = None) -> Path:
        """Write the training state atomically (default `out_dir/last.pt`)."""
        if path is None:
            if self.out_dir is None:
                raise ValueError("no out_dir and no path given")
            path = self.out_dir / "last.pt"
        with atomic_write(path) as tmp:
            torch.save(self.state_dict(), tmp)
        self._last_good_step = self.step
        return Path(path)

    def load_state(self, path: str | os.PathLike) -> None:
        """Restore a state written by `save_state` into this trainer (same config shape)."""
        self._restore(read_train_state(path), path)

    def _restore(self, state: dict[str, Any], path: str | os.PathLike) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path} does not fit the configured model: {e}") from None
        self.step = int(state["step"])
        self.train_seconds = float(state["train_seconds"])
        self.best_acc = float(state["best_acc"])
        self.history = [EvalResult(**h) for h in state["history"]]
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self._last_good_step = self.step

    @classmethod
    def resume(
        cls,
        path: str | os.PathLike,
        train: ImageDataset,
        test: ImageDataset | None = None,
        out_dir: str | os.PathLike | None = None,
        config_changes: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Trainer:
        """A trainer that continues the run saved at `path` (its config, unless changed).

        `config_changes` may change bookkeeping (device, eval_every) or lengthen `epochs`;
        changing the model shape fails with a `CheckpointError`.
        """
        state = read_train_state(path)
        cfg = TrainConfig.from_dict(state["config"])
        if config_changes:
            cfg = cfg.replace(**config_changes)
        # the weights come from the checkpoint: no warm start to read (its file may be gone)
        out_dir = out_dir if out_dir is not None else Path(path).parent
        trainer = cls(cfg.replace(init_from=""), train, test, out_dir=out_dir, **kwargs)
        trainer.cfg = cfg
        trainer._restore(state, path)
        return trainer

    def _write_metrics(self) -> None:
        if self.out_dir is None:
            return
        final = self.result.final if self.result else (self.history[-1] if self.history else None)
        doc = {
            "config": self.cfg.to_dict(),
            "status": self.result.status if self.result else "running",
            "message": self.result.message if self.result else "",
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": self.step / self.steps_per_epoch,
            "train_seconds": round(self.train_seconds, 1),
            "train_images_per_s": round(self.step * self.cfg.batch_size / max(self.train_seconds, 1e-9), 1),
            "params": self.model.num_params(),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "train_data": self.train_data.source,
            "test_data": self.test_data.source if self.test_data is not None else None,
            "best_acc": max(self.best_acc, 0.0),
            "final": final.to_dict() if final else None,
            "history": [
                {k: v for k, v in h.to_dict().items() if k not in ("confusion", "per_class_acc", "class_names")}
                for h in self.history
            ],
        }
        with atomic_write(self.out_dir / "metrics.json") as tmp:
            tmp.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    from .cli import main

    raise SystemExit(main())
