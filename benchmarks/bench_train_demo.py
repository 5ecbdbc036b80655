"""The `demo` preset against its promise: >= 50% CIFAR-10 test accuracy within 3 minutes of training
on a 2-core CPU, with row/column structure in the position-similarity snapshot.

    python benchmarks/bench_train_demo.py --data /work/shared/data/cifar10_jpeg.tar.gz [--threads 1] [--evals 8]
        [--set embed_dim=96 --set epochs=1.5]

Trains the preset the way the app does (the Trainer on a background-free loop, `run_threads()`
threads: one per run on a 2-core server with two slots) and prints, at `--evals` points of the
schedule: training seconds (evaluation excluded, as in the app's progress), test accuracy on
all 10,000 test images, CPU seconds of the training steps (on one thread, what the steps
would take on an idle core: a busy shared machine stretches wall time, not CPU time), and
`position_structure_score` of the position embeddings (mean cosine
similarity of 4-neighbour positions minus that of all pairs: ~0 for random embeddings, 0.1-0.3
for a visible grid). The machine's load average is printed with the figures: the CPU may be
shared with other work, which slows a run down.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vit_core.analysis.emergence import model_position_structure_score  # noqa: E402
from vit_core.sources import load_split, resolve_source  # noqa: E402
from vit_core.train import PRESETS, TrainConfig, Trainer  # noqa: E402


def _value(text: str) -> object:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="anything vit_core.sources accepts (the JPEG archive works)")
    p.add_argument("--preset", default="demo")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--evals", type=int, default=8, help="evaluations over the schedule")
    p.add_argument("--set", action="append", default=[], help="FIELD=VALUE override of the preset")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg: TrainConfig = PRESETS[args.preset]
    cfg = cfg.replace(**{k: _value(v) for k, v in (s.split("=", 1) for s in args.set)})
    folder = resolve_source(args.data)
    train, test = load_split(folder, "train"), load_split(folder, "test")
    _, total = cfg.steps(len(train))
    cfg = cfg.replace(eval_every=max(1, total // args.evals))
    rows = []
    cpu = {"train": 0.0, "last": time.process_time()}

    def on_step(m) -> None:
        now = time.process_time()
        cpu["train"] += now - cpu["last"]
        cpu["last"] = now

    def on_eval(r) -> None:
        score = model_position_structure_score(trainer.model)
        rows.append((r.step, r.elapsed_s, cpu["train"], r.acc, score, os.getloadavg()[0]))
        print(
            f"step {r.step:5d}  train {r.elapsed_s:6.1f} s wall, {cpu['train']:6.1f} s CPU  test acc {r.acc:6.2%}  "
            f"structure {score:+.3f}  load {rows[-1][5]:.1f}",
            flush=True,
        )
        cpu["last"] = time.process_time()

    trainer = Trainer(cfg, train, test, on_step=on_step, on_eval=on_eval)
    print(
        f"{args.preset}: {cfg.to_dict()}\n{trainer.model.num_params():,} params, {total} steps, "
        f"{args.threads} thread(s), {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()}",
        flush=True,
    )
    t0 = time.perf_counter()
    res = trainer.run()
    wall = time.perf_counter() - t0
    print(
        f"\nfinal: test acc {res.final.acc:.2%} after {trainer.train_seconds:.0f} s of training wall time, "
        f"{cpu['train']:.0f} s of training CPU time ({wall:.0f} s wall with evaluations); "
        f"structure {rows[-1][4]:+.3f}; load average now {os.getloadavg()}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
