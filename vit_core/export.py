"""Exporting a trained model: a float16 safetensors file and, for `--export-only`, its measured metrics.

`save_float16` writes the model alone with its weights stored as float16 (half the size;
`load_checkpoint` casts them back); `export_run` does that for a run folder's best model and
evaluates the written file, so the metrics beside it describe exactly the exported weights.
`exported_accuracy` reads back the test accuracy an export recorded, so that a new run only
replaces an exported model with a better one.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch

from .checkpoints import load_checkpoint, save_checkpoint
from .data import ImageDataset
from .evaluation import eval_result, evaluate
from .fileio import atomic_write
from .model import VisionTransformer


def _extra_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The `extra` provenance a safetensors checkpoint carries ({} if none or unreadable)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("extra", "{}"))
    except Exception:  # noqa: BLE001 - a missing or foreign file simply has no provenance
        return {}


def exported_accuracy(path: str | os.PathLike) -> float:
    """The test accuracy recorded in a checkpoint this trainer exported (-1 if none or unreadable)."""
    try:
        return float(_extra_metadata(path).get("test_acc") or -1.0)
    except (AttributeError, TypeError, ValueError):  # provenance that is not a dict of numbers
        return -1.0


def save_float16(model: VisionTransformer, dest: str | os.PathLike, extra: dict[str, Any]) -> Path:
    """Write a float16 copy of `model` (the model itself is left as it is) with `extra` provenance."""
    half = copy.deepcopy(model).to("cpu", torch.float16)
    return save_checkpoint(half, dest, extra={**extra, "stored_dtype": "float16"})


def export_run(run_dir: str | os.PathLike, dest: str | os.PathLike, test: ImageDataset) -> dict[str, Any]:
    """Export a run's best model to `dest` (float16 safetensors) with `<dest stem>.metrics.json` beside it.

    The written file is loaded back and evaluated on `test`, so the metrics describe exactly
    the exported weights. Returns the metrics document.

    Raises:
        CheckpointError: the run folder has no readable `best.safetensors`.
    """
    run_dir, dest = Path(run_dir), Path(dest)
    src = run_dir / "best.safetensors"
    model = load_checkpoint(src)
    provenance = _extra_metadata(src)
    save_float16(model, dest, provenance)
    exported = load_checkpoint(dest)
    acc, loss, conf, _, _ = evaluate(exported, test, exported.cfg.mean, exported.cfg.std)
    res = eval_result(
        conf,
        acc,
        loss,
        int(provenance.get("step", 0)),
        float(provenance.get("epoch", 0.0)),
        test.class_names,
        float(provenance.get("train_seconds", 0.0)),
        float("nan"),
    )
    run_metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    doc = {
        "file": dest.name,
        "name": exported.cfg.name,
        "params": exported.num_params(),
        "test_acc": acc,
        "test_loss": loss,
        "test_data": test.source,
        "test_images": len(test),
        "per_class_acc": dict(zip(test.class_names, res.per_class_acc)),
        "confusion": res.confusion,
        "class_names": list(test.class_names),
        "step": provenance.get("step"),
        "epoch": provenance.get("epoch"),
        "train_seconds": provenance.get("train_seconds"),
        "train_data": provenance.get("train_data"),
        "train_images": provenance.get("train_images"),
        "train_config": provenance.get("train_config"),
        "run_history": run_metrics.get("history", []),
    }
    with atomic_write(dest.with_name(dest.name.removesuffix(".safetensors") + ".metrics.json")) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))
    return doc
