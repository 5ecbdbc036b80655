"""Where training runs execute: threads of this process (default) or actors on a Ray cluster.

One setting chooses, read when a run is made:

    VIT_EXPLORER_RAY_ADDRESS   unset or empty: runs are threads of this process
                               (`vit_core.runs.TrainingRun`, the laptop default);
                               "local": a fresh Ray instance on this machine;
                               "auto": the Ray cluster this machine belongs to (`ray start`);
                               "ray://host:10001": a Ray cluster through its client port.

Both backends make a run with the same surface (`Run`): `start`, `pause`, `unpause`, `stop`,
`resume`, `release`, `attach`, `join`, `alive`, `view()` (a `vit_core.runs.RunView`),
`test_image`, `export_model`, `out_dir`. A page polls either one the same way. The Ray runs
are `vit_core.ray_runs.RayRun`. A front end makes and starts runs with `start_run`, the one call.

    from vit_core.run_backend import start_run
    run = start_run(cfg, DataSource("path", "data/cifar10"), name="my ViT")
    v = run.view()
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .devices import server_device
from .ray_runs import RAY_ADDRESS_ENV, RayRun, RunBackendError, connect
from .runs import RunView, TrainingRun
from .sources import DataSource
from .train import TrainConfig

if TYPE_CHECKING:
    import numpy as np

    from .model import VisionTransformer

LOCAL, RAY = "local", "ray"
__all__ = ["LOCAL", "RAY", "RAY_ADDRESS_ENV", "Run", "RunBackendError", "backend_name", "make_run", "start_run"]


class Run(Protocol):
    """What a front end may do with a training run, whichever backend trains it."""

    id: str
    name: str
    probe_index: int
    out_dir: Path

    def start(self) -> None: ...
    def resume(self) -> None: ...
    def pause(self) -> None: ...
    def unpause(self) -> None: ...
    def stop(self) -> None: ...
    def release(self) -> None: ...
    def attach(self, owner_alive: Callable[[], bool] | None = None) -> None: ...
    def join(self, timeout: float | None = None) -> bool: ...
    def view(self) -> RunView: ...
    def test_image(self, index: int) -> np.ndarray | None: ...
    def export_model(self) -> VisionTransformer: ...

    @property
    def alive(self) -> bool: ...


def ray_address(environ: dict[str, str] | None = None) -> str:
    """The Ray address the settings name ('' = no Ray: runs are threads of this process)."""
    env = os.environ if environ is None else environ
    return env.get(RAY_ADDRESS_ENV, "").strip()


def backend_name(environ: dict[str, str] | None = None) -> str:
    """'local' (threads of this process) or 'ray'."""
    return RAY if ray_address(environ) else LOCAL


def local_device_config(cfg: TrainConfig, environ: Mapping[str, str] | None = None) -> TrainConfig:
    """`cfg` for a run in this process: device "auto" follows the server's `VIT_EXPLORER_DEVICE`.

    The setting that moves inference to the CPU (or to one GPU) moves this server's training runs
    too; a config that names its own device keeps it. (A Ray actor resolves "auto" on its node.)
    """
    if cfg.device != "auto":
        return cfg
    return cfg.replace(device=str(server_device(environ).device))


def make_run(
    cfg: TrainConfig,
    source: DataSource,
    *,
    owner_alive: Callable[[], bool] | None = None,
    name: str | None = None,
    **options: object,
) -> Run:
    """A new, not yet started run on the backend the settings choose.

    Args:
        cfg, source, owner_alive, name, options: as `vit_core.runs.TrainingRun` takes them
            (`out_dir`, `snapshots`, `min_snapshot_interval_s`, `eval_size`, `probe_index`).

    Raises:
        RunBackendError: Ray is asked for but not installed, or its cluster cannot be reached.
    """
    address = ray_address()
    if not address:
        return TrainingRun(local_device_config(cfg), source, owner_alive=owner_alive, name=name, **options)
    connect(address)
    return RayRun(cfg, source, owner_alive=owner_alive, name=name, **options)


def start_run(
    cfg: TrainConfig,
    source: DataSource,
    *,
    owner_alive: Callable[[], bool] | None = None,
    name: str | None = None,
    **options: object,
) -> Run:
    """`make_run`, then `start()`: it trains now, or waits in the queue (this process's, or Ray's).

    Raises:
        RunLimitError, ModelTooLargeError: over a per-run cap (nothing was started).
        RunBackendError: Ray is asked for but not installed or not reachable.
    """
    run = make_run(cfg, source, owner_alive=owner_alive, name=name, **options)
    run.start()
    return run
