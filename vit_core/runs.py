"""Training runs for an app: one background thread per run, a lock-protected view, a server cap.

A `TrainingRun` loads its data, builds a `vit_core.train.Trainer` and trains on its own
thread. That thread never touches a UI: it writes into the run under `run.lock`, and a UI
reads a consistent copy with `run.view()`. Control goes the other way through events
(pause, unpause, stop), so a click never waits for a training step.

    run = TrainingRun(cfg, DataSource("path", "data/cifar10"))
    run.start()                  # RunLimitError when the server already trains max_runs()
    v = run.view()               # RunView: status, progress, curves, snapshots, evaluations
    run.pause(); run.unpause()   # the loop waits between steps
    run.stop()                   # saves last.pt (exact resume) and model.safetensors
    run.resume()                 # a stopped run continues from its last.pt on a new thread
    run.release()                # the owner went away: stop after the grace period

Every `snapshot_every` steps the thread records what the explorer pages show for the model
as it is then (`vit_core.snapshots.Snapshot`). Where the images come from is
`vit_core.sources`, what a run will cost `vit_core.costs`, the CIFAR-10 download on a thread
`vit_core.download_job`.

Server-wide settings (environment variables, read when used):
    VIT_EXPLORER_MAX_RUNS      concurrent training threads in this process (default 2)
    VIT_EXPLORER_RUN_GRACE_S   seconds a run whose owner disconnected keeps going, waiting
                               for a reconnect, before it is stopped (default 30)
    VIT_EXPLORER_TRAIN_DIR     where run folders go (default <tmp>/vit-explorer-train;
                               folders older than a day are removed when a new run starts)
    VIT_EXPLORER_TRAIN_THREADS torch threads of each training thread (default: all cores;
                               a server shared by a class may want 1)

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

import numpy as np
import torch

from .batches import normalize_batch
from .checkpoints import save_checkpoint
from .data import ImageDataset
from .errors import DataError, VitCoreError
from .evaluation import EvalResult, misclassified
from .model import VisionTransformer
from .snapshots import Snapshot, take_snapshot
from .sources import DataSource, load_source
from .threads import training_threads
from .train import PRESETS, StepMetrics, TrainConfig, Trainer

MAX_RUNS_ENV = "VIT_EXPLORER_MAX_RUNS"
GRACE_ENV = "VIT_EXPLORER_RUN_GRACE_S"
RUNS_DIR_ENV = "VIT_EXPLORER_TRAIN_DIR"
DEFAULT_MAX_RUNS = 2
DEFAULT_GRACE_S = 30.0
STALE_RUN_S = 24 * 3600  # run folders older than this are swept when a new run starts

# Recipes the app offers: the trainer's two, and a longer run of the bundled recipe.
APP_PRESETS: dict[str, TrainConfig] = {
    "quick": PRESETS["quick"],
    "bundled": PRESETS["bundled"],
    "long": PRESETS["bundled"].replace(epochs=30, warmup_epochs=2.0, name="ViT-CIFAR10 (30 epochs)"),
}
PRESET_NOTES = {
    "quick": "the curves move within the first minute; about 60% test accuracy after 10 minutes on a 2-core CPU",
    "bundled": "the first run of the bundled model: 1.5x the width and depth, about 2.7x slower per image",
    "long": "the bundled recipe for 30 epochs: about 3 hours on an idle 2-core CPU, far less on a GPU (the CLI's --preset long is 100 epochs)",
}


def preset_summary(key: str) -> str:
    """'patch 4 (65 tokens), D 128, 5 epochs: <note>' for a preset of `APP_PRESETS`."""
    cfg = APP_PRESETS[key]
    tokens = (cfg.img_size // cfg.patch_size) ** 2 + 1
    return f"patch {cfg.patch_size} ({tokens} tokens), D {cfg.embed_dim}, {cfg.epochs:g} epochs: {PRESET_NOTES.get(key, '')}"


# run statuses
LOADING, TRAINING, PAUSED, STOPPING, FINISHING = "loading", "training", "paused", "stopping", "finishing"
STOPPED, FINISHED, DIVERGED, FAILED = "stopped", "finished", "diverged", "failed"
ACTIVE_STATUSES = (LOADING, TRAINING, PAUSED, STOPPING, FINISHING)
DONE_STATUSES = (STOPPED, FINISHED, DIVERGED, FAILED)


class RunLimitError(VitCoreError):
    """The server already trains as many runs as it allows."""


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


def runs_root() -> Path:
    """The folder run folders are created in (`$VIT_EXPLORER_TRAIN_DIR`, default <tmp>/vit-explorer-train)."""
    env = os.environ.get(RUNS_DIR_ENV)
    return Path(env).expanduser() if env else Path(tempfile.gettempdir()) / "vit-explorer-train"


# --------------------------------------------------------------------------------------
# The registry of active runs, its cap and the owner watchdog
# --------------------------------------------------------------------------------------

_REGISTRY_LOCK = threading.Lock()
_ACTIVE: dict[str, TrainingRun] = {}
_WATCHDOG: threading.Thread | None = None
WATCHDOG_PERIOD_S = 1.0


def active_runs() -> list[TrainingRun]:
    """Runs whose thread is working (loading, training, paused, finishing) in this process."""
    with _REGISTRY_LOCK:
        return list(_ACTIVE.values())


def _claim_slot(run: TrainingRun) -> None:
    global _WATCHDOG
    with _REGISTRY_LOCK:
        if run.id in _ACTIVE:
            return
        cap = max_runs()
        if len(_ACTIVE) >= cap:
            raise RunLimitError(
                f"The server is already training {len(_ACTIVE)} model{'s' if len(_ACTIVE) != 1 else ''}, "
                f"its limit ({MAX_RUNS_ENV}={cap}). Try again when one of them has finished; "
                "a paused run keeps its place until it is stopped."
            )
        _ACTIVE[run.id] = run
        if _WATCHDOG is None or not _WATCHDOG.is_alive():
            _WATCHDOG = threading.Thread(target=_watch_owners, name="vit-runs-watchdog", daemon=True)
            _WATCHDOG.start()


def _free_slot(run: TrainingRun) -> None:
    with _REGISTRY_LOCK:
        _ACTIVE.pop(run.id, None)


def _watch_owners() -> None:
    """Stop runs whose owner has been gone for longer than the grace period; exit when idle."""
    global _WATCHDOG
    while True:
        time.sleep(WATCHDOG_PERIOD_S)
        with _REGISTRY_LOCK:
            runs = list(_ACTIVE.values())
            if not runs:
                _WATCHDOG = None
                return
        now = time.monotonic()
        for run in runs:
            run._check_owner(now)


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

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def done(self) -> bool:
        return self.status in DONE_STATUSES

    @property
    def progress(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0


class TrainingRun:
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
        """Start training on a new thread.

        Raises:
            RunLimitError: the server already runs `max_runs()` trainings.
            RuntimeError: this run was started before.
        """
        self._launch(resume=False)

    def resume(self) -> None:
        """Continue a stopped run from its `last.pt` (same batches and schedule as without the stop).

        Raises:
            RunLimitError: the server is full.
            RuntimeError: the run is not stopped, or has no checkpoint.
        """
        self._launch(resume=True)

    def _launch(self, resume: bool) -> None:
        with self._launch_lock:  # two clicks at once start one thread
            with self.lock:
                if resume and not self._can_resume_locked():
                    raise RuntimeError(f"a {self._status} run cannot be resumed")
                if not resume and self._status != "new":
                    raise RuntimeError("this run was already started; resume() continues a stopped run")
            _claim_slot(self)
            with self.lock:
                self._status = LOADING
                self._detail = "loading the data"
                self._message = ""
                self._stop_requested.clear()
                self._pause_requested = False
                self._released = False
                self._owner_gone_since = None
                self._owner_ended = False
                thread = threading.Thread(target=self._main, args=(resume,), name=f"vit-train-{self.id}", daemon=True)
                self._thread = thread
            try:
                thread.start()
            except BaseException:
                _free_slot(self)
                raise

    def pause(self) -> None:
        """Hold the training loop between steps (a paused run keeps its place in the server's cap)."""
        with self.lock:
            if self._status not in ACTIVE_STATUSES:
                return
            self._pause_requested = True
            if self._trainer is not None:
                self._trainer.pause()
            if self._status == TRAINING:
                self._status = PAUSED

    def unpause(self) -> None:
        with self.lock:
            self._pause_requested = False
            if self._trainer is not None:
                self._trainer.unpause()
            if self._status == PAUSED:
                self._status = TRAINING

    def stop(self) -> None:
        """Ask the thread to stop; it saves `last.pt` and `model.safetensors` before it ends."""
        with self.lock:
            self._stop_requested.set()
            self._pause_requested = False
            if self._trainer is not None:
                self._trainer.request_stop()
            if self._status in (TRAINING, PAUSED, LOADING):
                self._status = STOPPING
                self._detail = "stopping after this step"

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True when it has ended (or never started)."""
        t = self._thread
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True

    @property
    def alive(self) -> bool:
        """Whether the run's thread is running."""
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

        With a grace period of 0 the run is stopped at once, without the final evaluation,
        and its model, optimiser and data are let go when the thread ends.
        """
        with self.lock:
            self._released = True
        self._check_owner(time.monotonic())

    def _owner_gone(self) -> bool:
        check = self._owner_alive
        if check is not None:
            try:
                return not check()
            except Exception:  # noqa: BLE001 - a failing probe must not kill the watchdog
                return self._released
        return self._released

    def _check_owner(self, now: float) -> None:
        if not self.alive:
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
        if expired:
            self.stop()

    # -- the thread ---------------------------------------------------------------------

    def _set(self, **fields: object) -> None:
        with self.lock:
            for k, v in fields.items():
                setattr(self, "_" + k, v)

    def _main(self, resume: bool) -> None:
        torch.set_num_threads(training_threads())  # not whatever the last page run left behind
        try:
            self._run(resume)
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
            _free_slot(self)

    def _run(self, resume: bool) -> None:
        if self._data is None:
            _sweep_stale_runs(self.out_dir.parent)
            self._data = load_source(self.source, progress=self._on_download)
            self._set(download=None)
        train, test = self._data
        if self._stop_requested.is_set():
            self._set(status=STOPPED, detail="", message=self._message or "Stopped before training started.")
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
        eval_set = _eval_subset(test, self.eval_size)
        kwargs = {"on_step": self._on_step, "on_eval": self._on_eval, "on_message": self._on_message}
        self._set(detail="building the model")
        if resume:
            trainer = Trainer.resume(self.out_dir / "last.pt", train, eval_set, out_dir=self.out_dir, **kwargs)
        else:
            trainer = Trainer(cfg, train, eval_set, out_dir=self.out_dir, **kwargs)
        probe = normalize_batch(test.images[self.probe_index % len(test)][None].to(trainer.device), cfg.mean, cfg.std)
        params = trainer.model.num_params()
        gh, gw = trainer.model.cfg.grid_size
        with self.lock:
            self._trainer = trainer
            self._probe = probe
            self._params = params
            self._tokens = trainer.model.num_prefix_tokens + gh * gw
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
        if not owner_ended:
            self._set(status=FINISHING, detail="evaluating on the whole test set")
            if not self._snapshots or self._snapshots[-1].step != trainer.step:
                self._snapshot(trainer)
            final = trainer.evaluate(test)
            self._set(final=final, detail="finding the most confident mistakes")
            mistakes = misclassified(trainer.model, test, limit=32, batch_size=cfg.eval_batch_size)
            ckpt = save_checkpoint(
                trainer.model, self.out_dir / "model.safetensors", extra=self._provenance(trainer, final, result.status)
            )
            self._set(mistakes=mistakes, checkpoint=ckpt)
        status = {"finished": FINISHED, "stopped": STOPPED, "diverged": DIVERGED}.get(result.status, STOPPED)
        message = result.message
        if status == FINISHED and self._final is not None:
            message = (
                f"Finished {result.step} steps: test accuracy {self._final.acc:.1%} on all {len(test):,} test images."
            )
        with self.lock:
            self._status = status
            self._detail = ""
            self._message = self._message if owner_ended else message

    def _on_download(self, done: int, total: int) -> None:
        self._set(download=(done, total), detail="downloading CIFAR-10")

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
            snap = take_snapshot(trainer.model, probe, trainer.step, trainer.step / trainer.steps_per_epoch)
        except Exception as e:  # noqa: BLE001 - a failed picture must not stop the training
            self._set(detail=f"snapshot failed: {e}")
            return
        with self.lock:
            self._snapshots.append(snap)
            self._t_snapshot = time.perf_counter()

    # -- reading (any thread) -----------------------------------------------------------

    def _can_resume_locked(self) -> bool:
        return (
            self._status == STOPPED
            and not self._owner_ended
            and (self.out_dir / "last.pt").is_file()
            and self._data is not None
        )

    def view(self) -> RunView:
        """A consistent copy of the run's state (cheap: lists of floats and references)."""
        with self.lock:
            m = self._last
            train, test = self._data if self._data is not None else (None, None)
            trainer = self._trainer
            wall = 0.0
            if self._t_first is not None and self._t_last is not None and self._t_last > self._t_first:
                wall = (self._n_last - self._n_first) * self.cfg.batch_size / (self._t_last - self._t_first)
            return RunView(
                id=self.id,
                status=self._status,
                message=self._message,
                detail=self._detail,
                config=self.cfg,
                source=self.source.label(),
                out_dir=self.out_dir,
                step=m.step if m else (trainer.step if trainer else 0),
                total_steps=m.total_steps if m else (trainer.total_steps if trainer else 0),
                epoch=m.epoch if m else 0.0,
                images_per_s=m.images_per_s if m else 0.0,
                wall_images_per_s=wall,
                eta_s=m.eta_s if m else 0.0,
                train_seconds=m.elapsed_s if m else 0.0,
                params=self._params,
                tokens=self._tokens,
                train_size=len(train) if train is not None else 0,
                test_size=len(test) if test is not None else 0,
                eval_size=_eval_count(len(test), self.eval_size) if test is not None else 0,
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
                held=self._held and self._status == PAUSED,
                download=self._download,
            )

    def test_image(self, index: int) -> np.ndarray | None:
        """(H, W, C) uint8 test image `index` (for the mistakes gallery and the probe), or None."""
        data = self._data
        if data is None:
            return None
        return data[1].images[index].permute(1, 2, 0).numpy()

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


def _eval_count(test_size: int, n: int) -> int:
    """How many test images the evaluations during training use."""
    return test_size if n <= 0 else min(n, test_size)


def _eval_subset(test: ImageDataset, n: int) -> ImageDataset:
    if _eval_count(len(test), n) == len(test):
        return test
    g = torch.Generator().manual_seed(0)
    return test.subset(torch.randperm(len(test), generator=g)[:n].sort().values)


def _sweep_stale_runs(root: Path, max_age_s: float = STALE_RUN_S) -> None:
    """Remove run folders under `root` untouched for longer than `max_age_s` (best effort)."""
    if not root.is_dir():
        return
    now = time.time()
    live = {r.out_dir.resolve() for r in active_runs()}
    for p in root.iterdir():
        try:
            if p.is_dir() and p.resolve() not in live and now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass
