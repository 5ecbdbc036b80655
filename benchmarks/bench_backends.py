"""Runs per hour one node serves: training runs as threads of the app vs as Ray actors, side by side.

    python benchmarks/bench_backends.py [--runs 6] [--slots 2] [--epochs 4] [--rounds 1] [--gpus 0]

Both backends get the same work: `--runs` identical short runs (a small ViT on a generated
10-class image folder, one torch thread each) started at once on a node with `--slots`
training slots (`VIT_EXPLORER_MAX_RUNS` for the threads, the `vit_explorer_run_slot` resource
of a local Ray instance for the actors, one CPU each). The figure is runs / makespan * 3600,
the makespan from the first start() to the last run's checkpoint on this machine's disk. The
two are measured in alternating rounds in one process, so a shared machine slows both alike.

Also printed: the time from start() to the first step when a slot is free (what a student
waits: the actor adds the worker start and the data's trip through the object store), and the
step rate of one run alone on each backend, on the device the trainer picks (CUDA when
present; with --gpus 1 the actor asks Ray for a GPU).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vit_core import ray_runs  # noqa: E402
from vit_core.runs import TrainingRun  # noqa: E402
from vit_core.sources import DataSource  # noqa: E402
from vit_core.train import TrainConfig  # noqa: E402


def make_folder(root: Path, classes: int = 10, train: int = 96, test: int = 20, size: int = 32) -> Path:
    """A generated image folder: noisy images of one colour per class."""
    rng = np.random.default_rng(0)
    colours = rng.integers(30, 226, (classes, 3))
    for split, n in (("train", train), ("test", test)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = np.clip(rng.normal(0, 40, (size, size, 3)) + colours[c], 0, 255).astype(np.uint8)
                Image.fromarray(a).save(d / f"{i:03d}.png")
    return root


def bench_config(epochs: float) -> TrainConfig:
    """A small ViT (about 70k parameters): a run of a few epochs takes seconds per core."""
    return TrainConfig(
        patch_size=4,
        embed_dim=64,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        epochs=epochs,
        batch_size=32,
        lr=2e-3,
        warmup_epochs=0.5,
        eval_batch_size=200,
        name="bench",
    )


def make(backend: str, cfg: TrainConfig, source: DataSource):
    kw = {"snapshots": 4, "eval_size": 200}
    return ray_runs.RayRun(cfg, source, **kw) if backend == "ray" else TrainingRun(cfg, source, **kw)


def first_step_s(run, t0: float, timeout: float = 600) -> float:
    while run.view().step == 0:
        if not run.alive and run.view().done:
            raise RuntimeError(f"run ended before a step: {run.view().message}")
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError("no step within the timeout")
        time.sleep(0.01)
    return time.perf_counter() - t0


def batch_round(backend: str, cfg: TrainConfig, source: DataSource, n: int) -> dict[str, float]:
    """`n` runs started at once; the makespan, and the first run's start-to-first-step time."""
    t0 = time.perf_counter()
    group = [make(backend, cfg, source) for _ in range(n)]
    for run in group:
        run.start()
    first = first_step_s(group[0], t0)
    for run in group:
        run.join()
    makespan = time.perf_counter() - t0
    views = [run.view() for run in group]
    bad = [v.message for v in views if v.status != "finished" or v.checkpoint is None]
    if bad:
        raise RuntimeError(f"{backend}: {len(bad)} runs did not finish: {bad[0]}")
    return {"makespan": makespan, "first_step": first, "steps": views[0].total_steps}


def solo_rate(backend: str, cfg: TrainConfig, source: DataSource) -> tuple[float, str]:
    """Images/s of one run alone (the trainer's steady figure) and the device it trained on."""
    run = make(backend, cfg, source)
    run.start()
    run.join()
    v = run.view()
    if v.status != "finished":
        raise RuntimeError(f"{backend}: {v.message}")
    device = "cuda" if torch.cuda.is_available() and (backend == "local" or ray_runs.run_resources()[1] > 0) else "cpu"
    return v.step * cfg.batch_size / v.train_seconds, device


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.node()}: {os.cpu_count()} CPUs ({model or platform.processor()}), GPU {gpu}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, load average {load}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=6, help="identical runs started at once, per backend and round")
    ap.add_argument("--slots", type=int, default=2, help="training slots of the node (concurrent runs)")
    ap.add_argument("--epochs", type=float, default=4, help="length of each run")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds of both backends")
    ap.add_argument("--gpus", type=float, default=0, help="GPUs each Ray actor asks for (0: CPU)")
    args = ap.parse_args()

    import ray

    tmp = Path(tempfile.mkdtemp(prefix="bench-backends-"))
    os.environ.update(
        {
            "VIT_EXPLORER_TRAIN_DIR": str(tmp / "runs"),
            "VIT_EXPLORER_DATA": str(tmp / "cache"),
            "VIT_EXPLORER_MAX_RUNS": str(args.slots),
            "VIT_EXPLORER_TRAIN_THREADS": "1",
            ray_runs.RUN_CPUS_ENV: "1",
            ray_runs.RUN_GPUS_ENV: str(args.gpus),
        }
    )
    source = DataSource("path", str(make_folder(tmp / "data")))
    cfg = bench_config(args.epochs)
    print(machine())
    print(
        f"ray {ray.__version__}; {args.runs} runs of {cfg.epochs:g} epochs (batch {cfg.batch_size}) per round, "
        f"{args.slots} slots, 1 torch thread per run"
    )
    t = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=max(args.slots, os.cpu_count() or 1),
        num_gpus=torch.cuda.device_count() if args.gpus else 0,
        resources={ray_runs.SLOT_RESOURCE: args.slots},
        include_dashboard=False,
        log_to_driver=False,
    )
    print(f"ray.init (a fresh local instance): {time.perf_counter() - t:.1f} s, not counted below")
    t = time.perf_counter()
    warm = make("ray", bench_config(0.2), source)  # a first tiny run: the object store and workers warm up
    warm.start()
    warm.join()
    print(f"a first tiny run on Ray (warm-up): {time.perf_counter() - t:.1f} s, not counted below")
    results: dict[str, list[dict[str, float]]] = {"local": [], "ray": []}
    for r in range(args.rounds):
        for backend in ("local", "ray") if r % 2 == 0 else ("ray", "local"):
            res = batch_round(backend, cfg, source, args.runs)
            results[backend].append(res)
            print(
                f"round {r + 1} {backend:5s}: makespan {res['makespan']:6.1f} s, "
                f"{args.runs / res['makespan'] * 3600:7.0f} runs/h, first step after {res['first_step']:.2f} s"
            )
    print("\nbackend  runs/hour (median)  first step (median)  steps per run")
    for backend, rs in results.items():
        per_hour = statistics.median(args.runs / x["makespan"] * 3600 for x in rs)
        first = statistics.median(x["first_step"] for x in rs)
        print(f"{backend:7s}  {per_hour:18.0f}  {first:17.2f} s  {rs[0]['steps']:13.0f}")
    ratio = statistics.median(
        b["makespan"] / a["makespan"] for a, b in zip(results["local"], results["ray"], strict=True)
    )
    extra = statistics.median(
        (b["makespan"] - a["makespan"]) / math.ceil(args.runs / args.slots)
        for a, b in zip(results["local"], results["ray"], strict=True)
    )
    print(f"Ray makespan / local makespan: {ratio:.2f}; Ray's extra seconds per run in a slot: {extra:.1f}")
    print("\nstep rate of one run alone:")
    for backend in ("local", "ray"):
        rate, device = solo_rate(backend, cfg, source)
        print(f"  {backend:5s} on {device}: {rate:,.0f} images/s")
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    ray.shutdown()


if __name__ == "__main__":
    main()
