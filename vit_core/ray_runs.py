"""Training runs as Ray actors: the app polls them the way it polls a run on a thread of its own.

With `VIT_EXPLORER_RAY_ADDRESS` set (`vit_core.run_backend`), each run of the app is a
`RayRun` here, in the app's process, and each time it trains (start, and every resume) one
`RunActor` in a Ray worker, on whichever node Ray's scheduler picks:

    app process (RayRun)                              Ray worker (RunActor)
    start(): checks the caps, asks Ray for an   --->  placed when a node has num_cpus / num_gpus
      actor with 1 `vit_explorer_run_slot`              and a free `vit_explorer_run_slot`
      (until then: QUEUED, in Ray's queue)
    loads the data, ray.put()s it (once per     --->  a `vit_core.runs.TrainingRun` on the data,
      dataset), starts the actor                        training on a thread of the worker
    a follower thread polls the actor 4x a      <---  new steps, evaluations and snapshots since
      second; view() answers from its copy              the last poll, and the run's status
    pause / unpause / stop: sent to the actor   --->  the run's own pause / unpause / stop
    when the run has ended: the checkpoint and  <---  model.safetensors and last.pt as bytes
      last.pt arrive through the object store           (then the actor's folder is removed and
      and are written atomically to out_dir             the actor, and its slot, let go)

So nothing travels through a folder both sides happen to see. The queue is Ray's: an actor that
asks for a slot the cluster does not have free waits until one frees. The cluster-wide cap on
concurrent runs is the total of `vit_explorer_run_slot` over the nodes (`ray start
--resources='{"vit_explorer_run_slot": 2}'`; "local" gives its instance `runs.max_runs()`).
The per-run caps (`vit_core.limits`: epochs, wall-clock time, time paused) are checked here
before a run starts and enforced inside the actor, which gets this process's settings.

Settings (read when a run starts):
    VIT_EXPLORER_RAY_RUN_CPUS  CPUs each run's actor asks for, and its torch threads (default 1)
    VIT_EXPLORER_RAY_RUN_GPUS  GPUs each run's actor asks for (default 0; may be a fraction)

Every node needs this project's requirements installed; `vit_core` itself is sent to the cluster
when the app connects (`py_modules` of its job), so the nodes run the app's version of it. With
"local" (or a `ray.init` made before, as in the tests) the workers are on this machine and import
it from here.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .checkpoints import load_checkpoint
from .data import ImageDataset
from .errors import VitCoreError
from .fileio import atomic_write
from .limits import ENV as LIMIT_ENV
from .limits import PUBLIC_ENV
from .model import VisionTransformer
from .runs import (
    ACTIVE_STATUSES,
    DIVERGED,
    DONE_STATUSES,
    FAILED,
    FINISHED,
    FINISHING,
    LOADING,
    MAX_RUNS_ENV,
    PAUSED,
    QUEUED,
    RUN_MARKER,
    STOPPED,
    STOPPING,
    TRAINING,
    RunHandle,
    RunView,
    TrainingRun,
    _StopLoading,
    _sweep_stale_runs,
    check_run_config,
    max_runs,
    release_grace_s,
    runs_root,
)
from .snapshots import Snapshot
from .sources import DataSource, load_source
from .threads import TRAIN_THREADS_ENV
from .train import TrainConfig

RAY_ADDRESS_ENV = "VIT_EXPLORER_RAY_ADDRESS"  # the setting that chooses Ray (vit_core.run_backend)
SLOT_RESOURCE = "vit_explorer_run_slot"  # one per concurrent run; the cluster's total is the cap
NAMESPACE = "vit-explorer"
RUN_CPUS_ENV = "VIT_EXPLORER_RAY_RUN_CPUS"
RUN_GPUS_ENV = "VIT_EXPLORER_RAY_RUN_GPUS"
DEVICE_ENV = "VIT_EXPLORER_DEVICE"
POLL_S = 0.25  # seconds between two polls of a training actor
CALL_TIMEOUT_S = 60.0  # an actor that does not answer a poll in this long is taken for lost
DATA_REFS_KEPT = 2  # datasets kept in the object store for the next runs on the same data
# Settings the actor gets from the app (the caps, classroom mode, the device choice); never paths of this machine.
PROPAGATED_ENV = (PUBLIC_ENV, DEVICE_ENV, *(var for var, _ in LIMIT_ENV.values()))
ACTOR_DIED = (
    "The training process on the Ray cluster ended unexpectedly (its worker or node went away) at step {step}, "
    "so this run stopped there. Nothing of it was saved after that; set up a new run to train again."
)
ACTOR_SILENT = (
    f"The training process on the Ray cluster did not answer for {CALL_TIMEOUT_S:.0f} s (at step {{step}}), so this "
    "run was ended. Nothing of it was saved after that; set up a new run to train again."
)


class RunBackendError(VitCoreError):
    """The run backend that the settings name cannot be used (ray missing, cluster unreachable, no slots)."""


def run_resources(environ: dict[str, str] | None = None) -> tuple[float, float]:
    """(CPUs, GPUs) one run's actor asks Ray for (`$VIT_EXPLORER_RAY_RUN_CPUS`, `..._GPUS`; fractions allowed).

    Raises:
        RunBackendError: a value that is not a finite number (CPUs > 0, GPUs >= 0).
    """
    env = os.environ if environ is None else environ
    out = []
    for var, default, positive in ((RUN_CPUS_ENV, 1.0, True), (RUN_GPUS_ENV, 0.0, False)):
        raw = env.get(var, "").strip()
        try:
            value = float(raw) if raw else default
        except ValueError:
            raise RunBackendError(f"{var}={raw!r} is not a number") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise RunBackendError(f"{var}={raw!r} must be a number {'> 0' if positive else '>= 0'}")
        out.append(value)
    return out[0], out[1]


# --------------------------------------------------------------------------------------
# The connection
# --------------------------------------------------------------------------------------

_CONNECT_LOCK = threading.Lock()


def connect(address: str) -> None:
    """Join the Ray cluster at `address` once per process ("local": start one), and check its slots.

    A process where `ray.init` was already called (a test, a notebook) keeps that connection; its
    workers must then be able to import `vit_core` (started in the project folder, or with
    `runtime_env={"py_modules": [...]}`).

    Raises:
        RunBackendError: ray is not installed, the cluster cannot be reached, or it has no
            `vit_explorer_run_slot` resource (then every run would wait forever).
    """
    try:
        import ray
    except ImportError:
        raise RunBackendError(
            f"{RAY_ADDRESS_ENV}={address!r} asks for Ray, but ray is not installed on this server: "
            "pip install -r requirements-scale.txt (or unset the variable to train in this process)."
        ) from None
    with _CONNECT_LOCK:
        if not ray.is_initialized():
            try:
                if address == "local":
                    from ray.job_config import JobConfig

                    _init_on_keeper_thread(
                        address="local",  # a new instance, whatever $RAY_ADDRESS says
                        # the workers import vit_core from here, whatever folder the app was started in
                        job_config=JobConfig(code_search_path=[str(Path(__file__).resolve().parent.parent)]),
                        resources={SLOT_RESOURCE: max_runs()},
                        include_dashboard=False,
                        namespace=NAMESPACE,
                        log_to_driver=False,
                    )
                else:  # other nodes import the app's vit_core, not whatever they may have installed
                    _init_on_keeper_thread(
                        address=address, namespace=NAMESPACE, log_to_driver=False, runtime_env=_job_runtime_env()
                    )
            except Exception as e:  # noqa: BLE001 - ray raises ConnectionError, RuntimeError, ValueError...
                hint = (
                    " A ray:// address needs ray[client] (requirements-scale.txt) and the cluster's token: copy "
                    "~/.ray/auth_token from the head node and set RAY_AUTH_MODE=token."
                    if address.startswith("ray://")
                    else ""
                )
                raise RunBackendError(
                    f"Cannot reach the Ray cluster at {address!r} ({RAY_ADDRESS_ENV}): {type(e).__name__}: {e}.{hint}"
                ) from e
        slots = _cluster_resources(address).get(SLOT_RESOURCE, 0)
    if slots < 1:
        raise RunBackendError(
            f"The Ray cluster at {address!r} offers no '{SLOT_RESOURCE}' resource, so no run could ever start. "
            f"Start each node with ray start ... --resources='{{\"{SLOT_RESOURCE}\": 2}}' (its training slots)."
        )


def _init_on_keeper_thread(**kwargs: Any) -> None:
    """`ray.init(**kwargs)` on a thread that lives as long as the process.

    The processes a local instance starts (GCS, raylet) are killed when the *thread* that started
    them ends (Linux's parent-death signal follows the thread), and a Streamlit callback runs on a
    script thread that ends after each run: Ray would be gone a moment after the first Start.
    """
    import ray

    ready = threading.Event()
    failed: list[BaseException] = []

    def keep() -> None:
        try:
            ray.init(**kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            failed.append(e)
            ready.set()
            return
        ready.set()
        threading.Event().wait()  # until the process exits

    threading.Thread(target=keep, name="vit-ray-keeper", daemon=True).start()
    ready.wait()
    if failed:
        raise failed[0]


def cluster_slots() -> float:
    """Training slots of the whole cluster (the cap on concurrent runs), 0 when not connected."""
    import ray

    return ray.cluster_resources().get(SLOT_RESOURCE, 0.0) if ray.is_initialized() else 0.0


def _cluster_resources(address: str = "") -> dict[str, float]:
    """The cluster's total resources; a cluster that stopped answering is a RunBackendError."""
    import ray

    try:
        return ray.cluster_resources()
    except Exception as e:  # noqa: BLE001 - whatever the connection raises, the page shows a message
        where = f" at {address!r}" if address else ""
        raise RunBackendError(f"The Ray cluster{where} does not answer ({type(e).__name__}: {e}).") from e


def _check_feasible(cpus: float, gpus: float) -> None:
    """Refuse a request the whole cluster could never grant (it would wait in Ray's queue forever)."""
    have = _cluster_resources()
    if have.get("CPU", 0.0) < cpus or have.get("GPU", 0.0) < gpus:
        raise RunBackendError(
            f"Each run asks Ray for {cpus:g} CPU and {gpus:g} GPU ({RUN_CPUS_ENV}, {RUN_GPUS_ENV}), but the whole "
            f"cluster has {have.get('CPU', 0.0):g} CPU and {have.get('GPU', 0.0):g} GPU, so no run could start. "
            "Ask for less, or add a node that has them."
        )


_ACTOR_CLASS: Any = None


def _actor_class() -> Any:
    """`RunActor` as a Ray actor class (made on first use: this module imports without ray)."""
    global _ACTOR_CLASS
    if _ACTOR_CLASS is None:
        import ray

        _ACTOR_CLASS = ray.remote(max_restarts=0, max_task_retries=0)(RunActor)
    return _ACTOR_CLASS


def _actor_env(cpus: float) -> dict[str, str]:
    """The settings a run's actor trains under: this process's caps, its threads, one run per process."""
    env = {k: os.environ[k] for k in PROPAGATED_ENV if os.environ.get(k, "").strip()}
    env[TRAIN_THREADS_ENV] = str(max(1, int(cpus)))
    env[MAX_RUNS_ENV] = "1"  # the actor's process holds this one run
    return env


def _job_runtime_env() -> dict[str, Any]:
    """What every worker of this app's Ray job gets: this `vit_core`, uploaded once (a local folder
    can only be shipped at `ray.init`)."""
    import vit_core

    return {"py_modules": [str(Path(vit_core.__file__).parent)]}


# A dataset is put into the object store once and shared by the runs that train on it.
_DATA_LOCK = threading.Lock()
_DATA_REFS: OrderedDict[tuple[int, int], tuple[ImageDataset, ImageDataset, Any, Any]] = OrderedDict()


def _data_refs(train: ImageDataset, test: ImageDataset) -> tuple[Any, Any]:
    import ray

    key = (id(train), id(test))
    with _DATA_LOCK:
        hit = _DATA_REFS.get(key)
        if hit is not None and hit[0] is train and hit[1] is test:
            _DATA_REFS.move_to_end(key)
            return hit[2], hit[3]
    refs = ray.put(train), ray.put(test)
    with _DATA_LOCK:
        _DATA_REFS[key] = (train, test, *refs)
        while len(_DATA_REFS) > DATA_REFS_KEPT:
            _DATA_REFS.popitem(last=False)
    return refs


# Runs of this process whose actor waits for a slot, in the order they asked (their queue place here).
_WAITING_LOCK = threading.Lock()
_WAITING: list[RayRun] = []


def waiting_runs() -> list[RayRun]:
    """Runs of this process whose actor Ray has not placed yet, first asked first."""
    with _WAITING_LOCK:
        return list(_WAITING)


def _queue_position(run: RayRun) -> int:
    with _WAITING_LOCK:
        return _WAITING.index(run) + 1 if run in _WAITING else 0


# --------------------------------------------------------------------------------------
# The actor (a Ray worker process)
# --------------------------------------------------------------------------------------


class RunActor:
    """One training of a run, in a Ray worker: a `TrainingRun` on data from the object store.

    Its methods return at once (the run trains on its own thread), so polls and clicks are
    answered between steps. Wrapped by `ray.remote` in `_actor_class`.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.run: TrainingRun | None = None
        self.dir = Path(tempfile.gettempdir()) / "vit-explorer-ray-runs" / f"{run_id}-{uuid.uuid4().hex[:6]}"

    def ready(self) -> str:
        """The node's host name (the call returns once Ray has placed the actor)."""
        return socket.gethostname()

    def start(
        self,
        cfg: TrainConfig,
        source: DataSource,
        train: ImageDataset,
        test: ImageDataset,
        state: bytes | None,
        wall_before: float,
        paused: bool,
        options: dict[str, Any],
        settings: dict[str, str],
    ) -> str | None:
        """Train on `train` (evaluating on `test`), from `state` (last.pt bytes) when given; None, or why not.

        `settings` are the app's caps and choices (`_actor_env`): they become this worker's
        environment, which holds this one run (a runtime_env would cost a new worker per run).
        """
        for var in PROPAGATED_ENV:  # the app's settings hold, not whatever this node has
            os.environ.pop(var, None)
        os.environ.update(settings)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / RUN_MARKER).write_text("made by vit_core.ray_runs; removed when stale\n")
        run = TrainingRun(cfg, source, out_dir=self.dir, **options)
        run._data = (train, test)
        run._wall_before = wall_before
        try:
            if state is not None:
                with atomic_write(self.dir / "last.pt") as tmp:
                    tmp.write_bytes(state)
                run._status = STOPPED  # what resume() continues from
                run.resume()
            else:
                run.start()
        except (VitCoreError, RuntimeError) as e:
            return str(e)
        self.run = run
        if paused:
            run.pause()
        return None

    def poll(self, n_steps: int, n_evals: int, n_snapshots: int) -> tuple[RunView, bool, bool]:
        """(the view with only what is new since the counts given, the thread is alive, no resume allowed)."""
        run = self.run
        alive = run.alive  # before the view: a thread that has ended has left its last state in it
        v = run.view()
        v.steps, v.loss, v.acc, v.lr = v.steps[n_steps:], v.loss[n_steps:], v.acc[n_steps:], v.lr[n_steps:]
        v.evals, v.snapshots = v.evals[n_evals:], v.snapshots[n_snapshots:]
        return v, alive, run._no_resume

    def pause(self) -> None:
        self.run.pause()

    def unpause(self) -> None:
        self.run.unpause()

    def stop(self) -> None:
        self.run.stop()

    def abandon(self, note: str) -> None:
        """The owner is gone: stop without the final evaluation (nobody will look at it)."""
        run = self.run
        with run.lock:
            run._owner_ended = True
            run._end_note = run._message = note
        run.stop()

    def result(self) -> dict[str, bytes | None]:
        """The files the run left: 'model' (model.safetensors) and 'state' (last.pt), as bytes, or None."""
        files = {"model": self.dir / "model.safetensors", "state": self.dir / "last.pt"}
        return {k: p.read_bytes() if p.is_file() else None for k, p in files.items()}

    def close(self) -> None:
        """Remove the actor's folder (its files went back as bytes)."""
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------------------
# The run, in the app's process
# --------------------------------------------------------------------------------------


class RayRun(RunHandle):
    """A training run whose training happens in a Ray actor; the same surface as `runs.TrainingRun`.

    Args: as `runs.TrainingRun`. `out_dir` is on this machine: the checkpoint and last.pt are
    written there when they arrive from the actor.
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
        self._own_dir = out_dir is None
        self.out_dir = (
            Path(out_dir) if out_dir is not None else runs_root() / f"{time.strftime('%Y%m%d-%H%M%S')}-{self.id}"
        )
        self.probe_index = int(probe_index)
        self.eval_size = int(eval_size)
        self.name = name or cfg.name
        self._options = {
            "snapshots": snapshots,
            "min_snapshot_interval_s": min_snapshot_interval_s,
            "eval_size": eval_size,
            "probe_index": probe_index,
            "name": self.name,
        }
        self.lock = threading.Lock()  # guards every field the follower thread writes and view() reads
        self._launch_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._actor: Any = None  # the actor of the current training, from its request on
        self._started: Any = None  # ... once it trains (controls go to it)
        self.node = ""  # host name of the node the last actor was placed on
        self._data: tuple[ImageDataset, ImageDataset] | None = None
        self._status = "new"
        self._message = ""
        self._detail = ""
        self._ctl = 0  # counts clicks: a poll sent before the latest click does not overwrite its status
        self._pause_requested = False
        self._stop_requested = threading.Event()
        self._owner_alive = owner_alive
        self._released = False
        self._owner_gone_since: float | None = None
        self._owner_ended = False
        self._end_note: str | None = None
        self._no_resume = False
        self._download: tuple[int, int] | None = None
        self._loading: tuple[str, int, int] | None = None
        self._t_launch: float | None = None  # monotonic time this process began counting slot time
        self._wall_before = 0.0
        # what view() copies
        self._steps: list[int] = []
        self._loss: list[float] = []
        self._acc: list[float] = []
        self._lr: list[float] = []
        self._evals: list = []
        self._snapshots: list[Snapshot] = []
        self._seen = [0, 0, 0]  # steps, evaluations, snapshots of the current actor already copied
        self._last: RunView | None = None  # the actor's latest view (its scalars)
        self._final = None
        self._mistakes: list[dict] = []
        self._checkpoint: Path | None = None
        self._final_progress: tuple[int, int] | None = None

    @property
    def actor(self) -> Any:
        """The Ray actor handle of the current training (None while none is asked for)."""
        return self._actor

    # -- control (any thread) -----------------------------------------------------------

    def start(self) -> None:
        """Ask Ray for an actor and train there (QUEUED until a node has a free slot).

        Raises:
            RunLimitError, ModelTooLargeError: the configuration is over a per-run cap.
            RuntimeError: this run was started before.
        """
        with self._launch_lock:
            with self.lock:
                if self._status != "new":
                    raise RuntimeError("this run was already started; resume() continues a stopped run")
            check_run_config(self.cfg)
            _check_feasible(*run_resources())
            if self._own_dir:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                (self.out_dir / RUN_MARKER).write_text("made by vit_core.runs; removed when stale\n")
            _sweep_stale_runs(self.out_dir.parent)
            self._launch(resume=False)

    def resume(self) -> None:
        """Continue a stopped run from its last.pt in a new actor (queued like `start`).

        Raises:
            RuntimeError: the run is not stopped, has no checkpoint, used its time, or is still working.
        """
        with self._launch_lock:
            with self.lock:
                if self._thread is not None and self._thread.is_alive():
                    raise RuntimeError("the run is still working (its final evaluation); try again in a moment")
                if not self._can_resume_locked():
                    raise RuntimeError(f"a {self._status} run cannot be resumed")
            self._launch(resume=True)

    def _launch(self, resume: bool) -> None:
        with self.lock:
            self._status = QUEUED
            self._detail = "waiting for a free training slot on the cluster"
            self._message = ""
            self._end_note = None
            self._stop_requested.clear()
            self._pause_requested = False
            self._released = False
            self._owner_gone_since = None
            self._owner_ended = False
            self._final_progress = None
            self._ctl += 1
            thread = threading.Thread(target=self._main, args=(resume,), name=f"vit-ray-{self.id}", daemon=True)
            self._thread = thread
        with _WAITING_LOCK:  # in the order of the clicks, not of the threads
            _WAITING.append(self)
        thread.start()

    def pause(self) -> None:
        """Hold the training loop between steps (in the actor; the run keeps its slot)."""
        with self.lock:
            if self._status not in ACTIVE_STATUSES or self._status == QUEUED:
                return
            self._pause_requested = True
            self._ctl += 1
            if self._status == TRAINING:
                self._status = PAUSED
            actor = self._started
        _send(actor, "pause")

    def unpause(self) -> None:
        with self.lock:
            self._pause_requested = False
            self._ctl += 1
            if self._status == PAUSED:
                self._status = TRAINING
            actor = self._started
        _send(actor, "unpause")

    def stop(self) -> None:
        """Stop after the current step (the actor saves last.pt and the model, which then come back).

        A run still waiting for a slot leaves Ray's queue at once.
        """
        with self.lock:
            self._stop_requested.set()
            self._pause_requested = False
            self._ctl += 1
            if self._status == QUEUED:
                self._status, self._detail = STOPPED, ""
                self._message = self._end_note or "Left the queue before training started."
                return
            if self._status in (TRAINING, PAUSED, LOADING):
                self._status = STOPPING
                self._detail = "stopping after this step"
            actor = self._started
        _send(actor, "stop")

    # -- ownership (join, alive, attach, release: RunHandle) ---------------------------

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
            if now - self._owner_gone_since < release_grace_s() or self._owner_ended:
                return
            self._owner_ended = True
            note = "The browser session that started this run went away, so the run was stopped."
            self._message = self._end_note = note
            actor = self._started
        _send(actor, "abandon", note)
        self.stop()

    # -- the follower thread ------------------------------------------------------------

    def _main(self, resume: bool) -> None:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        actor = None
        try:
            actor = self._place_actor()
            if actor is not None:
                self._train(actor, resume)
        except _StopLoading:
            self._set(
                status=STOPPED, detail="", loading=None, message=self._end_note or "Stopped before training started."
            )
        except (RayActorError, GetTimeoutError) as e:
            step = self._last.step if self._last is not None else 0
            message = (ACTOR_SILENT if isinstance(e, GetTimeoutError) else ACTOR_DIED).format(step=step)
            self._set(status=FAILED, message=message, detail="", final_progress=None)
        except VitCoreError as e:
            self._set(status=FAILED, message=str(e), detail="", final_progress=None)
        except Exception as e:  # noqa: BLE001 - shown to the user; the follower must end cleanly
            self._set(
                status=FAILED, message=f"Training failed: {type(e).__name__}: {e}", detail="", final_progress=None
            )
        finally:
            _leave_waiting(self)
            with self.lock:
                if self._t_launch is not None:
                    self._wall_before += time.monotonic() - self._t_launch
                    self._t_launch = None
                elif self._last is not None and self._started is not None:
                    self._wall_before = max(self._wall_before, self._last.wall_seconds)
                self._actor = self._started = None
                if self._owner_ended:
                    self._data = None
                    self._snapshots, self._mistakes = [], []
            if actor is not None:
                try:
                    ray.get(actor.close.remote(), timeout=10)
                except Exception:  # noqa: BLE001 - a dead actor has nothing left to remove here
                    pass
                try:
                    ray.kill(actor)  # the slot goes back to Ray's queue
                except Exception:  # noqa: BLE001 - already gone
                    pass

    def _place_actor(self) -> Any:
        """Ask Ray for the actor and wait until it is placed, or until the run is stopped while it waits."""
        import ray

        cpus, gpus = run_resources()
        actor = _actor_class().options(num_cpus=cpus, num_gpus=gpus, resources={SLOT_RESOURCE: 1}).remote(self.id)
        with self.lock:
            self._actor = actor
        ready = actor.ready.remote()
        while not ray.wait([ready], timeout=POLL_S)[0]:
            if self._stop_requested.is_set():
                return actor  # the caller kills it: the run leaves Ray's queue
            self._check_owner(time.monotonic())
        _leave_waiting(self)
        self.node = ray.get(ready)
        return actor

    def _train(self, actor: Any, resume: bool) -> None:
        import ray

        if self._stop_requested.is_set():
            return  # stop() already said "Left the queue"
        with self.lock:
            self._status, self._detail = LOADING, "loading the data"
            self._t_launch = time.monotonic()
        if self._data is None:
            self._data = load_source(self.source, progress=self._on_download, on_load=self._on_load)
            self._set(download=None, loading=None)
        train, test = self._data
        if self._stop_requested.is_set():
            self._set(status=STOPPED, detail="", message=self._end_note or "Stopped before training started.")
            return
        self._set(detail="sending the data to the training node")
        train_ref, test_ref = _data_refs(train, test)
        state = (self.out_dir / "last.pt").read_bytes() if resume else None
        cpus = run_resources()[0]
        with self.lock:
            wall = self._wall_used(time.monotonic())
            paused = self._pause_requested
        error = ray.get(
            actor.start.remote(
                self.cfg, self.source, train_ref, test_ref, state, wall, paused, self._options, _actor_env(cpus)
            ),
            timeout=CALL_TIMEOUT_S,
        )
        if error is not None:
            self._set(status=FAILED, message=error, detail="")
            return
        with self.lock:
            self._started = actor
            self._seen = [0, 0, 0]
            self._wall_before, self._t_launch = wall, None  # the actor counts the slot time from here
            pause, stop = self._pause_requested, self._stop_requested.is_set()
        if stop:  # a click that came while the actor was being started
            _send(actor, "stop")
        elif pause:
            _send(actor, "pause")
        self._follow(actor)

    def _follow(self, actor: Any) -> None:
        """Copy what is new from the actor until its training has ended, then bring the files back."""
        import ray

        while True:
            with self.lock:
                ctl, seen = self._ctl, list(self._seen)
            v, alive, no_resume = ray.get(actor.poll.remote(*seen), timeout=CALL_TIMEOUT_S)
            self._merge(v, ctl, no_resume)
            if not alive and v.status in DONE_STATUSES:
                break
            self._check_owner(time.monotonic())
            time.sleep(POLL_S)
        if self._owner_ended:
            with self.lock:
                self._status, self._detail = v.status, ""
            return
        files = ray.get(actor.result.remote(), timeout=CALL_TIMEOUT_S)
        checkpoint = None
        if files["state"] is not None:
            with atomic_write(self.out_dir / "last.pt") as tmp:
                tmp.write_bytes(files["state"])
        if files["model"] is not None:
            checkpoint = self.out_dir / "model.safetensors"
            with atomic_write(checkpoint) as tmp:
                tmp.write_bytes(files["model"])
        with self.lock:
            self._status, self._detail, self._message = v.status, "", v.message
            self._final, self._mistakes = v.final, list(v.mistakes)
            self._checkpoint = checkpoint or self._checkpoint
            self._final_progress = None

    def _merge(self, v: RunView, ctl: int, no_resume: bool) -> None:
        with self.lock:
            self._steps += v.steps
            self._loss += v.loss
            self._acc += v.acc
            self._lr += v.lr
            self._evals += v.evals
            self._seen[0] += len(v.steps)
            self._seen[1] += len(v.evals)
            self._seen[2] += len(v.snapshots)
            for snap in v.snapshots:  # a resumed run's first picture repeats the last one of the stop
                if not self._snapshots or self._snapshots[-1].step != snap.step:
                    self._snapshots.append(snap)
            self._last = v
            self.cfg = v.config
            self._no_resume = no_resume
            self._final_progress = v.final_progress
            if v.status in DONE_STATUSES and v.final is not None and self._final_progress is None:
                self._final_progress = (v.test_size, v.test_size)  # until the checkpoint is here
            if (ctl == self._ctl and self._status not in DONE_STATUSES) or v.status in (FAILED, DIVERGED):
                # a finished run says so once its checkpoint has arrived (as a run on a thread does)
                self._status = FINISHING if v.status == FINISHED else v.status
                self._detail = "bringing the checkpoint back" if v.status == FINISHED else v.detail
            if v.message and v.status in DONE_STATUSES:
                self._message = v.message

    # -- reading (any thread) -----------------------------------------------------------

    def view(self) -> RunView:
        """A consistent copy of the run's state, as `TrainingRun.view()` gives it."""
        position = _queue_position(self)
        now = time.monotonic()
        with self.lock:
            a = self._last
            train, test = self._data if self._data is not None else (None, None)
            if a is not None and self._started is not None:
                wall = a.wall_seconds
            else:
                wall = self._wall_used(now)
            return RunView(
                **self._view_common_locked(position),
                step=a.step if a else 0,
                total_steps=a.total_steps if a else 0,
                epoch=a.epoch if a else 0.0,
                images_per_s=a.images_per_s if a else 0.0,
                wall_images_per_s=a.wall_images_per_s if a else 0.0,
                eta_s=a.eta_s if a else 0.0,
                train_seconds=a.train_seconds if a else 0.0,
                params=a.params if a else 0,
                tokens=a.tokens if a else 0,
                train_size=a.train_size if a else (len(train) if train is not None else 0),
                eval_size=a.eval_size if a else 0,
                held=bool(a and a.held) and self._status == PAUSED,
                wall_seconds=wall,
            )

    def export_model(self) -> VisionTransformer:
        """The trained model, read from the checkpoint the actor sent back (CPU, eval mode).

        Raises:
            RuntimeError: the run is still working, or there is no checkpoint.
        """
        if self.alive:
            raise RuntimeError("the run is still training; stop it or let it finish first")
        ckpt = self._checkpoint
        if ckpt is None or not ckpt.is_file():
            raise RuntimeError("this run has no model (it failed before training, or was released)")
        model = load_checkpoint(ckpt)
        model.cfg.name = self.name
        return model.eval()


def _send(actor: Any, method: str, *args: object) -> None:
    """A click for the actor, not waited for; an actor that is gone is found by the follower's next poll."""
    if actor is None:
        return
    try:
        getattr(actor, method).remote(*args)
    except Exception:  # noqa: BLE001 - the follower reports a lost actor with its message
        pass


def _leave_waiting(run: RayRun) -> None:
    with _WAITING_LOCK:
        if run in _WAITING:
            _WAITING.remove(run)
