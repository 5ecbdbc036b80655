"""The Train page's Streamlit side: the session's run, the data and settings forms, live and final views.

The run itself (`vit_core.runs.TrainingRun`) trains on a background thread that never calls
Streamlit. This module keeps the run in `st.session_state`, ties it to the browser session
with a session-scoped resource whose release callback ends it (plus the run manager's
watchdog, which asks the runtime whether the session is still connected), and draws the run
from `run.view()`: a fragment re-reads it every `POLL_S` seconds while the thread works, so
the rest of the app stays usable and no script run ever waits for training.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import streamlit as st

import vit_plots as vp
from ui.models import register_session_model
from ui.page import chart
from vit_core.data import CACHE_ENV, CIFAR10_ARCHIVE, CIFAR10_URL, default_cache_dir
from vit_core.errors import DataError
from vit_core.model import VisionTransformer
from vit_core.runs import (
    APP_PRESETS,
    CIFAR10_DOWNLOAD_MB,
    FAILED,
    FINISHED,
    LOADING,
    STOPPED,
    STOPPING,
    TRAINING,
    DataInfo,
    DataSource,
    DownloadJob,
    RunLimitError,
    RunView,
    Snapshot,
    TrainingRun,
    cifar10_cached,
    estimate_seconds,
    inspect_source,
    max_runs,
    measure_seconds_per_image,
    missing_data_help,
    model_size,
    preset_summary,
)
from vit_core.train import TrainConfig
from vit_plots.training import confusion_figure, per_class_figure, training_curves_figure

ROOT = Path(__file__).resolve().parent.parent
POLL_S = 1.0  # seconds between two looks at a running run (progress, curves)
SNAPSHOT_POLL_S = 3.0  # ... and at its latest snapshot
SNAPSHOT_NOTE = (
    "Every so often the training thread takes these pictures of the model. Left: how alike the learned position "
    "embeddings are (each tile is one patch position against all others); a grid pattern appears as the model "
    "learns where patches are. Middle: the main directions in the patch filters, random at first, smooth colour "
    "and edge detectors later. Right: where the [CLS] token gathers information from, by attention rollout."
)
RUN_KEY = "train_run"  # the session's TrainingRun (one per session)
DOWNLOAD_KEY = "train_download"  # the session's DownloadJob
_ERROR = "_train_error"  # a message from a callback, shown once
_USED = "_train_used"  # name under which the model was put into the picker
_UPLOAD_PATH = "_train_upload_path"
_FORM = "_train_form"  # the settings, kept while other pages are shown (widget state is not)
_DRAWN_ACTIVE = "_train_drawn_active"
_FIGURES = "_train_figures"  # snapshot figures already built, by (run id, step, kind)
UPLOAD_DIR = Path(tempfile.gettempdir()) / "vit-explorer-uploads"
UPLOAD_MB = 200

PRESET_LABELS = {"quick": "Quick", "bundled": "Bundled recipe", "long": "Longer (30 epochs)"}
PATCH_SIZES = (2, 4, 8, 16)
WIDTHS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
HEADS = (1, 2, 3, 4, 6, 8, 12, 16)
MLP_RATIOS = (1.0, 2.0, 3.0, 4.0)
BATCH_SIZES = (8, 16, 32, 64, 128, 256, 512)
LRS = tuple(
    sorted({1e-4, 2e-4, 3e-4, 5e-4, 7e-4, 1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 1e-2} | {c.lr for c in APP_PRESETS.values()})
)
# widget key -> TrainConfig field
KNOBS = {
    "train_patch": "patch_size",
    "train_width": "embed_dim",
    "train_depth": "depth",
    "train_heads": "num_heads",
    "train_mlp": "mlp_ratio",
    "train_epochs": "epochs",
    "train_batch": "batch_size",
    "train_lr": "lr",
    "train_warmup": "warmup_epochs",
    "train_wd": "weight_decay",
    "train_ls": "label_smoothing",
    "train_crop": "random_crop",
    "train_flip": "hflip",
}
FORM_KEYS = ("train_preset", "train_source", "train_path", *KNOBS)


# ---- the session's run and its lifetime ------------------------------------------------------


def session_id() -> str | None:
    """This browser session's id (None outside a script run)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else None


def owner_probe() -> Callable[[], bool] | None:
    """A callable that says whether this session is still connected (None when there is no server runtime)."""
    from streamlit.runtime import Runtime

    sid = session_id()
    if sid is None or not Runtime.exists():
        return None
    runtime = Runtime.instance()
    if runtime.is_active_session(sid) is not True:
        return None  # not a live server session (AppTest runs scripts under a mock runtime)
    return lambda: runtime.is_active_session(sid) is True


def _release(obj) -> None:
    obj.release()


def _lease_fn(_obj, key: str):
    """Session-scoped: created on the first call in a session (again after a reconnect), released with it."""
    attach = getattr(_obj, "attach", None)
    if attach is not None:
        attach(owner_probe())
    return _obj


try:  # scope="session" and on_release: Streamlit >= 1.50 (checked against 1.67's cache_resource)
    _lease = st.cache_resource(scope="session", on_release=_release, max_entries=8, show_spinner=False)(_lease_fn)
except TypeError:  # an older Streamlit: the run manager's watchdog alone ends orphaned runs
    _lease = None


def hold(obj, key: str) -> None:
    """Tie a run or download to this session: when the session ends, `obj.release()` is called."""
    if _lease is not None:
        _lease(obj, key)


def current_run() -> TrainingRun | None:
    """The session's run (re-tied to the session on every page run, so a reconnect keeps it)."""
    run = st.session_state.get(RUN_KEY)
    if run is not None:
        hold(run, f"run:{run.id}")
    return run


def _start(cfg: TrainConfig, source: DataSource, name: str) -> None:
    old = st.session_state.get(RUN_KEY)
    if old is not None and old.alive:
        st.session_state[_ERROR] = "This session is already training a model: one run per session. Stop it first."
        return
    run = TrainingRun(cfg, source, owner_alive=owner_probe(), name=name)
    try:
        run.start()
    except RunLimitError as e:
        st.session_state[_ERROR] = str(e)
        return
    st.session_state[RUN_KEY] = run
    st.session_state.pop(_USED, None)
    hold(run, f"run:{run.id}")


def _resume(run: TrainingRun) -> None:
    try:
        run.resume()
    except (RunLimitError, RuntimeError) as e:
        st.session_state[_ERROR] = str(e)


def _discard() -> None:
    run = st.session_state.pop(RUN_KEY, None)
    if run is not None and run.alive:
        run.stop()
    st.session_state.pop(_USED, None)


def _use_model(run: TrainingRun) -> None:
    try:
        model = run.export_model()
    except RuntimeError as e:
        st.session_state[_ERROR] = str(e)
        return
    if not isinstance(model, VisionTransformer):
        # The app's modules were reloaded (a source file changed) since the run began: the
        # picker checks against the current class, so rebuild the model from its weights.
        fresh = VisionTransformer(model.cfg, list(model.class_names))
        fresh.load_state_dict(model.state_dict())
        model = fresh.eval()
    v = run.view()
    acc = f", {v.final.acc:.0%}" if v.final is not None else ""
    name = f"{run.name} · step {v.step}{acc} · {run.id[:4]}"
    register_session_model(name, model)
    st.session_state[_USED] = name


def _show_error() -> None:
    msg = st.session_state.pop(_ERROR, None)
    if msg:
        st.error(msg)


# ---- data ------------------------------------------------------------------------------------


SOURCES = {
    "path": "A folder or archive on this machine",
    "download": f"Download the official CIFAR-10 ({CIFAR10_DOWNLOAD_MB} MB)",
    "upload": "Upload an archive",
}


def suggested_path() -> str | None:
    """The folder the path box starts with: $VIT_EXPLORER_DATA, else ./data/cifar10, if it exists."""
    env = os.environ.get(CACHE_ENV)
    if env and Path(env).expanduser().exists():
        return env
    local = ROOT / "data" / "cifar10"
    return str(local.relative_to(ROOT)) if local.is_dir() else None


@st.cache_data(ttl=30, max_entries=16, show_spinner=False)
def _inspect(kind: str, path: str | None, found: str | None, mtime: float) -> DataInfo:
    """`inspect_source`, cached for a few seconds per source and what is on disk (`found`, `mtime`)."""
    return inspect_source(DataSource(kind, path))


def _inspect_source(source: DataSource) -> DataInfo:
    found = cifar10_cached() if source.kind == "cache" else (Path(source.path) if source.path else None)
    try:
        mtime = found.stat().st_mtime if found is not None else 0.0
    except OSError:
        mtime = 0.0
    return _inspect(source.kind, source.path, str(found), mtime)


def data_picker() -> tuple[DataSource | None, DataInfo | None]:
    """Where the images come from; returns the source and what it holds, or (None, None)."""
    suggested = suggested_path()
    st.session_state.setdefault("train_source", "path" if suggested or cifar10_cached() is None else "download")
    if cifar10_cached() is not None and suggested is None:
        st.session_state.setdefault("train_source", "download")
    choice = st.radio(
        "Where the images come from", list(SOURCES), format_func=SOURCES.get, key="train_source", horizontal=True
    )
    source: DataSource | None = None
    if choice == "path":
        st.session_state.setdefault("train_path", suggested or "")
        raw = st.text_input(
            "Path of the CIFAR-10 archive (`cifar-10-python.tar.gz`), its extracted folder, or an image folder "
            "(`train/<class>/*.png` and `test/<class>/*.png`)",
            key="train_path",
            placeholder="data/cifar10",
        ).strip()
        if raw:
            p = Path(raw).expanduser()
            source = DataSource("path", str(p if p.is_absolute() else ROOT / p))
        elif cifar10_cached() is None:
            st.info(missing_data_help())
    elif choice == "download":
        if cifar10_cached() is not None:
            source = DataSource("cache")
        else:
            _download_box()
    else:
        source = _upload_box()
    if source is None:
        return None, None
    try:
        info = _inspect_source(source)
    except DataError as e:
        st.error(str(e))
        if source.kind == "path" and cifar10_cached() is None:
            st.info(missing_data_help())
        return None, None
    st.success(
        f"{info.description}: {info.train_size:,} training and {info.test_size:,} test images, "
        f"{len(info.class_names)} classes, {info.image_size}x{info.image_size} pixels."
    )
    return source, info


def _start_download() -> None:
    job = DownloadJob()
    job.start()
    st.session_state[DOWNLOAD_KEY] = job
    hold(job, f"download:{id(job)}")


def _download_box() -> None:
    cache = default_cache_dir()
    st.markdown(
        f"The official archive `{CIFAR10_ARCHIVE}` ({CIFAR10_URL}), about **{CIFAR10_DOWNLOAD_MB} MB**, is "
        f"saved in `{cache}` (set `{CACHE_ENV}` to use another folder) and unpacked there. Nothing is "
        "downloaded until you click."
    )
    job: DownloadJob | None = st.session_state.get(DOWNLOAD_KEY)
    status = job.view()[0] if job is not None else "new"
    if status in ("new", "failed", "cancelled"):
        st.button(f"Download CIFAR-10 ({CIFAR10_DOWNLOAD_MB} MB)", key="train_download_go", on_click=_start_download)
        if job is not None:
            st.error(job.view()[3])
            if status == "failed":
                st.info(missing_data_help())
        return

    @st.fragment(run_every=0.5 if job.alive else None)
    def _progress() -> None:
        status, done, total, msg = job.view()
        if status in ("done", "failed", "cancelled"):
            st.rerun()  # the whole page: the data is there now (or the error is shown)
        frac = min(1.0, done / total) if total else 0.0
        what = "Unpacking" if status == "unpacking" else f"Downloading: {done / 2**20:.0f} / {total / 2**20:.0f} MB"
        st.progress(frac, text=what)
        st.button("Cancel", key="train_download_cancel", on_click=job.cancel)

    _progress()


def _save_upload() -> None:
    up = st.session_state.get("train_upload")
    if up is None:
        st.session_state.pop(_UPLOAD_PATH, None)
        return
    data = up.getvalue()
    UPLOAD_DIR.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(up.name).name)
    path = UPLOAD_DIR / f"{hashlib.sha256(data).hexdigest()[:16]}-{name}"
    if not path.exists():
        path.write_bytes(data)
    st.session_state[_UPLOAD_PATH] = str(path)


def _upload_box() -> DataSource | None:
    limit = min(UPLOAD_MB, int(st.get_option("server.maxUploadSize")))
    st.file_uploader(
        f"The official {CIFAR10_ARCHIVE}, or a .tar.gz of an image folder (train/<class>/, test/<class>/)",
        type=["gz", "tgz", "tar"],
        key="train_upload",
        on_change=_save_upload,
        max_upload_size=limit,
    )
    if limit < CIFAR10_DOWNLOAD_MB:
        st.caption(
            f"This server accepts uploads up to {limit} MB (server.maxUploadSize): the official archive is "
            f"{CIFAR10_DOWNLOAD_MB} MB, so put it on the server and use the path option instead."
        )
    path = st.session_state.get(_UPLOAD_PATH)
    return DataSource("path", path) if path else None


# ---- settings --------------------------------------------------------------------------------


def _apply_preset() -> None:
    cfg = APP_PRESETS[st.session_state["train_preset"]]
    for key, attr in KNOBS.items():
        st.session_state[key] = getattr(cfg, attr)


def _restore_form() -> None:
    """Widget values die with the page; keep a copy so they survive a visit to another page."""
    for k, v in st.session_state.get(_FORM, {}).items():
        if k not in st.session_state:
            st.session_state[k] = v
    if "train_preset" not in st.session_state:
        st.session_state["train_preset"] = "quick"
        _apply_preset()


def _save_form() -> None:
    st.session_state[_FORM] = {k: st.session_state[k] for k in FORM_KEYS if k in st.session_state}


def settings_form(info: DataInfo | None) -> TrainConfig | None:
    """The preset and the knobs; returns the configuration (None when it is not valid)."""
    img = info.image_size if info is not None else 32
    st.selectbox(
        "Preset",
        list(APP_PRESETS),
        format_func=lambda k: f"{PRESET_LABELS.get(k, k)}: {preset_summary(k)}",
        key="train_preset",
        on_change=_apply_preset,
    )
    st.markdown("**Model**")
    c = st.columns(5)
    patches = [p for p in PATCH_SIZES if img % p == 0] or [img]
    if st.session_state.get("train_patch") not in patches:
        st.session_state["train_patch"] = patches[len(patches) // 2]
    c[0].selectbox("Patch size P", patches, key="train_patch", help="Each P x P square of pixels becomes one token.")
    c[1].selectbox("Width D", WIDTHS, key="train_width", help="Length of every token vector.")
    c[2].slider("Depth L", 1, 12, key="train_depth", help="Transformer blocks.")
    c[3].selectbox("Heads", HEADS, key="train_heads", help="Attention heads per block; D must be divisible by it.")
    c[4].selectbox("MLP ratio", MLP_RATIOS, key="train_mlp", help="Hidden width of each MLP, as a multiple of D.")
    st.markdown("**Schedule**")
    c = st.columns(4)
    c[0].number_input("Epochs", 0.01, 500.0, step=1.0, key="train_epochs", help="Passes over the training images.")
    c[1].selectbox("Batch size", BATCH_SIZES, key="train_batch")
    c[2].select_slider("Peak learning rate", LRS, key="train_lr", format_func=lambda v: f"{v:.1e}")
    c[3].number_input(
        "Warmup (epochs)",
        0.0,
        50.0,
        step=0.5,
        key="train_warmup",
        help="Linear ramp to the peak rate; cosine decay after it.",
    )
    c = st.columns(4)
    c[0].number_input(
        "Weight decay", 0.0, 1.0, step=0.01, key="train_wd", help="AdamW's decoupled decay on the weight matrices."
    )
    c[1].slider("Label smoothing", 0.0, 0.5, step=0.05, key="train_ls")
    c[2].checkbox("Random crop (pad 4 px)", key="train_crop", help="Augmentation: shift each image by up to 4 pixels.")
    c[3].checkbox("Horizontal flip", key="train_flip", help="Augmentation: mirror half the images.")
    _save_form()
    ss = st.session_state
    if ss["train_width"] % ss["train_heads"]:
        st.error(f"Width {ss['train_width']} is not divisible by {ss['train_heads']} heads: pick another pair.")
        return None
    base = APP_PRESETS[ss["train_preset"]]
    changes = {attr: ss[key] for key, attr in KNOBS.items()}
    changes["epochs"] = float(changes["epochs"])
    cfg = base.replace(img_size=img, **changes)
    if info is not None:
        steps_per_epoch = max(1, info.train_size // cfg.batch_size)
        total = max(1, round(cfg.epochs * steps_per_epoch))
        # About a dozen points on the test curve, but not more often than every half epoch.
        cfg = cfg.replace(eval_every=max(1, total // 12, steps_per_epoch // 2))
    return cfg


@st.cache_data(ttl=600, max_entries=32, show_spinner="Timing a few training steps of this model...")
def _seconds_per_image(shape: tuple, num_classes: int) -> float:
    patch, width, depth, heads, mlp, img = shape
    cfg = TrainConfig(img_size=img, patch_size=patch, embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=mlp)
    return measure_seconds_per_image(cfg, num_classes)


def fmt_params(n: int) -> str:
    """'1.82 M' or '15,459'."""
    return f"{n / 1e6:.2f} M" if n >= 100_000 else f"{n:,}"


def fmt_duration(s: float) -> str:
    """'45 s', '12 min', '2 h 05 min'."""
    if not np.isfinite(s):
        return "?"
    s = max(0.0, float(s))
    if s < 90:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def summary(cfg: TrainConfig, info: DataInfo) -> None:
    """Parameter count, tokens per image, steps and the time estimate, before anything starts."""
    k = len(info.class_names)
    params, tokens = model_size(cfg, k)
    steps_per_epoch = max(1, info.train_size // cfg.batch_size)
    total = max(1, round(cfg.epochs * steps_per_epoch))
    shape = (cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.img_size)
    spi = _seconds_per_image(shape, k)
    eval_size = min(2000, info.test_size)
    est = estimate_seconds(cfg, spi, info.train_size, eval_size, info.test_size)
    c = st.columns(4)
    c[0].metric("Parameters", fmt_params(params))
    c[1].metric("Tokens per image", f"{tokens}", help=f"({cfg.img_size}/{cfg.patch_size})² patches + [CLS]")
    c[2].metric("Optimiser steps", f"{total:,}", help=f"{steps_per_epoch:,} per epoch of {info.train_size:,} images")
    c[3].metric("Estimated time", fmt_duration(est))
    st.caption(
        f"The estimate comes from timing two training steps of this model on this server just now "
        f"({spi * 1e3:.2f} ms per image at batch 32), times {total * cfg.batch_size:,} training images, plus the "
        f"evaluations (a forward pass counted as a third of a training step). Other work on the server, "
        f"including other people's runs, makes it longer."
    )


def new_run_form() -> None:
    """Data, settings and the Start button."""
    _restore_form()
    st.subheader("1. Data")
    source, info = data_picker()
    st.subheader("2. Model and schedule")
    cfg = settings_form(info)
    if cfg is not None and info is not None:
        summary(cfg, info)
    st.subheader("3. Train")
    run = st.session_state.get(RUN_KEY)
    busy = run is not None and run.alive
    ready = cfg is not None and source is not None and not busy
    name = f"ViT P{cfg.patch_size} D{cfg.embed_dim} L{cfg.depth}" if cfg is not None else ""
    st.button(
        "Start training",
        type="primary",
        key="train_start",
        disabled=not ready,
        on_click=_start,
        args=(cfg, source, name),
        icon=":material/play_arrow:",
    )
    _show_error()
    st.caption(
        f"Training runs in the background on this server, one run per browser session and at most {max_runs()} at "
        "once on the server. You can keep exploring the other pages meanwhile; closing the tab stops the run."
    )


# ---- the run -----------------------------------------------------------------------------------


def run_panel(run: TrainingRun) -> None:
    """The session's run: live while the thread works, the results once it has ended."""
    v = run.view()
    st.session_state[_DRAWN_ACTIVE] = v.active
    if v.active:
        _live(run)
    else:
        results(run, v)


def _live(run: TrainingRun) -> None:
    @st.fragment(run_every=POLL_S)
    def live_fragment() -> None:
        v = run.view()
        if not v.active and st.session_state.get(_DRAWN_ACTIVE):
            st.rerun()  # the run ended: redraw the whole page with the results
        progress_block(run, v)
        if v.steps:
            chart(_curves(v), key="train_curves_live")

    # The pictures change only every few dozen steps: a slower poll of their own.
    @st.fragment(run_every=SNAPSHOT_POLL_S)
    def snapshot_fragment() -> None:
        v = run.view()
        if not v.active and st.session_state.get(_DRAWN_ACTIVE):
            st.rerun()
        if v.snapshots:
            snap = v.snapshots[-1]
            st.markdown(f"**What the model has learned so far** (step {snap.step:,}, epoch {snap.epoch:.2f})")
            snapshot_panels(run, v, snap, "live")
            st.caption(SNAPSHOT_NOTE)

    live_fragment()
    snapshot_fragment()


def progress_block(run: TrainingRun, v: RunView) -> None:
    """Status, progress bar with ETA, throughput, and the pause / resume / stop buttons."""
    if v.status == LOADING:
        if v.download is not None:
            done, total = v.download
            st.progress(
                min(1.0, done / total) if total else 0.0,
                text=f"Downloading: {done / 2**20:.0f} / {total / 2**20:.0f} MB",
            )
        else:
            st.info(
                f"{v.detail or 'Loading the data'}... (the first read of an image folder decodes every image once; "
                "later runs start in seconds)",
                icon=":material/hourglass_top:",
            )
    else:
        eta = "" if v.paused else f" · about {fmt_duration(v.eta_s)} left"
        label = "Paused" if v.paused else ("Stopping" if v.status == STOPPING else "Training")
        if v.detail:
            label = v.detail[0].upper() + v.detail[1:]
        st.progress(v.progress, text=f"{label}: step {v.step:,} of {v.total_steps:,} (epoch {v.epoch:.2f}){eta}")
    c = st.columns([1, 1, 1, 1, 2])
    last_eval = v.evals[-1] if v.evals else None
    c[0].metric("Images / s", f"{v.images_per_s:,.0f}" if v.images_per_s else "–")
    c[1].metric("Train loss", f"{np.mean(v.loss[-20:]):.3f}" if v.loss else "–")
    c[2].metric(
        "Test accuracy", f"{last_eval.acc:.1%}" if last_eval else "–", help=f"On {v.eval_size:,} held-out images"
    )
    c[3].metric("Parameters", fmt_params(v.params) if v.params else "–")
    with c[4]:
        b = st.columns(2)
        if v.paused:
            b[0].button(
                "Resume", key="train_unpause", on_click=run.unpause, icon=":material/play_arrow:", width="stretch"
            )
        else:
            b[0].button(
                "Pause",
                key="train_pause",
                on_click=run.pause,
                disabled=v.status not in (TRAINING, LOADING),
                icon=":material/pause:",
                width="stretch",
            )
        b[1].button("Stop", key="train_stop", on_click=run.stop, disabled=v.status not in (TRAINING, "paused", LOADING), icon=":material/stop:", help="Stops after the current step and saves a checkpoint you can resume from.", width="stretch")  # fmt: skip


def _curves(v: RunView):
    return training_curves_figure(
        v.steps,
        v.loss,
        v.acc,
        v.lr,
        [e.step for e in v.evals],
        [e.loss for e in v.evals],
        [e.acc for e in v.evals],
        total_steps=v.total_steps,
    )


def snapshot_panels(run: TrainingRun, v: RunView, snap: Snapshot, key: str) -> None:
    """Position similarity, filter principal components and the probe's [CLS] attention, side by side."""
    c = st.columns(3)
    with c[0]:
        st.markdown("Position embeddings: cosine similarity")
        chart(_snapshot_figure(run, snap, "pos", v.class_names), key=f"train_pos_{key}")
    with c[1]:
        st.markdown(f"Patch filters: top {len(snap.filters_variance)} principal components")
        chart(_snapshot_figure(run, snap, "filters", v.class_names), key=f"train_filters_{key}")
    with c[2]:
        p = snap.probe_probs
        guess = f"{v.class_names[int(p.argmax())]} ({p.max():.0%})" if v.class_names else ""
        st.markdown(f"[CLS] attention on a test image · model says {guess}")
        fig = _snapshot_figure(run, snap, "cls", v.class_names)
        if fig is not None:
            chart(fig, key=f"train_cls_{key}")


def _snapshot_figure(run: TrainingRun, snap: Snapshot, kind: str, class_names: list[str]):
    """One snapshot figure, built once per (run, step, kind) and kept for the session's next polls."""
    cache = st.session_state.setdefault(_FIGURES, {})
    k = (run.id, snap.step, kind)
    if k not in cache:
        if kind == "pos":
            fig = vp.similarity_tiles_figure(snap.position_similarity, height=320)
        elif kind == "filters":
            labels = [f"PC {i + 1}: {r:.1%} of the variance" for i, r in enumerate(snap.filters_variance)]
            fig = vp.filters_figure(snap.filters_pca, labels, cols=7, tile_px=28)
        else:
            image = run.test_image(run.probe_index)
            if image is None:
                return None
            gh, gw = snap.cls_map.shape
            fig = vp.overlay_figure(
                image,
                snap.cls_map,
                (gh, gw),
                image.shape[0] // gh,
                colorbar_title="rollout",
                value_name="rollout",
                height=320,
            )
        while len(cache) >= 12:  # the live view needs 3, the scrubber a few more
            cache.pop(next(iter(cache)))
        cache[k] = fig
    return cache[k]


def results(run: TrainingRun, v: RunView) -> None:
    """How the run ended: accuracy, buttons, curves, snapshots to scrub through, confusion, mistakes."""
    if v.status == FAILED:
        st.error(v.message or "The run failed.")
        st.button("Set up a new run", key="train_new", on_click=_discard)
        return
    if v.status == FINISHED:
        st.success(v.message, icon=":material/check_circle:")
    elif v.status == STOPPED:
        st.warning(v.message or "Stopped.", icon=":material/stop_circle:")
    else:
        st.error(v.message, icon=":material/error:")
    _show_error()
    final = v.final
    c = st.columns(4)
    c[0].metric("Test accuracy", f"{final.acc:.1%}" if final else "–", help=f"On all {v.test_size:,} test images")
    c[1].metric("Steps", f"{v.step:,} of {v.total_steps:,}")
    c[2].metric("Training time", fmt_duration(v.train_seconds))
    c[3].metric("Images / s", f"{v.step * v.config.batch_size / v.train_seconds:,.0f}" if v.train_seconds else "–")
    b = st.columns(4)
    used = st.session_state.get(_USED)
    b[0].button(
        "Model in use on every page" if used else "Use this model",
        key="train_use",
        type="primary",
        on_click=_use_model,
        args=(run,),
        disabled=bool(used) or v.checkpoint is None,
        icon=":material/check:" if used else ":material/open_in_new:",
        width="stretch",
        help="Adds it to the model picker in the sidebar and selects it: every explorer page then shows it.",
    )
    if v.checkpoint is not None and v.checkpoint.is_file():
        path = v.checkpoint
        b[1].download_button(
            "Download the checkpoint",
            data=lambda: path.read_bytes(),
            file_name=f"vit-{run.id}.safetensors",
            mime="application/octet-stream",
            key="train_download_ckpt",
            on_click="ignore",
            icon=":material/download:",
            width="stretch",
            help="Weights and config as .safetensors: load it in the sidebar's 'More models' or with vit_core.load_checkpoint.",
        )
    if v.can_resume:
        b[2].button(
            "Resume training",
            key="train_resume",
            on_click=_resume,
            args=(run,),
            icon=":material/play_arrow:",
            width="stretch",
        )
    b[3].button("New run", key="train_new", on_click=_discard, icon=":material/restart_alt:", width="stretch")
    if used:
        st.info(f"**{used}** is now selected in the sidebar's model picker: open any page to look inside it.")
    st.caption(f"Run folder: `{v.out_dir}` (last.pt resumes exactly; model.safetensors is the model alone).")
    if v.steps:
        chart(_curves(v), key="train_curves_final")
    if v.snapshots:
        st.subheader("How the structures emerged")
        steps = [s.step for s in v.snapshots]
        st.session_state.setdefault("train_snapshot", steps[-1])
        if st.session_state["train_snapshot"] not in steps:
            st.session_state["train_snapshot"] = steps[-1]
        if len(steps) > 1:
            st.select_slider("Snapshot at step", steps, key="train_snapshot", help="Scrub through the run.")
        snap = v.snapshots[steps.index(st.session_state["train_snapshot"])]
        st.caption(f"Step {snap.step:,} (epoch {snap.epoch:.2f}).")
        snapshot_panels(run, v, snap, "final")
        st.caption(SNAPSHOT_NOTE)
    if final is not None:
        st.subheader("Where it goes wrong")
        c = st.columns(2)
        with c[0]:
            st.markdown("Confusion matrix")
            chart(confusion_figure(np.asarray(final.confusion), final.class_names), key="train_confusion")
        with c[1]:
            st.markdown("Accuracy per class")
            chart(per_class_figure(final.per_class_acc, final.class_names), key="train_per_class")
    if v.mistakes:
        st.markdown("**The most confident mistakes** (true class → predicted, confidence)")
        cols = st.columns(8)
        for i, m in enumerate(v.mistakes[:24]):
            img = run.test_image(m["index"])
            if img is None:
                break
            cols[i % 8].image(
                _sharp(img), caption=f"{m['true_name']} → {m['pred_name']} ({m['confidence']:.0%})", width="stretch"
            )


def _sharp(img: np.ndarray, px: int = 96) -> np.ndarray:
    s = max(1, px // max(img.shape[:2]))
    return np.repeat(np.repeat(img, s, axis=0), s, axis=1)


def page_status_line(v: RunView | None) -> str:
    """A one-line summary of the session's run (for the page top)."""
    if v is None:
        return ""
    if v.active:
        return f"Training: step {v.step:,} of {v.total_steps:,}"
    return {FINISHED: "Finished", STOPPED: "Stopped", FAILED: "Failed"}.get(v.status, v.status.capitalize())
