"""Deletion and insertion curves of one image: this tree against an earlier revision, side by side.

The lab's curves for the bundled model and the cat sample: its six maps, and the six maps with
the ten random rankings the lab adds. Three ways, interleaved round by round in one process so
that they share the machine's load:

- `REV`, 2 torch threads, batches of 64 images (the library's old default);
- `REV`, 1 torch thread, batches of 256 (how the app ran them: one thread per page run);
- this tree, as the app runs it now (1 torch thread per page run; the curves' own worker threads).

The revision's `vit_core/analysis/faithfulness.py` is read with `git show` and imported beside
this tree's (the rest of vit_core is this tree's).

Run:  python benchmarks/bench_curves.py [--ref 35b3494] [--rounds 3] [--k 4]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_faithfulness import six_maps  # noqa: E402

from vit_core import load_checkpoint, load_image, preprocess  # noqa: E402
from vit_core.analysis import faithfulness as NOW  # noqa: E402


def module_at(rev: str):
    """faithfulness.py of `rev`, imported as a module of its own."""
    text = subprocess.run(
        ["git", "show", f"{rev}:vit_core/analysis/faithfulness.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    text = text.replace("from .whatif import", "from vit_core.analysis.whatif import")
    path = Path(tempfile.mkdtemp()) / "faithfulness_ref.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("faithfulness_ref", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default="35b3494", help="the earlier revision (default: before the curve changes)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--k", type=int, default=1, help="patches per curve step (the lab's default is ceil(n/16): 4)")
    args = ap.parse_args()
    old = module_at(args.ref)
    model = load_checkpoint(ROOT / "assets" / "vit_cifar10.safetensors").eval()
    x = preprocess(load_image(ROOT / "assets" / "samples" / "cifar10" / "cat.jpg"), model)
    _, maps = six_maps(model, x, 3)
    lab = torch.cat([maps, NOW.random_saliencies(maps.shape[1], 10, 0)])
    print(
        f"{os.cpu_count()} CPUs, torch {torch.__version__}; {args.k} patch(es) per step; "
        f"load average at start {os.getloadavg()[0]:.1f}"
    )
    ways = {
        f"{args.ref}: 2 threads, batch 64": (
            2,
            lambda M: old.deletion_insertion_curves(model, x, M, 3, k=args.k, batch_size=64),
        ),
        f"{args.ref}: the app (1 thread, batch 256)": (
            1,
            lambda M: old.deletion_insertion_curves(model, x, M, 3, k=args.k, batch_size=256),
        ),
        "this tree: the app (1 thread + curve workers)": (
            1,
            lambda M: NOW.deletion_insertion_curves(model, x, M, 3, k=args.k),
        ),
    }
    for label, M in (("6 maps", maps), ("6 maps + 10 random rankings (the lab)", lab)):
        times: dict[str, list[float]] = {k: [] for k in ways}
        want = None
        for _ in range(args.rounds):
            for k, (threads, fn) in ways.items():
                torch.set_num_threads(threads)
                t0 = time.perf_counter()
                got = fn(M)
                times[k].append(time.perf_counter() - t0)
                if want is None:
                    want = got
                assert torch.allclose(got[0], want[0], atol=1e-9) and torch.allclose(got[1], want[1], atol=1e-9)
        print(f"  {label}:")
        for k, v in times.items():
            print(f"    {k:<48} {statistics.median(v):6.2f} s")
    print(f"load average at the end {os.getloadavg()[0]:.1f}; the three ways gave the same curves")


if __name__ == "__main__":
    main()
