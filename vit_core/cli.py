"""The command line of the trainer: `python -m vit_core.train --preset quick --data DATA --out runs/quick`.

`--help` lists every `TrainConfig` field as an override. `--data` is anything
`vit_core.sources.resolve_source` accepts: the CIFAR-10 python archive, the JPEG archive of an
image folder, the extracted official folder or an image folder (default: the download cache).
`--resume` continues `<out>/last.pt` exactly; `--export PATH` also writes each new best model
there; `--export-only` writes `<out>/best.safetensors` there and measures it; `--threads auto`
suits a CPU shared with other work (`ThreadTuner`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, DataError
from .evaluation import EvalResult
from .export import export_run
from .sources import load_split, resolve_source
from .train import PRESETS, StepMetrics, TrainConfig, Trainer

_NOT_OPTIONS = ("mean", "std", "betas")  # TrainConfig fields without a command-line override


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m vit_core.train", description="Train a ViT on CIFAR-10 or an image folder."
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="starting recipe (default: quick)")
    p.add_argument(
        "--data",
        default=None,
        help="CIFAR-10 archive or extracted folder, image folder, or a tar of one; "
        "default: the cache ($VIT_EXPLORER_DATA)",
    )
    p.add_argument("--download", action="store_true", help="download the official CIFAR-10 archive if needed")
    p.add_argument("--cache-dir", default=None, help="dataset cache folder")
    p.add_argument(
        "--out", required=True, help="run folder: last.pt, best.safetensors, model.safetensors, metrics.json"
    )
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    p.add_argument("--export", default=None, help="also write each new best model (safetensors) here")
    p.add_argument(
        "--export-only",
        action="store_true",
        help="no training: write <out>/best.safetensors to --export (float16), evaluate the written file on the "
        "test split and put its metrics beside it (<name>.metrics.json)",
    )
    p.add_argument(
        "--threads",
        default=None,
        help="torch CPU threads, or 'auto': re-measure 1 vs all cores every few hundred steps and keep the faster "
        "(a busy shared CPU can make all-core steps several times slower than one-core steps)",
    )
    p.add_argument("--no-bar", action="store_true", help="print one line per evaluation instead of a progress bar")
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_OPTIONS:
            continue
        typ = {"int": int, "float": float, "str": str, "bool": _bool}.get(str(f.type), str)
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=typ, default=None, help=f"override {f.name}")
    return p.parse_args(argv)


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, not {s!r}")


def _fail(e: Exception | str) -> int:
    print(f"error: {e}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    tuner = None
    if args.threads == "auto":
        tuner = ThreadTuner(log=print)
    elif args.threads:
        torch.set_num_threads(int(args.threads))
    changes = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if f.name not in _NOT_OPTIONS and getattr(args, f.name) is not None
    }
    out = Path(args.out)
    if args.export_only and not args.export:
        return _fail("--export-only needs --export PATH")
    try:
        folder = resolve_source(args.data, args.cache_dir, args.download, progress=_download_bar())
        test = load_split(folder, "test", cache_dir=args.cache_dir)
        if args.export_only:
            doc = export_run(out, args.export, test)
            print(
                f"wrote {args.export}: test accuracy {doc['test_acc']:.2%} (step {doc['step']}, epoch {doc['epoch']})"
            )
            return 0
        train = load_split(folder, "train", cache_dir=args.cache_dir)
    except (DataError, CheckpointError) as e:
        return _fail(e)
    bar = _Bar(disable=args.no_bar)
    if tuner is not None:
        tuner.log = bar.write

    def on_eval(r: EvalResult) -> None:
        bar.write(
            f"step {r.step} epoch {r.epoch:.2f} train_loss {r.train_loss:.4f} test_loss {r.loss:.4f} "
            f"test_acc {r.acc:.4f} train_time {r.elapsed_s:.0f}s"
        )

    def on_step(m: StepMetrics) -> None:
        bar.update(m)
        if tuner is not None:
            tuner.after_step(m)

    kwargs = {"on_step": on_step, "on_eval": on_eval, "on_message": bar.write, "export_path": args.export}
    try:
        if args.resume and (out / "last.pt").is_file():
            trainer = Trainer.resume(out / "last.pt", train, test, out_dir=out, config_changes=changes, **kwargs)
            bar.write(f"resuming {out / 'last.pt'} at step {trainer.step}")
        else:
            if args.resume:
                bar.write(f"no {out / 'last.pt'} yet; starting a new run")
            trainer = Trainer(PRESETS[args.preset].replace(**changes), train, test, out_dir=out, **kwargs)
    except (CheckpointError, DataError) as e:
        return _fail(e)
    bar.write(
        f"{trainer.cfg.name}: {trainer.model.num_params() / 1e6:.2f}M params, {trainer.total_steps} steps "
        f"({trainer.cfg.epochs} epochs) on {trainer.device}, {torch.get_num_threads()} threads"
    )
    bar.start(trainer.step, trainer.total_steps)
    try:
        res = trainer.run()
    except KeyboardInterrupt:
        trainer.save_state()
        bar.close()
        print(f"interrupted at step {trainer.step}; resume with --resume --out {out}", file=sys.stderr)
        return 130
    bar.close()
    print(res.message)
    return 0 if res.status != "diverged" else 1


class ThreadTuner:
    """Keeps whichever CPU thread count (1 or all) currently gives faster steps.

    On a CPU shared with other busy processes, OpenMP threads that wait for each other can
    make an all-core step several times slower than a one-core step; alone, all cores win.
    Every `period` steps the other setting is tried for `probe` steps and kept if faster.
    Thread counts change float summation order, so runs that must be bit-exact use a fixed count.
    """

    def __init__(self, period: int = 60, probe: int = 6, log: Callable[[str], None] | None = None) -> None:
        self.log = log
        self.options = sorted({1, max(1, os.cpu_count() or 1)})
        self.period, self.probe = period, probe
        self.current = self.options[-1]
        torch.set_num_threads(self.current)
        self.times: dict[int, list[float]] = {n: [] for n in self.options}
        self.last_t: float | None = None
        self.probing: int | None = None
        self.steps = 0

    def after_step(self, m: StepMetrics) -> None:
        now = time.perf_counter()
        if self.last_t is not None:
            self.times[self.current].append(now - self.last_t)
            self.times[self.current] = self.times[self.current][-self.probe :]
        self.last_t = now
        self.steps += 1
        if len(self.options) == 1:
            return
        if self.probing is None and self.steps % self.period == self.probe:
            self.probing = self.current
            other = [n for n in self.options if n != self.current][0]
            self.times[other] = []
            self._set(other)
        elif self.probing is not None and len(self.times[self.current]) >= self.probe:
            a = sorted(self.times[self.current])[self.probe // 2]
            b = sorted(self.times[self.probing])[len(self.times[self.probing]) // 2]
            keep = self.current if a < b else self.probing
            if keep != self.probing and self.log:
                self.log(f"threads {self.probing} -> {keep} (median step {a:.2f}s vs {b:.2f}s)")
            self._set(keep)
            self.probing = None

    def _set(self, n: int) -> None:
        self.current = n
        torch.set_num_threads(n)
        self.last_t = None


def _download_bar() -> Callable[[int, int], None]:
    state = {"last": 0.0}

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - state["last"] > 0.5 or (total and done == total):
            state["last"] = now
            msg = f"{done / 2**20:.1f} / {total / 2**20:.1f} MB" if total else f"{done / 2**20:.1f} MB"
            print(f"\rdownloading CIFAR-10: {msg}", end="", file=sys.stderr, flush=True)
            if total and done == total:
                print(file=sys.stderr)

    return progress


class _Bar:
    """A tqdm progress bar over steps (a plain line per evaluation when disabled or not installed)."""

    def __init__(self, disable: bool = False) -> None:
        self.disable = disable
        self._bar: Any = None

    def start(self, step: int, total: int) -> None:
        if self.disable:
            return
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm is in requirements.txt
            self.disable = True
            return
        interval = 1.0 if sys.stderr.isatty() else 60.0  # a log file gets a line a minute
        self._bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True, mininterval=interval)

    def update(self, m: StepMetrics) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{m.loss:.3f}", lr=f"{m.lr:.2e}", img_s=f"{m.images_per_s:.0f}", refresh=False)

    def write(self, msg: str) -> None:
        if self._bar is not None:
            self._bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
