"""The faithfulness lab's computations ("Which map to trust", head knockout, per-patch logit lens),
cached like `ui.compute`: a `Current` is hashed by its ids through the same `hash_funcs`.

The slow ones draw their own progress bar inside the cached function (created and emptied
there, so a cache hit replays nothing visible; a bar made outside a cached function cannot
be updated from inside it).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from vit_core import analysis as A
from vit_core import load_image, preprocess_steps
from vit_core.analysis import faithfulness as F
from vit_core.limits import current_limits

from .compute import MODEL_RESULTS, RESULTS, TTL, sample_files, to_model, trace_on_model
from .models import BUNDLED_PATH
from .selection import Current
from .state import last

REFERENCE_PATH = Path(__file__).resolve().parent.parent / "assets" / "lab_reference.json"
RANDOM_SEEDS = 10  # random rankings per image: their mean is the baseline, their range its spread
LIVE_IMAGES = 32  # most images a user can make the server run the lab over (importance, rankings)
MAX_KNOCKED = 16  # most heads knocked out at once
CURVE_BATCH = None  # images per forward pass of the curves: vit_core's `curve_batch_size` (about 8k tokens)
LAB_RESULTS = {**RESULTS, "max_entries": 16}


def live_image_cap() -> int:
    """How many images a user may run the lab over on this server (fewer in classroom mode)."""
    return 12 if current_limits().public else LIVE_IMAGES


def default_k(n: int) -> int:
    """Patches per curve step by default: about 16 steps a curve (the whole lab for one image stays quick)."""
    return max(1, math.ceil(n / 16))


def rollout_settings(num_layers: int) -> tuple[str, float, int]:
    """The rollout settings chosen on the Attention page (its defaults if the user has not been there):
    head fusion, discard ratio, start layer (1-based, as the page shows it)."""
    fusion = str(last("roll_fusion", "mean"))
    fusion = fusion if fusion in A.HEAD_FUSIONS else "mean"
    discard = float(last("roll_discard", 0.0))
    discard = discard if 0.0 <= discard < 1.0 else 0.0
    start = int(last("roll_start", 1))
    return fusion, discard, start if 1 <= start <= num_layers else 1


def _bar(text: str):
    """A progress bar and its update function (call inside the cached function)."""
    bar = st.progress(0.0, text=text)

    def update(done: float, total: float, what: str = text) -> None:
        bar.progress(min(1.0, max(0.0, done / total if total else 1.0)), text=f"{what} ({done:.0f}/{total:.0f})")

    return bar, update


# ---- one image ----


@st.cache_data(**LAB_RESULTS)
def maps(cur: Current, target: int, fusion: str, discard: float, start: int) -> dict[str, np.ndarray]:
    """Method name -> (gh, gw) map of the current image for class `target` (`start` 0-based)."""
    out = F.saliency_maps(cur.model, cur.prep.x, int(target), fusion, float(discard), int(start))
    return {k: v.numpy() for k, v in out.items()}


@st.cache_data(**LAB_RESULTS)
def curves(cur: Current, target: int, fusion: str, discard: float, start: int, k: int, seeds: int) -> dict:
    """Deletion and insertion curves of every method and of `seeds` random rankings.

    Returns: names, fractions (S,), deletion / insertion (M, S), random_deletion /
    random_insertion (R, S), areas {name: (deletion, insertion)} ("random": the seeds' mean),
    random_areas (R, 2).
    """
    bar, update = _bar("Deletion and insertion curves")
    m = maps(cur, target, fusion, discard, start)
    model, x, n = cur.model, cur.prep.x, cur.num_patches
    groups: list[tuple[list[str], torch.Tensor]] = [(list(m), torch.stack([torch.from_numpy(v) for v in m.values()]))]
    rand = F.random_saliencies(n, seeds, seed=0)
    half = max(1, seeds // 2)
    groups += [
        ([f"random {i}" for i in range(s, min(s + half, seeds))], rand[s : s + half]) for s in range(0, seeds, half)
    ]
    dele, ins = [], []
    for g, (_, rows) in enumerate(groups):
        update(g, len(groups), "Deletion and insertion curves: the methods" if g == 0 else "…random rankings")
        d, i = F.deletion_insertion_curves(model, x, rows, int(target), k=int(k), batch_size=CURVE_BATCH)
        dele.append(d)
        ins.append(i)
    bar.empty()
    d, i = torch.cat(dele), torch.cat(ins)
    M = len(m)
    c = F.LabCurves(list(m), F.step_fractions(n, int(k)), d[:M], i[:M], d[M:], i[M:])
    rd, ri = c.random_area_spread()
    return {
        "names": c.names,
        "fractions": c.fractions.numpy(),
        "deletion": c.deletion.numpy(),
        "insertion": c.insertion.numpy(),
        "random_deletion": c.random_deletion.numpy(),
        "random_insertion": c.random_insertion.numpy(),
        "areas": c.areas(),
        "random_areas": torch.stack([rd, ri], 1).numpy(),
    }


@st.cache_data(**{**LAB_RESULTS, "max_entries": 8})
def cascade(cur: Current, target: int, fusion: str, discard: float, start: int) -> dict:
    """The randomisation sanity check: every method's map after each cascade step, and its
    Spearman correlation with the trained model's map.

    Returns: steps (S,), methods (M,), maps (M, S, gh, gw), spearman (M, S).
    """
    model, x = cur.model, cur.prep.x
    steps = F.cascade_steps(model)
    bar, update = _bar("Randomising the model, layer by layer")
    per_step = []
    for s, (_, copy) in enumerate(F.randomise_cascade(model, seed=0)):
        update(s, len(steps), f"Randomising the model: {steps[s]}")
        copy.eval()
        per_step.append(F.saliency_maps(copy, x, int(target), fusion, float(discard), int(start)))
        del copy
    bar.empty()
    methods = list(per_step[0])
    arr = np.stack([[per_step[s][m].numpy() for s in range(len(steps))] for m in methods])  # (M, S, gh, gw)
    rho = np.array(
        [[F.map_agreement(arr[i, 0], arr[i, s]).spearman for s in range(len(steps))] for i in range(len(methods))]
    )
    return {"steps": steps, "methods": methods, "maps": arr, "spearman": rho}


@st.cache_data(**{**LAB_RESULTS, "max_entries": 64})
def knocked(
    cur: Current, heads: tuple[tuple[int, int], ...], target: int, fusion: str, discard: float, start: int
) -> dict:
    """The image with some heads knocked out (zeroed), in one forward + backward:
    probabilities (classes,), the rollout (gh, gw) and the class map (gh, gw) for `target`."""
    model = cur.model
    with A.heads_knocked_out(model, heads), torch.enable_grad():
        t = model.trace(to_model(cur.prep.x, model), target=int(target))
    roll = A.rollout_cls_map(t.attentions.detach(), t.grid, t.num_prefix_tokens, fusion, float(discard), int(start))
    return {
        "probs": t.logits.detach().cpu().double().softmax(-1)[0].numpy(),
        "rollout": roll[0].cpu().numpy(),
        "class_map": A.class_attention_map_from_trace(t)[0].detach().cpu().numpy(),
    }


@st.cache_data(**LAB_RESULTS)
def patch_lens(cur: Current) -> np.ndarray:
    """(L+1, n, classes) float32: the final norm and head read at every patch token, every depth."""
    return F.patch_logit_lens(cur.model, trace_on_model(cur)).cpu().numpy().astype(np.float32)


# ---- a set of images ----


def is_bundled(cur: Current) -> bool:
    """The bundled checkpoint, unchanged: the shipped reference applies to it."""
    return cur.loaded.key == "bundled" or cur.model_id.startswith(f"file:{BUNDLED_PATH}:")


@st.cache_data(ttl=TTL, max_entries=4, show_spinner=False)
def _reference(path: str, mtime: float) -> dict | None:
    try:
        ref = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not BUNDLED_PATH.exists():
        return None
    if ref.get("model", {}).get("sha256") != hashlib.sha256(BUNDLED_PATH.read_bytes()).hexdigest():
        return None  # made for other weights
    return ref


def reference(cur: Current) -> dict | None:
    """The shipped results over CIFAR-10 test images (assets/lab_reference.json) for the bundled
    model, or None (another model, the file missing, or made for other weights)."""
    if not is_bundled(cur):
        return None
    try:
        mtime = REFERENCE_PATH.stat().st_mtime
    except OSError:
        return None
    return _reference(str(REFERENCE_PATH), mtime)


def _sample_batch(cur: Current, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled sample images (at most `cap`) for this model, and its own predictions on them."""
    files = sample_files()[: max(1, int(cap))]
    x = torch.cat([preprocess_steps(load_image(d), cur.cfg).tensor for d in files])
    with torch.no_grad():
        pred = cur.model(to_model(x, cur.model)).argmax(-1).cpu()
    return x, pred


@st.cache_data(**{**MODEL_RESULTS, "max_entries": 8})
def sample_summary(cur: Current, fusion: str, discard: float, start: int, k: int, seeds: int, cap: int) -> dict:
    """`lab_summary` over the bundled sample images (at most `cap`), each for the model's own
    predicted class: per-image areas (B, M+1), mean curves, mean agreement."""
    x, pred = _sample_batch(cur, cap)
    bar, update = _bar(f"Running the lab over {len(x)} sample images")
    s = F.lab_summary(
        cur.model,
        x,
        pred,
        fusion,
        float(discard),
        int(start),
        int(seeds),
        int(k),
        progress=lambda d, t: update(d, t, f"Running the lab over {t} sample images"),
        batch_size=CURVE_BATCH,
    )
    bar.empty()
    return {
        "methods": s.names,
        "fractions": s.fractions.numpy(),
        "deletion_area": s.deletion.numpy(),
        "insertion_area": s.insertion.numpy(),
        "mean_deletion": s.mean_deletion.numpy(),
        "mean_insertion": s.mean_insertion.numpy(),
        "spearman": column_mean_of_finite(s.spearman.numpy()),
        "top_overlap": s.top_overlap.numpy().mean(0),
        "images": len(x),
        "k": int(k),
        "random_seeds": int(seeds),
    }


def column_mean_of_finite(values: np.ndarray) -> np.ndarray:
    """The mean of each column over its finite entries; NaN for a column with none (a rank
    correlation is undefined for a constant map). np.nanmean gives the same numbers but warns
    "Mean of empty slice" into the server log for such a column."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    n = ok.sum(0)
    total = np.where(ok, v, 0.0).sum(0)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


@st.cache_data(**{**MODEL_RESULTS, "max_entries": 8})
def sample_importance(cur: Current, cap: int) -> dict:
    """Head importance over the bundled sample images (at most `cap`), against the model's own
    predictions (the samples have no labels every model shares): (L, h) drops."""
    x, pred = _sample_batch(cur, cap)
    bar, update = _bar(f"Knocking out every head over {len(x)} sample images")
    imp = A.head_importance(cur.model, x, pred, progress=lambda d, t: update(d, t, "Knocking out every head"))
    bar.empty()
    return {
        "accuracy_drop": imp.accuracy_drop.numpy(),
        "logprob_drop": imp.logprob_drop.numpy(),
        "accuracy": imp.accuracy,
        "logprob": imp.logprob,
        "images": imp.num_images,
    }


def test_set_summary(ref: dict) -> dict:
    """The shipped reference's curve part as arrays (the same keys as `sample_summary`)."""
    c = ref["curves"]
    return {
        "methods": c["methods"],
        "fractions": np.asarray(c["fractions"]),
        "deletion_area": np.asarray(c["deletion_area"]),
        "insertion_area": np.asarray(c["insertion_area"]),
        "mean_deletion": np.asarray(c["mean_deletion"]),
        "mean_insertion": np.asarray(c["mean_insertion"]),
        "spearman": np.asarray(c["spearman"], dtype=np.float64),
        "top_overlap": np.asarray(c["top_overlap"], dtype=np.float64),
        "images": len(c["images"]),
        "k": c["k"],
        "random_seeds": c["random_seeds"],
    }


def test_set_importance(ref: dict) -> dict:
    """The shipped reference's head importance as arrays (the same keys as `sample_importance`)."""
    r = ref["importance"]
    return {
        "accuracy_drop": np.asarray(r["accuracy_drop"]),
        "logprob_drop": np.asarray(r["logprob_drop"]),
        "accuracy": r["accuracy"],
        "logprob": r["logprob"],
        "images": r["images"],
    }


def wins(deletion: np.ndarray, insertion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per method, on how many images it had the best (lowest) deletion and the best (highest)
    insertion area among all the methods and random; ties count for each tied method."""
    d, i = np.asarray(deletion), np.asarray(insertion)
    return (d == d.min(1, keepdims=True)).sum(0), (i == i.max(1, keepdims=True)).sum(0)
