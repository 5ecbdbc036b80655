"""The bundled model's max-softmax probability (MSP) over its own test images, as 101 quantiles.

The app reads an image's MSP against this distribution ("how unusual is this image for the
model", a percentile next to the prediction). Writes assets/vit_cifar10.msp.json:

    python benchmarks/msp_reference.py --data ../shared/data/cifar10_jpeg.tar.gz

`--data` takes anything `vit_core.sources.load_split` reads (the official archive, its folder,
a tarred image folder); archives are unpacked into `--cache` (default data/, ignored by git).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vit_core import load_checkpoint  # noqa: E402
from vit_core.evaluation import evaluate  # noqa: E402
from vit_core.fileio import atomic_write  # noqa: E402
from vit_core.sources import load_split  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="CIFAR-10: archive, extracted folder or tarred image folder")
    ap.add_argument("--cache", default=str(ROOT / "data"), help="where archives are unpacked")
    ap.add_argument("--model", default=str(ROOT / "assets" / "vit_cifar10.safetensors"))
    ap.add_argument("--out", default=str(ROOT / "assets" / "vit_cifar10.msp.json"))
    args = ap.parse_args()

    model = load_checkpoint(args.model).eval()
    test = load_split(args.data, "test", cache_dir=args.cache)
    acc, _, _, _, msp = evaluate(model, test, model.cfg.mean, model.cfg.std, return_predictions=True)
    msp = msp.double().numpy()
    quantiles = np.quantile(msp, np.linspace(0, 1, 101))
    record = {
        "what": "max softmax probability of the model on its test images: quantiles at 0%, 1%, ..., 100%",
        "model": Path(args.model).name,
        "model_sha256": hashlib.sha256(Path(args.model).read_bytes()).hexdigest(),
        "reference": "CIFAR-10 test images",
        "data": f"{Path(args.data).name}, test split ({len(test)} images)",
        "test_acc": round(acc, 4),
        "quantiles": [round(float(q), 5) for q in quantiles],
        "command": "python benchmarks/msp_reference.py --data ../shared/data/cifar10_jpeg.tar.gz",
    }
    with atomic_write(args.out) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{len(test)} images, accuracy {acc:.4f}, median MSP {np.median(msp):.3f} -> {args.out}")


if __name__ == "__main__":
    main()
