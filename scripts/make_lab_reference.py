"""The bundled model's results over CIFAR-10 test images for the "Which map to trust" lab,
written to assets/lab_reference.json (small: areas per image and method, mean curves, mean
agreement, head importance).

Images: a fixed, seeded draw from the test split of the offline CIFAR-10 copy
(`<root>/test/<class>/NNNN.jpg`, read straight from the .tar.gz), the same number per class;
each read by `vit_core.load_image` + `preprocess`, as the app reads an upload. Maps and curves
follow each image's predicted class (what the lab shows by default), with the rollout's
default settings (mean fusion, no discarding, from layer 1).

Run (about 30 min on a busy 2-core CPU):
    python scripts/make_lab_reference.py --data ../shared/data/cifar10_jpeg.tar.gz
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import tarfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vit_core import load_checkpoint, load_image, preprocess  # noqa: E402
from vit_core.analysis.faithfulness import lab_summary  # noqa: E402
from vit_core.analysis.knockout import head_importance  # noqa: E402

MODEL = ROOT / "assets" / "vit_cifar10.safetensors"
OUT = ROOT / "assets" / "lab_reference.json"


def test_members(archive: Path) -> dict[str, list[str]]:
    """Class folder -> sorted member names of the test split's JPEGs."""
    by_class: dict[str, list[str]] = {}
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 3 and parts[0] == "test":
                by_class.setdefault(parts[1], []).append(m.name)
    return {c: sorted(v) for c, v in sorted(by_class.items())}


def draw(by_class: dict[str, list[str]], per_class: int, seed: int) -> list[str]:
    """`per_class` names from each class, seeded; classes interleaved (a prefix stays balanced)."""
    rng = random.Random(seed)
    picks = {c: rng.sample(names, per_class) for c, names in by_class.items()}
    return [picks[c][i] for i in range(per_class) for c in by_class]


def read(archive: Path, names: list[str], model) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocessed images (B, C, H, W) and labels (B,) as the model's class indices."""
    index = {c: i for i, c in enumerate(model.class_names)}
    want = set(names)
    data: dict[str, bytes] = {}
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            if m.name in want:
                data[m.name] = tar.extractfile(m).read()
    xs = torch.cat([preprocess(load_image(data[n]), model) for n in names])
    ys = torch.tensor([index[n.split("/")[1]] for n in names])
    return xs, ys


def bar(what: str):
    t0 = time.time()

    def progress(done: int, total: int) -> None:
        print(f"\r  {what}: {done}/{total} ({time.time() - t0:.0f} s)", end="\n" if done == total else "", flush=True)

    return progress


def rounded(t: torch.Tensor, digits: int = 4):
    return [rounded(r, digits) for r in t] if t.dim() else round(float(t), digits)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="cifar10_jpeg.tar.gz (test/<class>/*.jpg inside)")
    ap.add_argument("--curve-images", type=int, default=100, help="images for curves and agreement (a multiple of 10)")
    ap.add_argument("--importance-images", type=int, default=1000, help="images for head importance")
    ap.add_argument("--seeds", type=int, default=10, help="random rankings per image")
    ap.add_argument("--k", type=int, default=0, help="patches per step (0: ceil(n/16), the lab's default)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the image draw")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    archive = Path(args.data)
    model = load_checkpoint(MODEL).eval()
    gh, gw = model.cfg.grid_size
    n = gh * gw
    k = args.k or math.ceil(n / 16)
    by_class = test_members(archive)
    nc = len(by_class)
    imp_names = draw(by_class, args.importance_images // nc, args.seed)
    curve_names = imp_names[: args.curve_images]  # interleaved: a balanced prefix
    images, labels = read(archive, imp_names, model)
    t0 = time.time()
    with torch.no_grad():
        pred = model(images[: len(curve_names)]).argmax(-1)
    summary = lab_summary(
        model, images[: len(curve_names)], pred, random_seeds=args.seeds, k=k, progress=bar("curves"), batch_size=256
    )
    t_curves = time.time() - t0
    t0 = time.time()
    imp = head_importance(model, images, labels, progress=bar("head importance"))
    t_imp = time.time() - t0
    result = {
        "about": "Which map to trust, over CIFAR-10 test images: made by scripts/make_lab_reference.py",
        "model": {"file": MODEL.name, "sha256": hashlib.sha256(MODEL.read_bytes()).hexdigest()},
        "data": {"archive": archive.name, "split": "test", "seed": args.seed},
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "curves": {
            "images": curve_names,
            "labels": labels[: len(curve_names)].tolist(),
            "targets": pred.tolist(),
            "target": "predicted class",
            "rollout": {"head_fusion": "mean", "discard_ratio": 0.0, "start_layer": 1},
            "k": k,
            "random_seeds": args.seeds,
            "methods": summary.names,
            "fractions": rounded(summary.fractions),
            "deletion_area": rounded(summary.deletion),
            "insertion_area": rounded(summary.insertion),
            "mean_deletion": rounded(summary.mean_deletion),
            "mean_insertion": rounded(summary.mean_insertion),
            "spearman": rounded(summary.spearman.nanmean(0)),
            "top_overlap": rounded(summary.top_overlap.mean(0)),
            "seconds": round(t_curves, 1),
        },
        "importance": {
            "images": len(imp_names),
            "accuracy": round(imp.accuracy, 4),
            "logprob": round(imp.logprob, 4),
            "accuracy_drop": rounded(imp.accuracy_drop),
            "logprob_drop": rounded(imp.logprob_drop),
            "ablation": "zero",
            "seconds": round(t_imp, 1),
        },
    }
    Path(args.out).write_text(json.dumps(result, separators=(",", ":")) + "\n")
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
