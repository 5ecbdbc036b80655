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
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .cnn import is_cnn
from .fileio import atomic_write
from .train import TrainConfig

# the shipped result files; $VIT_EXPLORER_EXPERIMENTS_DIR points the app at another folder (tests)
RESULTS_DIR = Path(
    os.environ.get("VIT_EXPLORER_EXPERIMENTS_DIR") or Path(__file__).resolve().parent.parent / "assets" / "experiments"
)
RESULT_FORMAT = "vit-explorer-experiment/1"
ARCH_NAMES = {"vit": "ViT", "resnet": "ResNet"}
SWEEP_STEPS = 150  # optimiser steps of every run (a short schedule: a busy 2-core CPU, minutes a run)
WARMUP_STEPS = 15  # linear warmup, then cosine to min_lr at SWEEP_STEPS
DATA_SIZES = (1000, 5000, 10000)  # training images of the "data_size" runs (50,000 was not run)
ABLATION_SIZE = 10000  # training images of the "ablation" runs
MEASURE_IMAGES = 256  # balanced test images the measures are averaged over
TEST_IMAGES = 5000  # balanced test images the accuracy is measured on (seed 0; half the test set, for time)
# Written out, not taken from PRESETS["demo"], so that the shipped runs stay reproducible when that
# preset changes: the demo ViT as it was when the runs were made (142,026 parameters on CIFAR-10).
RECIPE = TrainConfig(
    patch_size=4,
    embed_dim=64,
    depth=4,
    num_heads=4,
    mlp_ratio=2.0,
    batch_size=64,
    lr=2e-3,
    warmup_epochs=0.1,
    label_smoothing=0.0,
    seed=0,
    device="cpu",
    name="ViT-CIFAR10 (demo)",
)


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
    Variant(
        "patch2", "patch 2 (256 tokens)", "Do even smaller patches (four times the tokens) help?", {"patch_size": 2}
    ),
    Variant("reg4", "4 register tokens", "Do register tokens change accuracy or attention?", {"reg_tokens": 4}),
    Variant("depth6", "depth 6", "Does one step more depth help on this budget?", {"depth": 6}),
    Variant("width96", "width 96", "Does one step more width help on this budget?", {"embed_dim": 96}),
)
NOT_RUN = ("50,000 training images (the full set; at this step budget a run sees 9,600 images, a fifth of one epoch)",)


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
    "TEST_IMAGES",
    "PlannedRun",
    "Variant",
    "ablation_rows",
    "baseline_key",
    "data_size_table",
    "findings",
    "load_results",
    "machine_info",
    "model_measures",
    "result_path",
    "sweep_config",
    "sweep_plan",
    "uniform_attention_distance",
    "write_result",
]


# ----------------------------------------------------------------------------------------------
# What the runs measured, in words (the page shows these; computed, never written by hand)


def uniform_attention_distance(grid: tuple[int, int], patch_size: int) -> float:
    """Mean attention distance (pixels) of a head that attends to every patch equally: the mean
    Euclidean distance between two grid cells (a query and a key, the key may equal the query)
    times the patch size. The "looks everywhere" reference for the measured distances."""
    gh, gw = int(grid[0]), int(grid[1])
    ii, jj = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    cells = torch.stack([ii.reshape(-1), jj.reshape(-1)], dim=-1).double()
    return float(torch.cdist(cells, cells).mean() * patch_size)


def _pts(a: float, b: float) -> str:
    d = 100 * (a - b)
    return f"{abs(d):.1f} points {'higher' if d > 0 else 'lower'}" if abs(d) >= 0.05 else "the same"


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def findings(results: dict[str, dict[str, Any]], noise_points: float = 2.0) -> dict[str, str]:
    """One plain sentence (or two) per experiment with finished runs, from the numbers alone.

    Args:
        results: `load_results()`.
        noise_points: accuracy differences (in points) at or below this are called "within
            the noise of a single seed" rather than a win (on 5,000 test images the sampling
            alone gives two runs' accuracies a difference of about 0.9 points, one standard
            deviation at 28%; one seed per run adds more).

    Returns:
        experiment name -> sentence(s); an experiment without its runs is left out.
    """
    out: dict[str, str] = {}
    table = data_size_table(results)
    vit, cnn = dict(table["vit"]), dict(table["resnet"])
    both = sorted(set(vit) & set(cnn))
    if both:
        parts = [f"{n:,} images: ResNet {_pct(cnn[n])}, ViT {_pct(vit[n])}" for n in both]
        gaps = [100 * (cnn[n] - vit[n]) for n in both]
        ahead = [g > noise_points for g in gaps]
        text = "; ".join(parts) + ". "
        if all(ahead):
            text += (
                "The ResNet is ahead at every size, as the tutorials say (locality is a useful prior on little data)"
            )
        elif not any(g > noise_points for g in gaps):
            text += "The ResNet is not ahead at any size here, against the tutorials' claim"
        else:
            text += "The ResNet is ahead at some sizes only"
        if len(both) > 1:
            trend = "narrows" if abs(gaps[-1]) < abs(gaps[0]) else "does not narrow"
            text += f"; the gap {trend} from {gaps[0]:+.1f} to {gaps[-1]:+.1f} points as the data grows"
            text += " (the claim expects it to narrow)"
        text += "."
        flat = [
            ARCH_NAMES[a]
            for a, acc in (("vit", vit), ("resnet", cnn))
            if len(acc) > 1 and 100 * (max(acc.values()) - min(acc.values())) < 5
        ]
        if flat:
            text += (
                f" More data changes the {' and the '.join(flat)}'s accuracy by less than 5 points: with "
                f"{SWEEP_STEPS} steps the runs are limited by training time more than by data, so they show data "
                "efficiency only weakly."
            )
        out["data_size"] = text
    base = results.get(baseline_key())
    cnn_base = results.get(f"resnet_n{ABLATION_SIZE}")
    if base is not None:
        mad = base["measures"].get("mean_attention_distance", [])
        cfg = base["train_config"]
        grid = (cfg["img_size"] // cfg["patch_size"],) * 2
        uniform = uniform_attention_distance(grid, cfg["patch_size"])
        ent = base["measures"].get("attention_entropy", [])
        tokens = grid[0] * grid[1] + int(cfg.get("class_token", True)) + int(cfg.get("reg_tokens", 0))
        if mad:
            text = (
                f"The ViT's first block attends {mad[0]:.1f} px away on average (a head that looked everywhere "
                f"equally would score {uniform:.1f} px), its last block {mad[-1]:.1f} px."
            )
            if cnn_base is not None:
                erf = cnn_base["measures"].get("receptive_field_distance", [])
                if erf:
                    text += (
                        f" The ResNet's stem reaches {erf[0]:.1f} px and its last block {erf[-1]:.1f} px "
                        "(effective receptive field)."
                    )
            if all(abs(m - uniform) < 0.05 * uniform for m in mad):
                spread = (
                    f"; entropy {min(ent):.2f}-{max(ent):.2f} nats, against {math.log(tokens):.2f} for even attention over {tokens} tokens"
                    if ent
                    else ""
                )
                text += (
                    f" Every block's distance is within 5% of the even-spread value{spread}: after this short "
                    "schedule the heads have barely specialised, so 'looks far' here means 'looks everywhere "
                    "alike', not the learned global view the tutorials describe. The bundled ViT, trained far "
                    "longer, shows what trained heads do."
                )
            elif mad[0] >= 0.75 * uniform:
                text += " So the ViT does look across the whole image from its first layer, as the tutorials say."
            else:
                text += (
                    " So the first layer could look everywhere but, on average over its heads, looks more locally "
                    "than that: the tutorials' 'global from the first layer' holds for what attention can do, "
                    "less for what this trained model does."
                )
            out["distance"] = text
    rows = {r["key"]: r for r in ablation_rows(results)}
    b = rows.get("baseline")
    if b is None:
        return out

    def vs(key: str, what: str) -> str | None:
        r = rows.get(key)
        if r is None:
            return None
        d = 100 * (r["test_acc"] - b["test_acc"])
        verdict = "within the noise of one seed" if abs(d) <= noise_points else ("better" if d > 0 else "worse")
        return f"{what}: {_pct(r['test_acc'])}, {_pts(r['test_acc'], b['test_acc'])} than the baseline's {_pct(b['test_acc'])} ({verdict})."

    s = vs("pos_none", "Without position embeddings")
    if s:
        score = b.get("position_structure_score")
        s += (
            f" The baseline's learned positions have a structure score of {score:.3f} (0 = no 2-D structure)."
            if score is not None
            else ""
        )
        d = rows["pos_none"]["test_acc"] - b["test_acc"]
        s += (
            " Positions help, as the tutorials say."
            if d < -noise_points / 100
            else " On this short run positions barely matter, against the tutorials' emphasis: a model without "
            "them sees a bag of patches and still classifies most of what the baseline does."
        )
        out["pos_none"] = s
    for key, what in (
        ("pos_sincos", "With fixed sine-cosine positions"),
        ("pool_avg", "With average pooling instead of [CLS]"),
        ("patch8", "With 8-pixel patches (16 tokens)"),
        ("reg4", "With 4 register tokens"),
        ("depth6", "With depth 6"),
        ("width96", "With width 96"),
    ):
        s = vs(key, what)
        if s:
            if key == "pool_avg":
                d = rows[key]["test_acc"] - b["test_acc"]
                s += (
                    " The [CLS] token is not needed to collect the answer: averaging the patches does as well or "
                    "better here."
                    if d >= -noise_points / 100
                    else " Here the [CLS] token does collect the answer better than an average."
                )
            out[key] = s
    lens = b.get("logit_lens_accuracy") or []
    if lens:
        final = lens[-1]
        first = next((i for i, a in enumerate(lens) if a >= 0.9 * final), len(lens) - 1)
        where = "after the embedding" if first == 0 else f"after block {first}"
        out["logit_lens"] = (
            f"Reading the baseline's [CLS] token through the head, accuracy on the {MEASURE_IMAGES} measure images "
            f"reaches 90% of its final {_pct(final)} {where} (of {len(lens) - 1} blocks): the answer forms in the "
            f"{'last' if first >= len(lens) - 2 else 'middle'} blocks."
        )
    return out
