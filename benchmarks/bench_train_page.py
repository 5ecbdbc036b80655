"""The Train page's cost: in-app training speed against the CLI, and page reruns while training.

    python benchmarks/bench_train_page.py [--data data/cifar10] [--epochs 0.15] [--rounds 2] [--poll 1.0] [--threads N]

Runs, alternately and `--rounds` times each (so that a CPU shared with other work slows both alike):

* the CLI, `python -m vit_core.train --preset quick --data DATA --epochs EPOCHS --no-bar` in a
  subprocess; its speed is `train_images_per_s` of the run's metrics.json (images / training
  seconds, evaluation excluded);
* the app: pages/7_train.py driven by Streamlit's AppTest in this process, the same preset and
  epochs, started with the page's Start button and polled like the page's fragment does (one
  page rerun every `--poll` seconds) until the run has finished. Its speed is reported twice:
  the trainer's own measure (same definition as the CLI's), and the wall-clock rate from the
  first to the last step, which also pays for the page's per-step bookkeeping, the snapshots
  (position similarity, filter PCA, probe attention) and the reruns competing for the CPU.

On a busy CPU, two OpenMP threads can spin-wait for each other so badly that the thread count
decides the result: with torch's default (all cores) a step in the CLI's main thread was
measured 2-5x slower than the same step in a worker thread, and both slower than one thread.
`--threads 1` compares the two at one thread each, where that effect is gone.

The page rerun time is the wall time of each `AppTest.run()` while the thread trains: the page
script (header, live fragment: progress, metrics, curves, three snapshot figures) without
app.py's sidebar, which AppTest runs only on the first run.

Prints one line per run and a summary: in-app / CLI images/s, rerun median / p90 / max.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cli_run(data: str, epochs: float, out: Path, threads: int | None) -> dict:
    cmd = [sys.executable, "-m", "vit_core.train", "--preset", "quick", "--data", data, "--epochs", str(epochs)]
    cmd += ["--out", str(out), "--no-bar"] + (["--threads", str(threads)] if threads else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"CLI failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    m = json.loads((out / "metrics.json").read_text())
    return {"images_per_s": m["train_images_per_s"], "steps": m["step"], "train_s": m["train_seconds"], "wall_s": wall}


def app_run(data: str, epochs: float, poll: float, runs_dir: Path) -> dict:
    from streamlit.testing.v1 import AppTest

    os.environ["VIT_EXPLORER_TRAIN_DIR"] = str(runs_dir)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.switch_page("pages/7_train.py")
    at.run()
    at.radio(key="train_source").set_value("path")
    at.text_input(key="train_path").set_value(data)
    at.selectbox(key="train_preset").set_value("quick")
    at.run()  # the preset's on_change sets every knob
    at.number_input(key="train_epochs").set_value(epochs)
    at.run()
    if at.exception:
        raise SystemExit(f"page error: {[e.message for e in at.exception]}")
    t0 = time.perf_counter()
    at.button(key="train_start").click().run()
    run = at.session_state["train_run"]
    reruns = []
    while run.alive:
        time.sleep(poll)
        v = run.view()
        if v.status != "training":
            continue  # loading the data, or evaluating at the end: not what a poll during training costs
        t = time.perf_counter()
        at.run()
        reruns.append(time.perf_counter() - t)
        if at.exception:
            raise SystemExit(f"page error: {[e.message for e in at.exception]}")
    wall = time.perf_counter() - t0
    v = run.view()
    if v.status != "finished":
        raise SystemExit(f"in-app run ended {v.status}: {v.message}")
    return {
        "images_per_s": v.step * v.config.batch_size / v.train_seconds,
        "wall_images_per_s": v.wall_images_per_s,
        "steps": v.step,
        "snapshots": len(v.snapshots),
        "train_s": v.train_seconds,
        "wall_s": wall,
        "reruns": reruns,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/cifar10", help="CIFAR-10 image folder, archive or batches folder")
    p.add_argument("--epochs", type=float, default=0.15, help="the short budget, in epochs of the quick preset")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--poll", type=float, default=1.0, help="seconds between page reruns (the fragment's run_every)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for both (CLI --threads; the app's training thread: $VIT_EXPLORER_TRAIN_THREADS); "
        "default: torch's default in each",
    )
    args = p.parse_args()
    data = str((ROOT / args.data).resolve()) if not Path(args.data).is_absolute() else args.data
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["VIT_EXPLORER_TRAIN_THREADS"] = str(args.threads)  # read by the app's training thread
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; load {os.getloadavg()}"
    )
    print(f"preset quick, {args.epochs} epochs of {data}; CLI and app alternate, {args.rounds} rounds each")
    cli, app = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            c = cli_run(data, args.epochs, Path(tmp) / f"cli{r}", args.threads)
            cli.append(c)
            print(
                f"round {r + 1} CLI: {c['images_per_s']:.1f} img/s over {c['steps']} steps "
                f"({c['train_s']:.1f} s training, {c['wall_s']:.1f} s wall with loading and evaluation); load {os.getloadavg()[0]:.1f}"
            )
            a = app_run(data, args.epochs, args.poll, Path(tmp) / "app")
            app.append(a)
            rr = sorted(a["reruns"])
            print(
                f"round {r + 1} app: {a['images_per_s']:.1f} img/s trainer-measured, {a['wall_images_per_s']:.1f} img/s "
                f"wall first-to-last step, over {a['steps']} steps, {a['snapshots']} snapshots; {len(rr)} page reruns while "
                f"training: median {statistics.median(rr):.3f} s, max {rr[-1]:.3f} s; load {os.getloadavg()[0]:.1f}"
            )
    cli_rate = statistics.median(c["images_per_s"] for c in cli)
    app_rate = statistics.median(a["images_per_s"] for a in app)
    app_wall = statistics.median(a["wall_images_per_s"] for a in app)
    ratios = [a["images_per_s"] / c["images_per_s"] for a, c in zip(app, cli)]
    wall_ratios = [a["wall_images_per_s"] / c["images_per_s"] for a, c in zip(app, cli)]
    reruns = sorted(x for a in app for x in a["reruns"])
    p90 = reruns[min(len(reruns) - 1, int(0.9 * len(reruns)))]
    print()
    print(f"CLI            {cli_rate:8.1f} img/s (median of {len(cli)})")
    print(
        f"app (trainer)  {app_rate:8.1f} img/s = {statistics.median(ratios):.0%} of the CLI (median of per-round ratios)"
    )
    print(
        f"app (wall)     {app_wall:8.1f} img/s = {statistics.median(wall_ratios):.0%} of the CLI (with snapshots and polling)"
    )
    print(
        f"page rerun while training: median {statistics.median(reruns):.3f} s, p90 {p90:.3f} s, max {reruns[-1]:.3f} s ({len(reruns)} reruns)"
    )


if __name__ == "__main__":
    main()
