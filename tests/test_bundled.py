"""The bundled CIFAR-10 model in assets/: loadable, and its recorded evaluation consistent with itself.

The accuracy itself is measured on the CIFAR-10 test images, which tests do not have (see
assets/README.md for the command); here the file, its metadata and its metrics file must agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from vit_core import CIFAR10_CLASSES, load_checkpoint

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MODEL = ASSETS / "vit_cifar10.safetensors"
METRICS = ASSETS / "vit_cifar10.metrics.json"

pytestmark = pytest.mark.skipif(not MODEL.exists(), reason="no bundled model in assets/")


def test_bundled_model_loads_as_the_readme_says() -> None:
    m = load_checkpoint(MODEL)
    cfg = m.cfg
    assert m.class_names == list(CIFAR10_CLASSES)
    assert (cfg.img_size, cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.num_heads) == ((32, 32), 4, 192, 6, 4)
    assert m.head.weight.dtype == torch.float32  # stored as float16, cast on load
    with safe_open(str(MODEL), "pt") as f:
        assert f.get_tensor("head.weight").dtype == torch.float16
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        p = m(x).softmax(-1)
    assert p.shape == (2, 10) and torch.allclose(p.sum(-1), torch.ones(2))


def test_recorded_evaluation_is_consistent() -> None:
    doc = json.loads(METRICS.read_text())
    conf = np.asarray(doc["confusion"])
    assert conf.shape == (10, 10) and conf.sum() == doc["test_images"] == 10_000
    assert conf.sum(1).tolist() == [1000] * 10  # CIFAR-10's test split: 1000 per class
    assert doc["test_acc"] == pytest.approx(conf.trace() / conf.sum(), abs=1e-4)
    per_class = [doc["per_class_acc"][c] for c in CIFAR10_CLASSES]
    assert per_class == pytest.approx((conf.diagonal() / 1000).tolist(), abs=1e-6)
    with safe_open(str(MODEL), "pt") as f:
        extra = json.loads(f.metadata()["extra"])
    # the file's own record (the fp32 run) and the evaluation of the fp16 file agree to rounding
    assert abs(extra["test_acc"] - doc["test_acc"]) <= 0.003
    assert extra["step"] == doc["step"]
    assert load_checkpoint(MODEL).num_params() == doc["params"]
