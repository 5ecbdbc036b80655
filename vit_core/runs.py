"""Training runs for an app: one background thread per run, a lock-protected view, a server cap.

A `TrainingRun` loads its data, builds a `vit_core.train.Trainer` and trains on its own
thread. That thread never touches a UI: it writes into the run under `run.lock`, and a UI
reads a consistent copy with `run.view()`. Control goes the other way through events
(pause, unpause, stop), so a click never waits for a training step.

    run = TrainingRun(cfg, DataSource("path", "data/cifar10"))
    run.start()                  # trains now, or waits in the queue while every slot is taken
    v = run.view()               # RunView: status, queue place, progress, curves, snapshots, evaluations
    run.pause(); run.unpause()   # the loop waits between steps
    run.stop()                   # saves last.pt (exact resume) and model.safetensors
    run.resume()                 # a stopped run continues from its last.pt on a new thread
    run.release()                # the owner went away: stop after the grace period

Every `snapshot_every` steps the thread records what the explorer pages show for the model
as it is then (`vit_core.snapshots.Snapshot`). Where the images come from is
`vit_core.sources`, what a run will cost `vit_core.costs`, the CIFAR-10 download on a thread
`vit_core.download_job`.

Where runs train is `vit_core.run_backend`'s choice: threads of this process (this module) by
default, actors on a Ray cluster with `VIT_EXPLORER_RAY_ADDRESS` (`vit_core.ray_runs`); a front
end calls `vit_core.run_backend.start_run(...)` and gets either, with the same methods and `view()`.

Server-wide settings (environment variables, read when used):
    VIT_EXPLORER_MAX_RUNS      concurrent training threads in this process (default 2)
    VIT_EXPLORER_RUN_GRACE_S   seconds a run whose owner disconnected keeps going, waiting
                               for a reconnect, before it is stopped (default 30)
    VIT_EXPLORER_TRAIN_DIR     where run folders go (default <tmp>/vit-explorer-train; run
                               folders this module made, older than a day, are removed when a
                               new run starts: only folders holding its marker file)
    VIT_EXPLORER_TRAIN_THREADS torch threads of each training thread (default: the cores
                               divided by VIT_EXPLORER_MAX_RUNS, at least 1)

and the caps of `vit_core.limits` (`max_epochs`, `max_run_seconds`, `paused_release_s`,
`max_train_img_size`, `max_tokens`): a run over one is refused with the reason, a run that
reaches its wall-clock cap is stopped (and can be looked at, not resumed), and a run paused
for longer than `paused_release_s` is stopped so that its slot goes to the next in the queue.

When every slot is taken, `start()` puts the run in a first-in first-out queue (`QUEUED`,
`RunView.queue_position`) and it starts by itself when a slot frees.

An owner (an app session) can pass `owner_alive`, a callable that says whether it is still
connected; a watchdog thread checks it once a second for every active run, so a run whose
owner disappeared is stopped even if no release callback ever arrives.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .batches import normalize_batch
from .checkpoints import save_checkpoint
from .cnn import is_cnn
from .data import ImageDataset
from .errors import DataError, VitCoreError
from .evaluation import EvalResult, eval_result, evaluate
from .limits import check_model_cost, current_limits
from .model import VisionTransformer
from .snapshots import Snapshot, take_snapshot
from .sources import DataSource, load_source
from .subsets import balanced_subset
from .threads import TRAIN_THREADS_ENV, training_threads
from .train import PRESETS, StepMetrics, TrainConfig, Trainer

MAX_RUNS_ENV = "VIT_EXPLORER_MAX_RUNS"
GRACE_ENV = "VIT_EXPLORER_RUN_GRACE_S"
RUNS_DIR_ENV = "VIT_EXPLORER_TRAIN_DIR"
DEFAULT_MAX_RUNS = 2
DEFAULT_GRACE_S = 30.0
STALE_RUN_S = 24 * 3600  # run folders older than this are swept when a new run starts
SNAPSHOT_MEASURE_IMAGES = 64  # test images each ViT snapshot's emergence measures average over
RUN_MARKER = ".vit-explorer-run"  # written into every run folder this module creates; the sweep needs it

# Recipes the app offers: a demo for a lesson, the trainer's two, and a longer run of the bundled recipe.
APP_PRESETS: dict[str, TrainConfig] = {
    "demo": PRESETS["demo"],
    "quick": PRESETS["quick"],
    "bundled": PRESETS["bundled"],
    "long": PRESETS["bundled"].replace(epochs=30, warmup_epochs=2.0, name="ViT-CIFAR10 (30 epochs)"),
}
# What each preset is for (no times: the page shows the estimate for this server, and BENCHMARKS).
PRESET_NOTES = {
    "demo": "for a lesson: past 50% test accuracy in a few minutes, with the position grid visible",
    "quick": "the curves move within the first minute; a better model than the demo",
    "bundled": "the first run of the bundled model: 1.5x the width and depth of quick",
    "long": "the bundled recipe for 30 epochs (the CLI's --preset long is 100 epochs)",
}
# Measured by benchmarks/bench_train_demo.py (demo) and the runs in assets/README.md ("Presets"):
# (what was measured, on which machine). Shown beside the estimate for this server.
BENCHMARKS = {
    "demo": "50.5% test accuracy after 3.0 min of training on one core of a 2-core AMD EPYC CPU (182 s of CPU time; "
    "the machine was shared, load 13-58), position grid visible from the first evaluation",
    "quick": "about 60% test accuracy after 10 min (5 epochs) on a 2-core AMD EPYC CPU",
    "bundled": "about 2.7x the time per image of quick, same machine",
    "long": "about 3 h on an idle 2-core AMD EPYC CPU",
}


def preset_summary(key: str, estimate_s: float | None = None) -> str:
    """'patch 4 (65 tokens), D 128, 5 epochs: <note>' for a preset of `APP_PRESETS`, with an estimate if given."""
    cfg = APP_PRESETS[key]
    tokens = (cfg.img_size // cfg.patch_size) ** 2 + 1
    est = f" · about {_fmt_minutes(estimate_s)} on this server now" if estimate_s is not None else ""
    epochs = f"{cfg.epochs:g} epoch{'' if cfg.epochs == 1 else 's'}"
    return f"patch {cfg.patch_size} ({tokens} tokens), D {cfg.embed_dim}, {epochs}{est}: {PRESET_NOTES.get(key, '')}"


def _fmt_minutes(s: float) -> str:
    if s < 90:
        return f"{max(1, round(s)):.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


# run statuses
QUEUED, LOADING, TRAINING, PAUSED = "queued", "loading", "training", "paused"
STOPPING, FINISHING = "stopping", "finishing"
STOPPED, FINISHED, DIVERGED, FAILED = "stopped", "finished", "diverged", "failed"
ACTIVE_STATUSES = (QUEUED, LOADING, TRAINING, PAUSED, STOPPING, FINISHING)
DONE_STATUSES = (STOPPED, FINISHED, DIVERGED, FAILED)


class RunLimitError(VitCoreError):
    """A run the server will not train: over a per-run cap (epochs, wall-clock time, model size)."""


def max_runs() -> int:
    """Concurrent training runs allowed in this process (`$VIT_EXPLORER_MAX_RUNS`, default 2)."""
    try:
        return max(1, int(os.environ.get(MAX_RUNS_ENV, DEFAULT_MAX_RUNS)))
    except ValueError:
        return DEFAULT_MAX_RUNS


def release_grace_s() -> float:
    """Seconds a run whose owner went away keeps going (`$VIT_EXPLORER_RUN_GRACE_S`, default 30)."""
    try:
        return max(0.0, float(os.environ.get(GRACE_ENV, DEFAULT_GRACE_S)))
    except ValueError:
        return DEFAULT_GRACE_S


def run_threads() -> int:
    """Torch threads of one training run: $VIT_EXPLORER_TRAIN_THREADS, else the cores shared by `max_runs()` runs."""
    n = training_threads()
    return n if os.environ.get(TRAIN_THREADS_ENV, "").strip() else max(1, n // max_runs())


def check_run_config(cfg: TrainConfig, num_classes: int = 10) -> None:
    """Refuse a configuration over the server's per-run caps, before anything is spent on it.

    Raises:
        RunLimitError: too many epochs or too large an image side.
        ModelTooLargeError: too many tokens or too much attention memory (`limits.check_model_cost`).
    """
    lim = current_limits()
    if cfg.epochs > lim.max_epochs:
        raise RunLimitError(
            f"{cfg.epochs:g} epochs is more than this server allows for one run ({lim.max_epochs:g}, "
            "VIT_EXPLORER_MAX_EPOCHS). Choose fewer epochs."
        )
    if cfg.img_size > lim.max_train_img_size:
        raise RunLimitError(
            f"Images of {cfg.img_size}x{cfg.img_size} pixels are larger than this server trains on "
            f"({lim.max_train_img_size}x{lim.max_train_img_size}, VIT_EXPLORER_MAX_TRAIN_IMG_SIZE). Use smaller images."
        )
    if cfg.arch == "vit":  # the CNN baseline has no tokens or attention maps to cap
        check_model_cost(cfg.vit_config(num_classes), lim, source="This model")


def runs_root() -> Path:
    """The folder run folders are created in (`$VIT_EXPLORER_TRAIN_DIR`, default <tmp>/vit-explorer-train)."""
    env = os.environ.get(RUNS_DIR_ENV)
    return Path(env).expanduser() if env else Path(tempfile.gettempdir()) / "vit-explorer-train"


# --------------------------------------------------------------------------------------
# The registry of active runs, its cap and the owner watchdog
# --------------------------------------------------------------------------------------

_REGISTRY_LOCK = threading.Lock()
_ACTIVE: dict[str, TrainingRun] = {}
_QUEUE: list[TrainingRun] = []  # runs waiting for a slot, first come first served
_WATCHDOG: threading.Thread | None = None
WATCHDOG_PERIOD_S = 1.0


def active_runs() -> list[TrainingRun]:
    """Runs whose thread is working (loading, training, paused, finishing) in this process."""
    with _REGISTRY_LOCK:
        return list(_ACTIVE.values())


def queued_runs() -> list[TrainingRun]:
    """Runs waiting for a slot, first in line first."""
    with _REGISTRY_LOCK:
        return list(_QUEUE)


def queue_position(run: TrainingRun) -> int:
    """1 for the first run in the queue, 2 for the next...; 0 when `run` is not queued."""
    with _REGISTRY_LOCK:
        return _QUEUE.index(run) + 1 if run in _QUEUE else 0


def _claim_slot(run: TrainingRun) -> bool:
    """Take a slot for `run` (True), or put it at the end of the queue (False)."""
    with _REGISTRY_LOCK:
        if run.id in _ACTIVE:
            return True
        got = len(_ACTIVE) < max_runs() and not _QUEUE
        if got:
            _ACTIVE[run.id] = run
        elif run not in _QUEUE:
            _QUEUE.append(run)
        _ensure_watchdog_locked()
    return got


def _ensure_watchdog_locked() -> None:
    global _WATCHDOG
    if _WATCHDOG is None or not _WATCHDOG.is_alive():
        _WATCHDOG = threading.Thread(target=_watch_owners, name="vit-runs-watchdog", daemon=True)
        _WATCHDOG.start()


def _leave_queue(run: TrainingRun) -> bool:
    with _REGISTRY_LOCK:
        if run in _QUEUE:
            _QUEUE.remove(run)
            return True
        return False


def _free_slot(run: TrainingRun) -> None:
    """Give `run`'s slot up and start the runs first in the queue on the slots now free."""
    starting = []
    with _REGISTRY_LOCK:
        _ACTIVE.pop(run.id, None)
        while _QUEUE and len(_ACTIVE) < max_runs():
            nxt = _QUEUE.pop(0)
            _ACTIVE[nxt.id] = nxt
            starting.append(nxt)
    for nxt in starting:
        nxt._start_thread()


def _watch_owners() -> None:
    """Every second: stop runs whose owner is gone, runs past their wall-clock cap, runs paused too long."""
    global _WATCHDOG
    while True:
        time.sleep(WATCHDOG_PERIOD_S)
        with _REGISTRY_LOCK:
            runs = list(_ACTIVE.values()) + list(_QUEUE)
            if not runs:
                _WATCHDOG = None
                return
        now = time.monotonic()
        for run in runs:
            run._check_owner(now)
            run._check_caps(now)


# --------------------------------------------------------------------------------------
# A run
# --------------------------------------------------------------------------------------


@dataclass
class RunView:
    """A consistent copy of a run's state, for drawing (lists are copies; snapshots are shared, read-only)."""

    id: str
    status: str
    message: str
    detail: str  # what the thread is doing now, in a few words
    config: TrainConfig
    source: str
    out_dir: Path
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    images_per_s: float = 0.0  # the trainer's smoothed throughput (steps only)
    wall_images_per_s: float = 0.0  # images / wall seconds between the first and the last step of this thread
    eta_s: float = 0.0
    train_seconds: float = 0.0
    params: int = 0
    tokens: int = 0
    train_size: int = 0
    test_size: int = 0
    eval_size: int = 0
    class_names: list[str] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    acc: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    evals: list[EvalResult] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    final: EvalResult | None = None  # on the whole test set, after the run
    mistakes: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None  # model.safetensors, once written
    can_resume: bool = False
    paused: bool = False  # a pause was asked for
    held: bool = False  # ... and the training loop is waiting in it (no step is in flight)
    download: tuple[int, int] | None = None  # (bytes done, total) while data is downloaded
    loading: tuple[str, int, int] | None = None  # (what, done, total) while data is unpacked and decoded
    queue_position: int = 0  # 1 = next to start; 0 = not queued
    final_progress: tuple[int, int] | None = None  # (test images done, all) while the final evaluation runs
    wall_seconds: float = 0.0  # wall-clock time the run has held a training slot (what max_run_seconds caps)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def done(self) -> bool:
        return self.status in DONE_STATUSES

    @property
    def progress(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0


class RunHandle:
    """What a run on a thread (`TrainingRun`) and a run on a Ray actor (`vit_core.ray_runs.RayRun`)
    share: the follower thread, the owner's attach/release, the loading callbacks and the parts of
    `view()` that both keep the same way. The subclass sets the attributes in `__init__`."""

    lock: threading.Lock
    _thread: threading.Thread | None
    _stop_requested: threading.Event

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the run's thread; True when it has ended (or never started)."""
        t = self._thread
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True

    @property
    def alive(self) -> bool:
        """Whether the run's thread is running (waiting for a slot, training, or finishing)."""
        t = self._thread
        return t is not None and t.is_alive()

    # -- ownership ----------------------------------------------------------------------

    def attach(self, owner_alive: Callable[[], bool] | None = None) -> None:
        """The owner is (back) in charge: cancel a pending release."""
        with self.lock:
            self._released = False
            self._owner_gone_since = None
            if owner_alive is not None:
                self._owner_alive = owner_alive

    def release(self) -> None:
        """The owner went away (its session ended): stop after `release_grace_s()` unless it comes back.

        With a grace period of 0 the run is stopped at once, without the final evaluation.
        """
        with self.lock:
            self._released = True
        self._check_owner(time.monotonic())

    def _check_owner(self, now: float) -> None:  # pragma: no cover - each backend has its own
        raise NotImplementedError

    def _owner_gone(self) -> bool:
        check = self._owner_alive
        if check is not None:
            try:
                return not check()
            except Exception:  # noqa: BLE001 - a failing probe must not kill the watchdog
                return self._released
        return self._released

    # -- the thread ---------------------------------------------------------------------

    def _set(self, **fields: object) -> None:
        with self.lock:
            for k, v in fields.items():
                setattr(self, "_" + k, v)

    def _on_load(self, what: str, done: int, total: int) -> None:
        if self._stop_requested.is_set():
            raise _StopLoading
        detail = "unpacking the archive" if what == "unpacking" else f"reading the {what}"
        self._set(loading=(what, done, total), detail=detail)

    def _on_download(self, done: int, total: int) -> None:
        self._set(download=(done, total), detail="downloading CIFAR-10")

    def _wall_used(self, now: float) -> float:
        return self._wall_before + (now - self._t_launch if self._t_launch is not None else 0.0)

    # -- reading (any thread) -----------------------------------------------------------

    def _can_resume_locked(self) -> bool:
        return (
            self._status == STOPPED
            and not self._owner_ended
            and not self._no_resume
            and (self._thread is None or not self._thread.is_alive())
            and (self.out_dir / "last.pt").is_file()
            and self._data is not None
        )

    def _view_common_locked(self, position: int) -> dict[str, Any]:
        """The `RunView` fields both backends fill the same way (under `self.lock`)."""
        train, test = self._data if self._data is not None else (None, None)
        return dict(
            id=self.id,
            status=self._status,
            message=self._message,
            detail=self._detail,
            config=self.cfg,
            source=self.source.label(),
            out_dir=self.out_dir,
            test_size=len(test) if test is not None else 0,
            class_names=list(train.class_names) if train is not None else [],
            steps=list(self._steps),
            loss=list(self._loss),
            acc=list(self._acc),
            lr=list(self._lr),
            evals=list(self._evals),
            snapshots=list(self._snapshots),
            final=self._final,
            mistakes=list(self._mistakes),
            checkpoint=self._checkpoint,
            can_resume=self._can_resume_locked(),
            paused=self._status == PAUSED,
            download=self._download,
            loading=self._loading,
            queue_position=position if self._status == QUEUED else 0,
            final_progress=self._final_progress,
        )

    def test_image(self, index: int) -> np.ndarray | None:
        """(H, W, C) uint8 test image `index` (for the mistakes gallery and the probe), or None."""
        data = self._data
        if data is None:
            return None
        return data[1].images[index].permute(1, 2, 0).numpy()


class TrainingRun(RunHandle):
    """One training run on a background thread, observed through `view()`.

    Args:
        cfg: the run's configuration (`img_size` is set from the data when it is loaded).
        source: where the images come from.
        out_dir: the run folder (last.pt, best.safetensors, model.safetensors, metrics.json);
            default: a new folder under `runs_root()`.
        snapshots: about how many snapshots to take over the run (plus one at step 0 and one
            at the end).
        min_snapshot_interval_s: wall seconds between two snapshots at least, so that a short
            run (or a slow machine) does not spend a noticeable share of its time on them.
        eval_size: test images used for the evaluations during training (a fixed, shuffled
            subset, to keep them cheap); the whole test set is evaluated at the end.
        probe_index: index in the test set of the probe image for the [CLS] attention maps.
        owner_alive: says whether the owner (an app session) is still connected; None: only
            `release()` ends the ownership.
        name: a human name for the run's model.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        source: DataSource,
        out_dir: str | os.PathLike | None = None,
        snapshots: int = 40,
        min_snapshot_interval_s: float = 2.0,
        eval_size: int = 2000,
        probe_index: int = 0,
        owner_alive: Callable[[], bool] | None = None,
        name: str | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.cfg = cfg
        self.source = source
        self._own_dir = out_dir is None  # a folder this module makes (and marks for the stale-run sweep)
        self.out_dir = (
            Path(out_dir) if out_dir is not None else runs_root() / f"{time.strftime('%Y%m%d-%H%M%S')}-{self.id}"
        )
        self.n_snapshots = max(1, int(snapshots))
        self.min_snapshot_interval_s = float(min_snapshot_interval_s)
        self.eval_size = int(eval_size)
        self.probe_index = int(probe_index)
        self.name = name or cfg.name
        self.lock = threading.Lock()  # guards every field the thread writes and view() reads
        self._launch_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._trainer: Trainer | None = None
        self._data: tuple[ImageDataset, ImageDataset] | None = None
        self._probe: torch.Tensor | None = None
        self._measure_set: tuple[torch.Tensor, torch.Tensor] | None = None  # (images, labels) for snapshot measures
        self._status = "new"
        self._message = ""
        self._detail = ""
        self._pause_requested = False
        self._stop_requested = threading.Event()
        self._owner_alive = owner_alive
        self._released = False
        self._owner_gone_since: float | None = None
        self._owner_ended = False
        self._download: tuple[int, int] | None = None
        self._held = False  # the training loop is waiting in a pause
        self._resume = False  # what the next thread start does
        self._loading: tuple[str, int, int] | None = None
        self._final_progress: tuple[int, int] | None = None
        self._end_note: str | None = None  # why the run was ended from outside (kept as its message)
        self._no_resume = False  # the run used its wall-clock allowance
        self._paused_since: float | None = None  # monotonic time the pause began
        self._t_launch: float | None = None  # monotonic time the current thread took its slot
        self._wall_before = 0.0  # slot seconds of earlier threads of this run
        # what view() copies
        self._steps: list[int] = []
        self._loss: list[float] = []
        self._acc: list[float] = []
        self._lr: list[float] = []
        self._evals: list[EvalResult] = []
        self._snapshots: list[Snapshot] = []
        self._last: StepMetrics | None = None
        self._final: EvalResult | None = None
        self._mistakes: list[dict] = []
        self._checkpoint: Path | None = None
        self._params = 0
        self._tokens = 0
        self._snapshot_every = 1
        self._t_snapshot = -math.inf  # perf_counter of the last snapshot
        self._t_first: float | None = None
        self._t_last: float | None = None
        self._n_first = 0
        self._n_last = 0

    # -- control (any thread) -----------------------------------------------------------

    def start(self) -> None:
        """Start training on a new thread now, or queue the run until a slot is free.

        Raises:
            RunLimitError: the configuration is over a per-run cap (epochs, image size).
            ModelTooLargeError: the model has more tokens or attention memory than the server allows.
            RuntimeError: this run was started before.
        """
        self._launch(resume=False)

    def resume(self) -> None:
        """Continue a stopped run from its `last.pt` (same batches and schedule as without the stop).

        Queued like `start` when the server is full.

        Raises:
            RuntimeError: the run is not stopped, has no checkpoint, used its time, or is still evaluating.
        """
        self._launch(resume=True)

    def _launch(self, resume: bool) -> None:
        with self._launch_lock:  # two clicks at once start one thread
            with self.lock:
                if self._thread is not None and self._thread.is_alive():
                    raise RuntimeError(
                        "the run's thread is still working (its final evaluation); try again in a moment"
                    )
                if resume and not self._can_resume_locked():
                    raise RuntimeError(f"a {self._status} run cannot be resumed")
                if not resume and self._status != "new":
                    raise RuntimeError("this run was already started; resume() continues a stopped run")
            if not resume:
                check_run_config(self.cfg)
                if self._own_dir:
                    self.out_dir.mkdir(parents=True, exist_ok=True)
                    (self.out_dir / RUN_MARKER).write_text("made by vit_core.runs; removed when stale\n")
            with self.lock:
                self._resume = resume
                self._status = QUEUED
                self._detail = "waiting for a free training slot"
                self._message = ""
                self._end_note = None
                self._stop_requested.clear()
                self._pause_requested = False
                self._released = False
                self._owner_gone_since = None
                self._owner_ended = False
            if _claim_slot(self):
                self._start_thread()

    def _start_thread(self) -> None:
        """Start the thread of a run that holds a slot."""
        with self.lock:
            self._status = LOADING
            self._detail = "loading the data"
            self._t_launch = time.monotonic()
            thread = threading.Thread(target=self._main, args=(self._resume,), name=f"vit-train-{self.id}", daemon=True)
            self._thread = thread
        try:
            thread.start()
        except BaseException:
            _free_slot(self)
            raise

    def pause(self) -> None:
        """Hold the training loop between steps (a paused run keeps its slot for `limits.paused_release_s`)."""
        with self.lock:
            if self._status not in ACTIVE_STATUSES or self._status == QUEUED:
                return
            self._pause_requested = True
            if self._paused_since is None:
                self._paused_since = time.monotonic()
            if self._trainer is not None:
                self._trainer.pause()
            if self._status == TRAINING:
                self._status = PAUSED

    def unpause(self) -> None:
        with self.lock:
            self._pause_requested = False
            self._paused_since = None
            if self._trainer is not None:
                self._trainer.unpause()
            if self._status == PAUSED:
                self._status = TRAINING

    def stop(self) -> None:
        """Ask the thread to stop; it saves `last.pt` and `model.safetensors` before it ends.

        The run says "stopped" as soon as the step in flight is done (a second or so); the final
        evaluation on the whole test set follows on the same thread (`RunView.final_progress`).
        A queued run leaves the queue.
        """
        if _leave_queue(self):
            with self.lock:
                self._status = STOPPED
                self._detail = ""
                self._message = self._end_note or "Left the queue before training started."
            return
        with self.lock:
            self._stop_requested.set()
            self._pause_requested = False
            self._paused_since = None
            if self._trainer is not None:
                self._trainer.request_stop()
            if self._status in (TRAINING, PAUSED, LOADING):
                self._status = STOPPING
                self._detail = "stopping after this step"

    # -- ownership (attach, release: RunHandle) -----------------------------------------

    def _check_owner(self, now: float) -> None:
        """Stop the run once its owner has been gone for `release_grace_s()`; with a grace of 0 at
        once, and its model, optimiser and data are let go when the thread ends."""
        if not self.alive and self._status != QUEUED:
            return
        gone = self._owner_gone()
        with self.lock:
            if not gone:
                self._owner_gone_since = None
                return
            if self._owner_gone_since is None:
                self._owner_gone_since = now
            expired = now - self._owner_gone_since >= release_grace_s()
            if expired and not self._owner_ended:
                self._owner_ended = True
                self._message = "The browser session that started this run went away, so the run was stopped."
                self._end_note = self._message
        if expired:
            self.stop()

    def _check_caps(self, now: float) -> None:
        """Stop a run past the server's wall-clock cap, or paused for longer than `paused_release_s`."""
        lim = current_limits()
        with self.lock:
            if self._status not in (LOADING, TRAINING, PAUSED) or self._end_note is not None:
                return
            if lim.max_run_seconds > 0 and self._wall_used(now) >= lim.max_run_seconds:
                self._no_resume = True
                self._end_note = (
                    f"This run reached the server's limit of {_fmt_minutes(lim.max_run_seconds)} per run "
                    "(VIT_EXPLORER_MAX_RUN_S), so it was stopped to let others train. Its model is kept: "
                    "use it on the other pages or download it."
                )
            elif (
                lim.paused_release_s > 0
                and self._status == PAUSED
                and self._paused_since is not None
                and now - self._paused_since >= lim.paused_release_s
            ):
                self._end_note = (
                    f"Paused for more than {_fmt_minutes(lim.paused_release_s)}, so the run gave its training slot "
                    "to others (VIT_EXPLORER_PAUSED_RELEASE_S). Its checkpoint is kept: Resume training continues it."
                )
            else:
                return
            self._message = self._end_note
        self.stop()

    # -- the thread ---------------------------------------------------------------------

    def _main(self, resume: bool) -> None:
        torch.set_num_threads(run_threads())  # not whatever the last page run left behind
        try:
            self._run(resume)
        except _StopLoading:
            self._set(
                status=STOPPED, detail="", loading=None, message=self._end_note or "Stopped before training started."
            )
        except VitCoreError as e:
            self._set(status=FAILED, message=str(e), detail="")
        except Exception as e:  # noqa: BLE001 - shown to the user; the thread must end cleanly
            self._set(status=FAILED, message=f"Training failed: {type(e).__name__}: {e}", detail="")
        finally:
            with self.lock:
                if self._owner_ended:
                    # Nobody will look at this run again: let go of model, optimiser and data now.
                    self._trainer = None
                    self._data = None
                    self._probe = None
                    self._snapshots = []
                    self._mistakes = []
                if self._t_launch is not None:
                    self._wall_before += time.monotonic() - self._t_launch
                    self._t_launch = None
                self._final_progress = None
            _free_slot(self)

    def _run(self, resume: bool) -> None:
        if self._data is None:
            _sweep_stale_runs(self.out_dir.parent)
            self._data = load_source(self.source, progress=self._on_download, on_load=self._on_load)
            self._set(download=None, loading=None)
        train, test = self._data
        if self._stop_requested.is_set():
            self._set(status=STOPPED, detail="", message=self._end_note or "Stopped before training started.")
            return
        cfg = self.cfg
        if train.image_size != (cfg.img_size, cfg.img_size):
            h, w = train.image_size
            if h != w or h % cfg.patch_size:
                raise DataError(
                    f"The images are {w}x{h}: the trainer needs square images whose side is a multiple of the patch size {cfg.patch_size}."
                )
            cfg = cfg.replace(img_size=h)
            with self.lock:
                self.cfg = cfg
        check_run_config(cfg, train.num_classes)  # the model the data makes, before it is built
        eval_set = _eval_subset(test, self.eval_size)
        kwargs = {"on_step": self._on_step, "on_eval": self._on_eval, "on_message": self._on_message}
        self._set(detail="building the model")
        if resume:
            trainer = Trainer.resume(self.out_dir / "last.pt", train, eval_set, out_dir=self.out_dir, **kwargs)
        else:
            trainer = Trainer(cfg, train, eval_set, out_dir=self.out_dir, **kwargs)
        probe = normalize_batch(test.images[self.probe_index % len(test)][None].to(trainer.device), cfg.mean, cfg.std)
        params = trainer.model.num_params()
        cnn = is_cnn(trainer.model)  # a CNN has no tokens, attention or position embeddings
        tokens = 0 if cnn else trainer.model.num_prefix_tokens + math.prod(trainer.model.cfg.grid_size)
        # a fixed balanced set of test images for the emergence measures of every ViT snapshot
        picked = balanced_subset(test.labels, min(SNAPSHOT_MEASURE_IMAGES, len(test)), seed=0) if not cnn else None
        with self.lock:
            self._trainer = trainer
            self._probe = probe
            if picked is not None:
                images = normalize_batch(test.images[picked].to(trainer.device), cfg.mean, cfg.std)
                self._measure_set = (images, test.labels[picked])
            self._params = params
            self._tokens = tokens
            self._snapshot_every = max(1, trainer.total_steps // self.n_snapshots)
            self._t_first = self._t_last = None
            if self._pause_requested:
                trainer.pause()
            if self._stop_requested.is_set():
                trainer.request_stop()
            if self._status == LOADING:
                self._status = PAUSED if self._pause_requested else TRAINING
            self._detail = ""
        if not self._snapshots or self._snapshots[-1].step != trainer.step:
            self._snapshot(trainer)

        result = trainer.run()

        owner_ended = self._owner_ended
        if result.status == "diverged":
            # The weights in memory are not finite: go back to the last good checkpoint.
            trainer.load_state(self.out_dir / "last.pt")
        status = {"finished": FINISHED, "stopped": STOPPED, "diverged": DIVERGED}.get(result.status, STOPPED)
        with self.lock:
            if self._t_launch is not None:  # the slot time of this thread's training ends here
                self._wall_before += time.monotonic() - self._t_launch
                self._t_launch = None
            self._paused_since = None
            if owner_ended:
                self._status, self._detail = status, ""
                return
            note = self._end_note
            if status == FINISHED:
                self._status, self._detail = FINISHING, "evaluating on the whole test set"
            else:
                # Control goes back to the user now; the final evaluation follows with its own progress.
                self._status, self._detail = status, ""
                self._message = note or result.message
            self._final_progress = (0, len(test))
        if not self._snapshots or self._snapshots[-1].step != trainer.step:
            self._snapshot(trainer)
        final, mistakes = self._final_evaluation(trainer, test)
        ckpt = save_checkpoint(
            trainer.model, self.out_dir / "model.safetensors", extra=self._provenance(trainer, final, result.status)
        )
        with self.lock:
            self._final, self._mistakes, self._checkpoint = final, mistakes, ckpt
            self._final_progress = None
            if status == FINISHED:
                self._status, self._detail = FINISHED, ""
                self._message = note or (
                    f"Finished {result.step} steps: test accuracy {final.acc:.1%} on all {len(test):,} test images."
                )

    def _final_evaluation(
        self, trainer: Trainer, test: ImageDataset, chunk: int = 1000
    ) -> tuple[EvalResult, list[dict]]:
        """Accuracy on the whole test set and the most confident mistakes, in one pass, reporting progress."""
        cfg, model = trainer.cfg, trainer.model
        K = model.cfg.num_classes
        conf = torch.zeros(K, K, dtype=torch.long)
        loss_sum, preds, confs = 0.0, [], []
        for start in range(0, len(test), chunk):
            part = test.subset(slice(start, start + chunk))
            _, loss, c, pred, p = evaluate(
                model,
                part,
                cfg.mean,
                cfg.std,
                cfg.eval_batch_size,
                trainer.device,
                trainer.autocast_dtype,
                return_predictions=True,
            )
            conf += c
            loss_sum += loss * len(part)
            preds.append(pred)
            confs.append(p)
            self._set(final_progress=(min(start + chunk, len(test)), len(test)))
        n = max(1, len(test))
        final = eval_result(
            conf,
            conf.diag().sum().item() / n,
            loss_sum / n,
            trainer.step,
            trainer.step / trainer.steps_per_epoch,
            test.class_names,
            trainer.train_seconds,
            float("nan"),
        )
        pred, prob = torch.cat(preds), torch.cat(confs)
        wrong = (pred != test.labels).nonzero().flatten()
        order = wrong[prob[wrong].argsort(descending=True)][:32]
        names = test.class_names
        mistakes = [
            {
                "index": int(i),
                "true": int(test.labels[i]),
                "pred": int(pred[i]),
                "true_name": names[int(test.labels[i])],
                "pred_name": names[int(pred[i])],
                "confidence": float(prob[i]),
            }
            for i in order
        ]
        return final, mistakes

    def _on_step(self, m: StepMetrics) -> None:
        now = time.perf_counter()
        with self.lock:
            self._steps.append(m.step)
            self._loss.append(m.loss)
            self._acc.append(m.acc)
            self._lr.append(m.lr)
            self._last = m
            self._held = False
            if self._t_first is None:
                self._t_first, self._n_first = now, m.step
            self._t_last, self._n_last = now, m.step
            due = (
                m.step % self._snapshot_every == 0
                and m.step < m.total_steps
                and now - self._t_snapshot >= self.min_snapshot_interval_s
            )
        if due:
            trainer = self._trainer
            if trainer is not None:
                self._snapshot(trainer)

    def _on_eval(self, r: EvalResult) -> None:
        with self.lock:
            self._evals.append(r)

    def _on_message(self, msg: str) -> None:
        if msg == "paused":  # the trainer says so just before its loop starts waiting
            with self.lock:
                self._held = True

    def _provenance(self, trainer: Trainer, final: EvalResult, status: str) -> dict[str, object]:
        return {
            "trained_by": "vit_core.runs (the app's Train page)",
            "train_config": trainer.cfg.to_dict(),
            "train_data": self.source.label(),
            "status": status,
            "step": trainer.step,
            "epoch": round(trainer.step / trainer.steps_per_epoch, 3),
            "test_acc": final.acc,
            "train_seconds": round(trainer.train_seconds, 1),
        }

    def _snapshot(self, trainer: Trainer) -> None:
        probe = self._probe
        if probe is None:
            return
        try:
            images, labels = self._measure_set or (None, None)
            snap = take_snapshot(
                trainer.model,
                probe,
                trainer.step,
                trainer.step / trainer.steps_per_epoch,
                measure_images=images,
                measure_labels=labels,
            )
        except Exception as e:  # noqa: BLE001 - a failed picture must not stop the training
            self._set(detail=f"snapshot failed: {e}")
            return
        with self.lock:
            self._snapshots.append(snap)
            self._t_snapshot = time.perf_counter()

    # -- reading (any thread) -----------------------------------------------------------

    def view(self) -> RunView:
        """A consistent copy of the run's state (cheap: lists of floats and references)."""
        position = queue_position(self)
        now = time.monotonic()
        with self.lock:
            m = self._last
            train, test = self._data if self._data is not None else (None, None)
            trainer = self._trainer
            wall = 0.0
            if self._t_first is not None and self._t_last is not None and self._t_last > self._t_first:
                wall = (self._n_last - self._n_first) * self.cfg.batch_size / (self._t_last - self._t_first)
            return RunView(
                **self._view_common_locked(position),
                step=m.step if m else (trainer.step if trainer else 0),
                total_steps=m.total_steps if m else (trainer.total_steps if trainer else 0),
                epoch=m.epoch if m else 0.0,
                images_per_s=m.images_per_s if m else 0.0,
                wall_images_per_s=wall,
                eta_s=m.eta_s if m else 0.0,
                train_seconds=m.elapsed_s if m else 0.0,
                params=self._params,
                tokens=self._tokens,
                # the images the trainer trains on (a balanced subset when the config sets train_size)
                train_size=len(trainer.train_data) if trainer is not None else (len(train) if train is not None else 0),
                eval_size=_eval_count(len(test), self.eval_size) if test is not None else 0,
                held=self._held and self._status == PAUSED,
                wall_seconds=self._wall_used(now),
            )

    def export_model(self) -> VisionTransformer:
        """A copy of the trained model on the CPU in eval mode (later training does not change it).

        Raises:
            RuntimeError: the thread is still running, or there is no model.
        """
        if self.alive:
            raise RuntimeError("the run is still training; stop it or let it finish first")
        trainer = self._trainer
        if trainer is None:
            raise RuntimeError("this run has no model (it failed before training, or was released)")
        model = copy.deepcopy(trainer.model).cpu().eval()
        model.cfg.name = self.name
        return model


class _StopLoading(Exception):
    """Raised in the loading progress callback when a stop was asked for (reading 60,000 images can take a minute)."""


def _eval_count(test_size: int, n: int) -> int:
    """How many test images the evaluations during training use."""
    return test_size if n <= 0 else min(n, test_size)


def _eval_subset(test: ImageDataset, n: int) -> ImageDataset:
    if _eval_count(len(test), n) == len(test):
        return test
    g = torch.Generator().manual_seed(0)
    return test.subset(torch.randperm(len(test), generator=g)[:n].sort().values)


def _sweep_stale_runs(root: Path, max_age_s: float = STALE_RUN_S) -> list[Path]:
    """Remove run folders under `root` untouched for longer than `max_age_s` (best effort).

    Only folders this module created (they hold `RUN_MARKER`) are touched: a run folder set to
    a shared folder (`$VIT_EXPLORER_TRAIN_DIR=/srv/shared`) loses nothing else.
    """
    if not root.is_dir():
        return []
    now = time.time()
    live = {r.out_dir.resolve() for r in active_runs()}
    removed = []
    for p in root.iterdir():
        try:
            if (
                p.is_dir()
                and not p.is_symlink()
                and (p / RUN_MARKER).is_file()
                and p.resolve() not in live
                and now - _newest_mtime(p) > max_age_s
            ):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        except OSError:
            pass
    return removed


def _newest_mtime(folder: Path) -> float:
    times = [folder.stat().st_mtime]
    for q in folder.iterdir():
        try:
            times.append(q.stat().st_mtime)
        except OSError:
            pass
    return max(times)
