"""Tiny generated datasets and a tiny training config for the Train-page tests (seconds, not minutes)."""

from __future__ import annotations

import io
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vit_core.train import TrainConfig

COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40)]


def make_image_folder(
    root: Path,
    classes: int = 3,
    train_per_class: int = 24,
    test_per_class: int = 8,
    size: int = 32,
    seed: int = 0,
    fmt: str = "png",
) -> Path:
    """`root/{train,test}/class<k>/NNN.png` (or .jpg): noisy images of one colour per class (easy to learn)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = np.clip(rng.normal(0, 40, (size, size, 3)) + np.array(COLOURS[c % len(COLOURS)]), 0, 255)
                Image.fromarray(a.astype(np.uint8)).save(d / f"{i:03d}.{fmt}")
    return root


def tiny_config(**changes) -> TrainConfig:
    """A ViT of ~15k parameters: a training step takes milliseconds on a CPU."""
    cfg = TrainConfig(
        patch_size=8,
        embed_dim=32,
        depth=1,
        num_heads=2,
        mlp_ratio=2.0,
        epochs=10,
        batch_size=8,
        lr=2e-3,
        warmup_epochs=1.0,
        eval_batch_size=64,
        name="tiny",
    )
    return cfg.replace(**changes)


def make_jpeg_archive(path: Path, **folder_args) -> Path:
    """A .tar.gz laid out like the offline CIFAR-10 copy: `train/<class>/*.jpg` and `test/<class>/*.jpg` at the top."""
    folder = make_image_folder(path.parent / (path.name + ".src"), fmt="jpg", **folder_args)
    with tarfile.open(path, "w:gz") as tf:
        for split in ("train", "test"):
            tf.add(folder / split, arcname=split)
    return path


def make_cifar_archive(path: Path, per_batch: int = 20, n_test: int = 20, seed: int = 0) -> Path:
    """An archive in the official CIFAR-10 python layout (`cifar-10-batches-py/`), with few images."""
    rng = np.random.default_rng(seed)

    def member(tf: tarfile.TarFile, name: str, obj: object) -> None:
        data = pickle.dumps(obj, protocol=2)
        info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))

    def batch(n: int) -> dict:
        return {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in np.arange(n) % 10],
        }

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for i in range(1, 6):
            member(tf, f"data_batch_{i}", batch(per_batch))
        member(tf, "test_batch", batch(n_test))
        names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
        member(tf, "batches.meta", {b"label_names": names})
    return path


def wait_for(cond, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `cond()` every 10 ms until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
