"""What a prediction can and cannot say: the model's class list, a note for images outside its
training data, and how unusual the image is for the model (its top probability against the
model's own test images).

A model with few classes puts all of its probability on them: a flower still gets "frog 41%".
These notes sit next to the predictions so that a class reads that number honestly.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vit_core import CIFAR10_CLASSES

from .models import BUNDLED_PATH
from .selection import Current

FEW_CLASSES = 100  # up to this many classes, the class list is shown next to a prediction


def _msp_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name.removesuffix(".safetensors") + ".msp.json")


MSP_REFERENCE = _msp_path(BUNDLED_PATH)  # assets/vit_cifar10.msp.json (benchmarks/msp_reference.py)


def from_training_data(cur: Current) -> bool:
    """Whether the image is of the kind the model learnt from: a CIFAR-10 sample on a CIFAR-10 model."""
    return (
        cur.image.source == "sample"
        and cur.image.name.startswith("CIFAR-10:")
        and list(cur.class_names) == list(CIFAR10_CLASSES)
    )


def is_photo(cur: Current) -> bool:
    """An upload, a camera photo or one of the sample photos."""
    return cur.image.source in ("upload", "camera") or cur.image.name.startswith("Photo:")


def class_note(cur: Current) -> str | None:
    """The class list of a model with few classes; for an image outside its training data, what that implies."""
    if not cur.has_head or len(cur.class_names) > FEW_CLASSES:
        return None
    names = ", ".join(cur.class_names)
    k = len(cur.class_names)
    if from_training_data(cur) or not is_photo(cur):
        return f"The {k} classes this model knows: {names}."
    text = (
        f"This model knows only these {k} classes: {names}. Its probabilities always add up to 100% over them, "
        "so a photo of anything else still gets one of them."
    )
    if k < 1000:
        text += " For photos, a pretrained ImageNet model knows 1000 classes: sidebar, *More models*, *Pretrained catalogue*."
    return text


@dataclass(frozen=True)
class Unusualness:
    """An image's top probability placed among the model's own test images."""

    msp: float  # the image's max softmax probability
    below: float  # percent of the model's test images whose top probability is lower
    reference: str  # what the distribution was measured on


def unusualness(cur: Current) -> Unusualness | None:
    """The image's max-softmax probability as a percentile of the model's test images; None if unmeasured.

    Only the bundled model carries its distribution (assets/vit_cifar10.msp.json, 101 quantiles).
    """
    if cur.loaded.key != "bundled" or not cur.has_head:
        return None
    ref = _read_reference(str(MSP_REFERENCE), _mtime(MSP_REFERENCE))
    if ref is None:
        return None
    quantiles, data = ref
    msp = float(np.max(cur.prep.probs))
    return Unusualness(msp, msp_percentile(msp, quantiles), data)


def msp_percentile(msp: float, quantiles: np.ndarray) -> float:
    """Percent of the reference images whose top probability is below `msp`, read off the
    reference's quantiles (101: at 0%, 1%, ..., 100%), linear between them; a value equal to
    several quantiles (many test images at 99.99%) gets the middle of their levels."""
    q = np.asarray(quantiles, dtype=float)
    levels = np.linspace(0.0, 100.0, q.size)
    lo, hi = int(np.searchsorted(q, msp, "left")), int(np.searchsorted(q, msp, "right"))
    if lo < hi:  # equal to q[lo:hi]
        return float((levels[lo] + levels[hi - 1]) / 2)
    if lo == 0:
        return 0.0
    if lo == q.size:
        return 100.0
    frac = (msp - q[lo - 1]) / (q[lo] - q[lo - 1])
    return float(levels[lo - 1] + frac * (levels[lo] - levels[lo - 1]))


def unusualness_text(u: Unusualness) -> str:
    """Two sentences: the reading, and what it can and cannot say."""
    word = "unusual for this model" if u.below < 10 else ("rather low" if u.below < 25 else "a usual level")
    return (
        f"**How sure, compared with its own test images:** the top probability, {u.msp:.1%}, is higher than on "
        f"{u.below:.0f}% of the model's {u.reference}: {word}. "
        "A low reading says the image is unlike what the model learnt from (or hard); a high one does not say the "
        "answer is right: a photo of something it has never seen can still get a high score."
    )


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


@functools.lru_cache(maxsize=4)
def _read_reference(path: str, mtime: float) -> tuple[np.ndarray, str] | None:
    try:
        record = json.loads(Path(path).read_text())
        q = np.asarray(record["quantiles"], dtype=float)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if q.ndim != 1 or q.size < 2 or not np.all(np.diff(q) >= 0):
        return None
    return q, str(record.get("reference", "test images"))
