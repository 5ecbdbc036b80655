"""Step 2 and 3 of a new run: the preset and the knobs, what the run will cost, and the Start button.

Widget values die when another page is shown; the form keeps a copy in `st.session_state`
(`_restore_form`, `_save_form`) so the settings survive a visit to the explorer pages.
"""

from __future__ import annotations

import streamlit as st
import torch

from vit_core.cnn import CNN_PRESETS, build_model
from vit_core.costs import Calibration, calibrate, estimate_seconds, model_size, seconds_per_image
from vit_core.errors import VitCoreError
from vit_core.limits import current_limits
from vit_core.runs import APP_PRESETS, BENCHMARKS, check_run_config, max_runs, preset_summary, run_threads
from vit_core.sources import DataInfo
from vit_core.train import TrainConfig

from .compare import LABELS, same_budget, start_comparison
from .data_picker import data_picker
from .formatting import fmt_duration, fmt_params
from .lease import RUN_KEY, show_error, start_run

_FORM = "_train_form"  # the settings, kept while other pages are shown (widget state is not)
PRESET_LABELS = {"demo": "Demo", "quick": "Quick", "bundled": "Bundled recipe", "long": "Longer (30 epochs)"}
EVAL_SIZE = 2000  # test images of each evaluation during training (TrainingRun's default)
PATCH_SIZES = (2, 4, 8, 16)
WIDTHS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
HEADS = (1, 2, 3, 4, 6, 8, 12, 16)
MLP_RATIOS = (1.0, 2.0, 3.0, 4.0)
BATCH_SIZES = (8, 16, 32, 64, 128, 256, 512)
LRS = tuple(
    sorted({1e-4, 2e-4, 3e-4, 5e-4, 7e-4, 1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 1e-2} | {c.lr for c in APP_PRESETS.values()})
)
# the Experiments page's variants (vit_core.experiments): architecture, ViT ablations, data budget
ARCH_LABELS = {"vit": "ViT", "resnet": "ResNet (CNN baseline, about the preset's parameter count)"}
POS_LABELS = {"learned": "learned", "sincos": "fixed 2-D sine-cosine", "none": "none"}
POOL_LABELS = {"token": "[CLS] token", "avg": "average of the patches (no [CLS])"}
REGISTERS = (0, 1, 2, 4, 8)
TRAIN_SIZES = (0, 1000, 5000, 10000, 20000)  # 0: every training image
# widget key -> TrainConfig field
KNOBS = {
    "train_arch": "arch",
    "train_pos": "pos_embed_type",
    "train_pool": "global_pool",
    "train_regs": "reg_tokens",
    "train_images": "train_size",
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


def _apply_preset() -> None:
    cfg = APP_PRESETS[st.session_state["train_preset"]]
    for key, attr in KNOBS.items():
        st.session_state[key] = getattr(cfg, attr)


def _restore_form() -> None:
    """Widget values die with the page; keep a copy so they survive a visit to another page."""
    for k, v in st.session_state.get(_FORM, {}).items():
        if k not in st.session_state:
            st.session_state[k] = v
    if st.session_state.get("train_preset") not in APP_PRESETS:
        st.session_state["train_preset"] = "demo"
        _apply_preset()


def _save_form() -> None:
    st.session_state[_FORM] = {k: st.session_state[k] for k in FORM_KEYS if k in st.session_state}


def server_speed(arch: str = "vit") -> Calibration:
    """This server's training FLOP/s for one run's threads, for a ViT or the CNN baseline ("resnet"):
    measured once per process, then cached."""
    return calibrate(run_threads(), arch=arch)


def preset_estimate(key: str, info: DataInfo | None, speed: Calibration) -> float:
    """Estimated seconds of a preset run on `info`'s data (CIFAR-10's sizes without data) on this server now."""
    train_size, test_size = (info.train_size, info.test_size) if info is not None else (50_000, 10_000)
    cfg = APP_PRESETS[key]
    _, total = cfg.steps(train_size)
    cfg = cfg.replace(eval_every=max(1, total // 12, cfg.steps(train_size)[0] // 2))
    spi = seconds_per_image(cfg, speed, len(info.class_names) if info is not None else 10)
    return estimate_seconds(cfg, spi, train_size, min(EVAL_SIZE, test_size), test_size)


def settings_form(info: DataInfo | None) -> TrainConfig | None:
    """The preset and the knobs; returns the configuration (None when it is not valid)."""
    img = info.image_size if info is not None else 32
    speed = server_speed()
    # The options' labels stay the same from run to run (the widget keeps its value by label);
    # the estimates, which depend on the data, go in the caption below.
    st.selectbox(
        "Preset",
        list(APP_PRESETS),
        format_func=lambda k: f"{PRESET_LABELS.get(k, k)}: {preset_summary(k)}",
        key="train_preset",
        on_change=_apply_preset,
    )
    key = st.session_state["train_preset"]
    estimates = " · ".join(
        f"{PRESET_LABELS.get(k, k)} about {fmt_duration(preset_estimate(k, info, speed))}" for k in APP_PRESETS
    )
    st.caption(
        f"On this server now, for this data: {estimates}. Measured ({PRESET_LABELS.get(key, key)}): {BENCHMARKS[key]}."
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
    st.markdown("**Variant** (the Experiments page's comparisons)")
    c = st.columns(5)
    c[0].selectbox("Architecture", list(ARCH_LABELS), key="train_arch", format_func=ARCH_LABELS.get)
    vit = st.session_state["train_arch"] == "vit"
    c[1].selectbox("Positions", list(POS_LABELS), key="train_pos", format_func=POS_LABELS.get, disabled=not vit)
    c[2].selectbox("Read-out", list(POOL_LABELS), key="train_pool", format_func=POOL_LABELS.get, disabled=not vit)
    c[3].selectbox("Registers", REGISTERS, key="train_regs", disabled=not vit, help="Extra learned tokens.")
    c[4].selectbox(
        "Training images",
        TRAIN_SIZES,
        key="train_images",
        format_func=lambda n: "all" if n == 0 else f"{n:,} (balanced)",
        help="A class-balanced subset, the same for the same seed.",
    )
    st.markdown("**Schedule**")
    c = st.columns(4)
    max_epochs = float(current_limits().max_epochs)
    if st.session_state.get("train_epochs", 0) > max_epochs:
        st.session_state["train_epochs"] = max_epochs
    c[0].number_input(
        "Epochs",
        0.01,
        max_epochs,
        step=1.0,
        key="train_epochs",
        help=f"Passes over the training images (this server allows up to {max_epochs:g} per run).",
    )
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
    changes["class_token"] = changes["global_pool"] == "token"
    changes["cnn_preset"] = ss["train_preset"] if ss["train_preset"] in CNN_PRESETS else "bundled"
    if info is not None and changes["train_size"] > info.train_size:
        st.error(f"This data has {info.train_size:,} training images: choose fewer training images.")
        return None
    cfg = base.replace(img_size=img, **changes)
    if info is not None:
        steps_per_epoch, total = cfg.steps(cfg.train_size or info.train_size)
        # About a dozen points on the test curve, but not more often than every half epoch.
        cfg = cfg.replace(eval_every=max(1, total // 12, steps_per_epoch // 2))
    try:
        check_run_config(cfg, len(info.class_names) if info is not None else 10)
    except VitCoreError as e:
        st.error(str(e))
        return None
    return cfg


def summary(cfg: TrainConfig, info: DataInfo) -> None:
    """Parameter count, tokens per image, steps and the time estimate, before anything starts (arithmetic only)."""
    k = len(info.class_names)
    params, tokens = model_size(cfg, k)
    if cfg.arch != "vit":  # the CNN baseline has no tokens; its FLOPs are counted on its own layers
        params, tokens = cnn_params(cfg, k), 0
    train_size = cfg.train_size or info.train_size
    steps_per_epoch, total = cfg.steps(train_size)
    speed = server_speed(cfg.arch)
    spi = seconds_per_image(cfg, speed, k)
    est = run_estimate(cfg, info)
    c = st.columns(4)
    c[0].metric("Parameters", fmt_params(params))
    c[1].metric("Tokens per image", f"{tokens}", help=f"({cfg.img_size}/{cfg.patch_size})² patches + [CLS]")
    c[2].metric("Optimiser steps", f"{total:,}", help=f"{steps_per_epoch:,} per epoch of {train_size:,} images")
    c[3].metric("Estimated time", fmt_duration(est))
    st.caption(
        f"The estimate counts the model's floating-point operations ({spi * speed.flops_per_s / 1e6:,.0f} MFLOP per "
        f"training image) and divides by this server's speed, measured once when the page was first opened "
        f"({speed.flops_per_s / 1e9:.1f} GFLOP/s for a {'ResNet' if cfg.arch != 'vit' else 'ViT'} on "
        f"{speed.threads} thread{'s' if speed.threads != 1 else ''}), "
        f"times {total * cfg.batch_size:,} training images, plus the evaluations. Other work on the server, "
        "including other people's runs, makes it longer."
    )


def run_estimate(cfg: TrainConfig, info: DataInfo) -> float:
    """Estimated seconds of a run of `cfg` on `info`'s data on this server now (arithmetic only)."""
    speed = server_speed(cfg.arch)
    spi = seconds_per_image(cfg, speed, len(info.class_names))
    eval_size = min(EVAL_SIZE, info.test_size)
    return estimate_seconds(cfg, spi, cfg.train_size or info.train_size, eval_size, info.test_size)


def cnn_params(cfg: TrainConfig, num_classes: int) -> int:
    """Parameters of the CNN baseline `cfg` trains (built on the meta device: no memory)."""
    with torch.device("meta"):
        return build_model(cfg.model_config(num_classes)).num_params()


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
    busy = run is not None and run.view().active
    ready = cfg is not None and source is not None and not busy
    name = f"ViT P{cfg.patch_size} D{cfg.embed_dim} L{cfg.depth}" if cfg is not None else ""
    st.button(
        "Start training",
        type="primary",
        key="train_start",
        disabled=not ready,
        on_click=start_run,
        args=(cfg, source, name),
        icon=":material/play_arrow:",
    )
    both = same_budget(cfg) if cfg is not None else None
    est = (
        " · ".join(f"{LABELS[a]} about {fmt_duration(run_estimate(c, info))}" for a, c in both.items())
        if both is not None and info is not None
        else ""
    )
    st.button(
        "Train the ViT, then the CNN, on this budget",
        key="train_compare_start",
        disabled=not ready,
        on_click=start_comparison,
        args=(cfg, source),
        icon=":material/compare_arrows:",
        help="The ViT of these settings, then the CNN baseline on the same images, epochs, batch, schedule and "
        "seed; their curves on one chart and their results side by side. " + (f"Estimated: {est}." if est else ""),
    )
    show_error()
    lim = current_limits()
    caps = f" Each run may train for up to {fmt_duration(lim.max_run_seconds)}." if lim.max_run_seconds else ""
    st.caption(
        f"Training runs in the background on this server, one run per browser session and at most {max_runs()} at "
        "once on the server; when all are busy, your run waits in a queue and starts by itself." + caps + " You can "
        "keep exploring the other pages meanwhile; closing the tab stops the run."
    )
