"""The shipped experiments of the Experiments page: what the runs were and what they measured.

Two groups of short CIFAR-10 runs, all with one recipe (`RECIPE`: the demo ViT's optimiser
settings, `SWEEP_STEPS` steps of `RECIPE.batch_size` images, whatever the training-set size):

* "data_size": the demo ViT and the parameter-matched demo ResNet on class-balanced subsets of
  `DATA_SIZES` images (`TrainConfig.train_size`, seed 0; the subsets are nested);
* "ablation": the demo ViT on `ABLATION_SIZE` images with one thing changed per run (`ABLATIONS`).

Each finished run leaves one small JSON file (`write_result`): accuracy, the run's config and
wall-clock, the machine, and the measures of the trained model on `MEASURE_IMAGES` balanced test
images: for a ViT the Figure 7 numbers of `vit_core.analysis.emergence.emergence_measures`, for
the CNN the effective receptive field by depth (`vit_core.analysis.receptive_field`).
`scripts/sweep.py` runs the plan and skips finished runs; `load_results` reads the files back.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .cnn import is_cnn
from .fileio import atomic_write
from .train import PRESETS, TrainConfig

RESULTS_DIR = Path(__file__).resolve().parent.parent / "assets" / "experiments"
RESULT_FORMAT = "vit-explorer-experiment/1"
SWEEP_STEPS = 300  # optimiser steps of every run (a short schedule: a 2-core CPU, a few minutes a run)
WARMUP_STEPS = 30  # linear warmup, then cosine to min_lr at SWEEP_STEPS
DATA_SIZES = (1000, 5000, 10000)  # training images of the "data_size" runs (50,000 was not run)
ABLATION_SIZE = 10000  # training images of the "ablation" runs
MEASURE_IMAGES = 256  # balanced test images the measures are averaged over
RECIPE = PRESETS["demo"].replace(seed=0, device="cpu", name="ViT-CIFAR10 (demo)")


@dataclass(frozen=True)
class Variant:
    """One ViT ablation: what changes against the baseline, and the question it asks."""

    key: str
    label: str  # short, for tables and legends
    question: str  # the tutorials' claim the run tests, in one sentence
    changes: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields changed


ABLATIONS: tuple[Variant, ...] = (
    Variant("baseline", "baseline (learned positions, [CLS], patch 4, depth 4, width 64)", "The reference run."),
    Variant(
        "pos_none",
        "no position embeddings",
        "Do position embeddings supply the spatial structure?",
        {"pos_embed_type": "none"},
    ),
    Variant(
        "pos_sincos",
        "fixed 2-D sine-cosine positions",
        "Do the positions have to be learned?",
        {"pos_embed_type": "sincos"},
    ),
    Variant(
        "pool_avg",
        "average pooling, no [CLS] token",
        "Does the [CLS] token collect the answer better than an average over the patches?",
        {"global_pool": "avg", "class_token": False},
    ),
    Variant("patch8", "patch 8 (16 tokens)", "How much do smaller patches (more tokens) matter?", {"patch_size": 8}),
    Variant("reg4", "4 register tokens", "Do register tokens change accuracy or attention?", {"reg_tokens": 4}),
    Variant("depth6", "depth 6", "Does one step more depth help on this budget?", {"depth": 6}),
    Variant("width96", "width 96", "Does one step more width help on this budget?", {"embed_dim": 96}),
)
NOT_RUN = (
    "patch size 2 (256 tokens: about 16 times the attention cost of patch 4, too slow for a shared 2-core CPU)",
    "50,000 training images (the full set; at this step budget a run sees 19,200 images, fewer than one epoch)",
)


@dataclass(frozen=True)
class PlannedRun:
    """One run of the sweep: its file name and its training config."""

    key: str  # file stem of its result, e.g. "resnet_n1000" or "vit_n10000_pos_none"
    group: str  # "data_size" or "ablation" (a run can serve both: the ViT baseline at ABLATION_SIZE)
    arch: str  # "vit" or "resnet"
    variant: str  # an ABLATIONS key ("baseline" for every data-size run)
    train_size: int
    config: TrainConfig


def sweep_config(arch: str, train_size: int, changes: dict[str, Any] | None = None) -> TrainConfig:
    """`RECIPE` for `SWEEP_STEPS` steps on `train_size` images (epochs chosen so the step count is exact)."""
    per_epoch = max(1, train_size // RECIPE.batch_size)
    cfg = RECIPE.replace(
        arch=arch,
        cnn_preset="demo",
        train_size=train_size,
        epochs=SWEEP_STEPS / per_epoch,
        warmup_epochs=WARMUP_STEPS / per_epoch,
        eval_every=SWEEP_STEPS,
        name="ResNet-CIFAR10 (demo)" if arch == "resnet" else RECIPE.name,
        **(changes or {}),
    )
    if cfg.steps(train_size)[1] != SWEEP_STEPS:  # pragma: no cover - guarded by a test
        raise AssertionError(f"{cfg.steps(train_size)} steps for {train_size} images")
    return cfg


def sweep_plan() -> list[PlannedRun]:
    """Every run of the shipped experiments, cheapest first within each group."""
    runs: list[PlannedRun] = []
    for n in DATA_SIZES:
        for arch in ("vit", "resnet"):
            runs.append(PlannedRun(f"{arch}_n{n}", "data_size", arch, "baseline", n, sweep_config(arch, n)))
    for v in ABLATIONS[1:]:
        key = f"vit_n{ABLATION_SIZE}_{v.key}"
        runs.append(
            PlannedRun(key, "ablation", "vit", v.key, ABLATION_SIZE, sweep_config("vit", ABLATION_SIZE, v.changes))
        )
    return runs


def baseline_key() -> str:
    """The data-size run that is also the ablations' baseline."""
    return f"vit_n{ABLATION_SIZE}"


def machine_info() -> dict[str, Any]:
    """Where a run ran: cores, load average now, torch threads and versions."""
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        load = None
    return {
        "nproc": os.cpu_count(),
        "load_average": load,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


@torch.no_grad()
def model_measures(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 64) -> dict[str, Any]:
    """What the page compares, for a trained model on preprocessed `images` (N, C, H, W).

    A ViT: `emergence_measures` (mean attention distance and entropy by depth, position
    structure score, logit-lens accuracy by depth). A CNN: the effective receptive field's
    distance in pixels for each feature map (the stem, then every residual block).
    """
    from .analysis.emergence import emergence_measures
    from .analysis.receptive_field import effective_receptive_field

    if is_cnn(model):
        _, dist = effective_receptive_field(model, images, batch_size=batch_size)
        return {"receptive_field_distance": [float(v) for v in dist], "layer_names": model.layer_names()}
    return emergence_measures(model, images, labels, batch_size=batch_size)


def result_path(key: str, folder: str | os.PathLike | None = None) -> Path:
    return Path(folder if folder is not None else RESULTS_DIR) / f"{key}.json"


def write_result(doc: dict[str, Any], folder: str | os.PathLike | None = None) -> Path:
    """Write one run's result atomically (small: floats rounded to 5 digits)."""
    doc = {"format": RESULT_FORMAT, **doc}
    path = result_path(doc["key"], folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(_rounded(doc), indent=1))
    return path


def _rounded(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 5)
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_rounded(x) for x in v]
    return v


def load_results(folder: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Every result file in `folder` (default assets/experiments), by key; unreadable files are skipped."""
    out: dict[str, dict[str, Any]] = {}
    root = Path(folder if folder is not None else RESULTS_DIR)
    if not root.is_dir():
        return out
    for path in sorted(root.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("format") == RESULT_FORMAT and "key" in doc:
            out[str(doc["key"])] = doc
    return out


def data_size_table(results: dict[str, dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Per arch ("vit", "resnet"): (train_size, test accuracy) of the finished data-size runs, by size."""
    table: dict[str, list[tuple[int, float]]] = {"vit": [], "resnet": []}
    for doc in results.values():
        if doc.get("variant") == "baseline" and doc.get("arch") in table and "data_size" in doc.get("groups", []):
            table[doc["arch"]].append((int(doc["train_size"]), float(doc["test_acc"])))
    return {arch: sorted(rows) for arch, rows in table.items()}


def ablation_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per finished ablation run (the baseline first), in `ABLATIONS` order."""
    rows = []
    for v in ABLATIONS:
        key = baseline_key() if v.key == "baseline" else f"vit_n{ABLATION_SIZE}_{v.key}"
        doc = results.get(key)
        if doc is None:
            continue
        m = doc.get("measures", {})
        rows.append(
            {
                "key": v.key,
                "label": v.label,
                "question": v.question,
                "test_acc": float(doc["test_acc"]),
                "params": int(doc["params"]),
                "train_seconds": float(doc.get("train_seconds", float("nan"))),
                "mean_attention_distance": list(m.get("mean_attention_distance", [])),
                "attention_entropy": list(m.get("attention_entropy", [])),
                "position_structure_score": m.get("position_structure_score"),
                "logit_lens_accuracy": list(m.get("logit_lens_accuracy", [])),
                "patch_size": int(doc["train_config"]["patch_size"]),
            }
        )
    return rows


__all__ = [
    "ABLATIONS",
    "ABLATION_SIZE",
    "DATA_SIZES",
    "MEASURE_IMAGES",
    "NOT_RUN",
    "RECIPE",
    "RESULTS_DIR",
    "SWEEP_STEPS",
    "PlannedRun",
    "Variant",
    "ablation_rows",
    "baseline_key",
    "data_size_table",
    "load_results",
    "machine_info",
    "model_measures",
    "result_path",
    "sweep_config",
    "sweep_plan",
    "write_result",
]
