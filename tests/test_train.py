"""vit_core.train on tiny synthetic data: it learns, resumes exactly, stops on NaN, drives a CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from vit_core import load_checkpoint
from vit_core.batches import augment_batch, mix_batch, normalize_batch
from vit_core.cli import main
from vit_core.data import ImageDataset
from vit_core.errors import CheckpointError
from vit_core.evaluation import misclassified
from vit_core.export import export_run, exported_accuracy
from vit_core.train import PRESETS, TrainConfig, Trainer, lr_at

CLASSES = ["red", "green", "blue", "grey"]


def colour_dataset(n: int, seed: int) -> ImageDataset:
    """An easy task: 8x8 noisy images whose class is their dominant colour."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    base = torch.full((n, 3, 8, 8), 60.0)
    for k in range(3):
        base[labels == k, k] = 200.0
    base[labels == 3] = 130.0
    noise = torch.randn(n, 3, 8, 8, generator=g) * 30
    return ImageDataset((base + noise).clamp(0, 255).to(torch.uint8), labels, list(CLASSES), "synthetic colours")


def tiny_config(**changes: object) -> TrainConfig:
    cfg = TrainConfig(
        img_size=8,
        patch_size=4,
        embed_dim=32,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        epochs=6,
        batch_size=32,
        lr=3e-3,
        warmup_epochs=0.5,
        crop_padding=1,
        eval_every=4,
        eval_batch_size=64,
        device="cpu",
        seed=3,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    return cfg.replace(**changes)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and a CPU shared with other jobs makes more threads slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> tuple[ImageDataset, ImageDataset]:
    return colour_dataset(256, 0), colour_dataset(96, 1)


def test_presets_are_plain_vits_for_cifar() -> None:
    for name, cfg in PRESETS.items():
        vcfg = cfg.vit_config(10)
        assert vcfg.img_size == (32, 32) and vcfg.class_token and vcfg.global_pool == "token", name
        assert vcfg.crop_pct == 1.0 and vcfg.mean == pytest.approx((0.4914, 0.4822, 0.4465)), name
    assert PRESETS["quick"].patch_size == 4 and PRESETS["bundled"].patch_size == 4
    assert PRESETS["quick"].embed_dim < PRESETS["bundled"].embed_dim  # quick is the cheaper one


def test_lr_schedule_warmup_then_cosine() -> None:
    cfg = TrainConfig(lr=1e-3, min_lr=1e-5, warmup_epochs=1)
    lrs = [lr_at(cfg, s, 100, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_at(cfg, 100, 100, 10) == pytest.approx(1e-5)
    assert lr_at(cfg, 55, 100, 10) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5), rel=1e-6)


def test_tiny_run_learns(data: tuple[ImageDataset, ImageDataset], tmp_path: Path) -> None:
    train, test = data
    losses, evals = [], []
    trainer = Trainer(
        tiny_config(),
        train,
        test,
        out_dir=tmp_path,
        on_step=lambda m: losses.append(m.loss),
        on_eval=evals.append,
        export_path=tmp_path / "export.safetensors",
    )
    res = trainer.run()
    assert res.status == "finished" and res.step == trainer.total_steps == 48
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.5
    assert res.final is not None and res.final.acc > 0.9  # chance is 0.25
    assert len(evals) == 12 and evals[-1].acc == res.final.acc
    conf = np.asarray(res.final.confusion)
    assert conf.sum() == len(test) and conf.sum(1).tolist() == [24, 24, 24, 24]
    assert res.final.per_class_acc == pytest.approx((conf.diagonal() / conf.sum(1)).tolist())
    # files: a load_checkpoint-readable model and the metrics JSON
    model = load_checkpoint(tmp_path / "model.safetensors")
    assert model.class_names == CLASSES and model.cfg.patch_size == 4
    with torch.no_grad():
        assert torch.equal(model.pos_embed, trainer.model.pos_embed)
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["status"] == "finished" and doc["final"]["acc"] == res.final.acc
    assert [h["step"] for h in doc["history"]] == list(range(4, 49, 4))
    assert load_checkpoint(tmp_path / "best.safetensors").cfg.embed_dim == 32
    # the export holds the best model; a worse run does not replace it
    assert exported_accuracy(tmp_path / "export.safetensors") == res.best_acc > 0.9
    before = (tmp_path / "export.safetensors").read_bytes()
    worse = Trainer(tiny_config(epochs=0.125), train, test, export_path=tmp_path / "export.safetensors")
    assert worse.run().final.acc < res.best_acc
    assert (tmp_path / "export.safetensors").read_bytes() == before
    # --export-only: the run's best model as float16, evaluated after writing
    doc = export_run(tmp_path, tmp_path / "asset.safetensors", test)
    assert abs(doc["test_acc"] - res.best_acc) <= 2 / len(test)  # fp16 rounding may flip a borderline image
    meta = json.loads((tmp_path / "asset.metrics.json").read_text())
    assert meta["test_acc"] == doc["test_acc"] and set(meta["per_class_acc"]) == set(CLASSES)
    assert load_file(tmp_path / "asset.safetensors")["head.weight"].dtype == torch.float16
    assert load_checkpoint(tmp_path / "asset.safetensors").head.weight.dtype == torch.float32


def test_misclassified_gallery(data: tuple[ImageDataset, ImageDataset]) -> None:
    train, test = data
    trainer = Trainer(tiny_config(epochs=0.25), train, test)  # barely trained: many mistakes
    trainer.run()
    wrong = misclassified(trainer.model, test, limit=10)
    assert 0 < len(wrong) <= 10
    confs = [w["confidence"] for w in wrong]
    assert confs == sorted(confs, reverse=True)
    for w in wrong:
        assert w["true"] == int(test.labels[w["index"]]) and w["pred"] != w["true"]
        assert w["true_name"] == CLASSES[w["true"]]


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


REGULARISED = {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mix_prob": 0.7, "drop_path": 0.2}


@pytest.mark.parametrize("extra", [{}, REGULARISED], ids=["plain", "mixup-cutmix-droppath"])
def test_stop_and_resume_equals_uninterrupted(
    data: tuple[ImageDataset, ImageDataset], tmp_path: Path, extra: dict[str, float]
) -> None:
    train, test = data
    cfg = tiny_config(epochs=3, eval_every=5, **extra)
    full = Trainer(cfg, train, test, out_dir=tmp_path / "full")
    full_res = full.run()

    part = Trainer(cfg, train, test, out_dir=tmp_path / "part")
    part.on_step = lambda m: part.request_stop() if m.step == 11 else None  # mid-epoch, between evaluations
    res = part.run()
    assert res.status == "stopped" and res.step == 11 and "Resume" in res.message

    resumed = Trainer.resume(tmp_path / "part" / "last.pt", train, test)
    assert resumed.step == 11
    res2 = resumed.run()
    assert res2.status == "finished" and res2.step == full_res.step
    a, b = _params(full.model), _params(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert [h.acc for h in full_res.history] == [h.acc for h in res2.history]


def test_mixing_and_stochastic_depth(data: tuple[ImageDataset, ImageDataset]) -> None:
    """Off by default and a no-op at mix_prob 0; on, the loss is the lam-weighted two-label loss."""
    train, test = data
    plain = Trainer(tiny_config(epochs=1), train, test)
    plain.run()
    # with mix_prob 0 the extra draw from the step generator comes after the crop and flip: same run
    never = Trainer(tiny_config(epochs=1, mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=0.0), train, test)
    never.run()
    a, b = _params(plain.model), _params(never.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for bad in ({"drop_path": 1.0}, {"mix_prob": 1.5}, {"cutmix_alpha": -1.0}):
        with pytest.raises(ValueError):
            tiny_config(**bad)
    # drop rates rise linearly with depth
    deep = Trainer(tiny_config(depth=3, drop_path=0.3), train, test)
    assert [blk.drop_path.drop_prob for blk in deep.model.blocks] == pytest.approx([0.0, 0.15, 0.3])
    # every batch mixed: the reported loss is lam * CE(y) + (1 - lam) * CE(reversed y)
    losses: list[float] = []
    mixed = Trainer(tiny_config(epochs=1, cutmix_alpha=1.0, mix_prob=1.0), train, test)
    mixed.on_step = lambda m: losses.append(m.loss)
    first = mixed._epoch_order(0)[:32]
    first_x, first_y = train.images[first], train.labels[first]
    model0 = {k: v.clone() for k, v in mixed.model.state_dict().items()}
    mixed.run()
    # step 0 again, by hand: crop + flip, normalise, the mix-or-not draw, the mix
    cfg, g = mixed.cfg, mixed._step_generator(0)
    x = normalize_batch(augment_batch(first_x, g, padding=cfg.crop_padding, flip=cfg.hflip), cfg.mean, cfg.std)
    assert torch.rand(1, generator=g).item() < cfg.mix_prob
    x, lam = mix_batch(x, g, cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_switch_prob)
    assert lam < 1.0
    ref = Trainer(tiny_config(epochs=1), train, test).model
    ref.load_state_dict(model0)
    ref.train()
    with torch.no_grad():
        logits = ref(x)
    expect = lam * F.cross_entropy(logits, first_y, label_smoothing=0.1) + (1 - lam) * F.cross_entropy(
        logits, first_y.flip(0), label_smoothing=0.1
    )
    assert losses[0] == pytest.approx(expect.item(), rel=1e-5)


def test_init_from_starts_at_those_weights(data: tuple[ImageDataset, ImageDataset], tmp_path: Path) -> None:
    """A warm start copies every weight; a model of another shape or other classes is refused by name."""
    train, test = data
    first = Trainer(tiny_config(epochs=2), train, test, out_dir=tmp_path / "a")
    first_res = first.run()
    src = tmp_path / "a" / "best.safetensors"
    warm = Trainer(tiny_config(epochs=1, seed=11, init_from=str(src)), train, test, out_dir=tmp_path / "b")
    best = load_checkpoint(src)
    a, b = _params(best), _params(warm.model)
    assert all(torch.equal(a[k], b[k]) for k in a)  # before any step: exactly the file's weights
    cold = Trainer(tiny_config(epochs=1, seed=11), train, test)
    assert not torch.equal(_params(cold.model)["pos_embed"], b["pos_embed"])
    assert warm.evaluate(test).acc == pytest.approx(first_res.best_acc)
    doc_cfg = warm.state_dict()["config"]
    assert doc_cfg["init_from"] == str(src)  # recorded with the run
    # resuming a warm-started run does not read the warm-start file again
    warm.on_step = lambda m: warm.request_stop() if m.step == 3 else None
    warm.run()
    src.rename(tmp_path / "gone.safetensors")
    resumed = Trainer.resume(tmp_path / "b" / "last.pt", train, test)
    assert resumed.step == 3 and resumed.cfg.init_from == str(src)
    with pytest.raises(CheckpointError, match="shape of the configured model"):
        Trainer(tiny_config(embed_dim=16, init_from=str(tmp_path / "gone.safetensors")), train, test)
    other = ImageDataset(train.images, train.labels, ["a", "b", "c", "d"], "renamed")
    with pytest.raises(CheckpointError, match="other classes"):
        Trainer(tiny_config(init_from=str(tmp_path / "gone.safetensors")), other, test)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data: tuple[ImageDataset, ImageDataset], tmp_path: Path) -> None:
    train, test = data
    trainer = Trainer(tiny_config(eval_every=4), train, test, out_dir=tmp_path)
    messages: list[str] = []
    trainer.on_message = messages.append

    def poison(m: object) -> None:
        if trainer.step == 6:
            with torch.no_grad():
                trainer.model.head.weight.fill_(float("nan"))

    trainer.on_step = poison
    res = trainer.run()
    assert res.status == "diverged" and res.step == 6
    assert "nan" in res.message and "step 4" in res.message and "last.pt" in res.message
    assert messages[-1] == res.message
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())
    resumed = Trainer.resume(tmp_path / "last.pt", train, test)
    assert resumed.step == 4 and math.isfinite(resumed.evaluate(test).loss)


def test_pause_holds_the_loop_and_stop_ends_it(data: tuple[ImageDataset, ImageDataset]) -> None:
    train, test = data
    trainer = Trainer(tiny_config(epochs=50, eval_every=10_000), train, None)
    steps: list[int] = []
    trainer.on_step = lambda m: steps.append(m.step)
    th = threading.Thread(target=trainer.run, daemon=True)
    th.start()
    while len(steps) < 3:
        time.sleep(0.01)
    trainer.pause()
    time.sleep(0.3)
    held = len(steps)
    time.sleep(0.3)
    assert len(steps) == held and trainer.paused  # at most one step finishes after pause()
    trainer.unpause()
    while len(steps) < held + 2:
        time.sleep(0.01)
    trainer.request_stop()
    th.join(timeout=10)
    assert not th.is_alive()
    assert trainer.result is not None and trainer.result.status == "stopped"
    assert trainer.result.step < trainer.total_steps


def test_cli_writes_checkpoint_and_metrics_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 4)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    out = tmp_path / "run"
    common = ["--data", str(root), "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--no-bar"]
    shape = ["--img-size", "8", "--patch-size", "4", "--embed-dim", "16", "--depth", "1", "--num-heads", "2"]
    assert main([*common, *shape, "--epochs", "2", "--batch-size", "8", "--threads", "1"]) == 0
    model = load_checkpoint(out / "model.safetensors")
    assert model.class_names == ["a", "b"] and model.cfg.embed_dim == 16
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["step"] == 8 and doc["status"] == "finished" and len(doc["final"]["confusion"]) == 2
    # resume with a longer schedule continues from step 8
    assert main([*common, "--resume", "--epochs", "3"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["step"] == 12
    # a data error is a clean exit code with a message
    assert main(["--data", str(tmp_path / "missing"), "--out", str(out), "--cache-dir", str(tmp_path)]) == 2


def test_thread_tuner_keeps_the_faster_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    import vit_core.cli as T

    tuner = T.ThreadTuner(period=10, probe=3)
    if len(tuner.options) < 2:
        pytest.skip("one CPU: nothing to choose")
    many = tuner.options[-1]
    clock = [0.0]
    step_s = {1: 0.5, many: 2.0}  # a busy machine: one thread is faster
    monkeypatch.setattr(T.time, "perf_counter", lambda: clock[0])
    switches: list[str] = []
    tuner.log = switches.append
    try:
        for _ in range(30):
            clock[0] += step_s[torch.get_num_threads()]
            tuner.after_step(None)  # type: ignore[arg-type]
        assert tuner.current == 1 and torch.get_num_threads() == 1
        assert switches and switches[0].startswith(f"threads {many} -> 1")
    finally:
        torch.set_num_threads(1)


def test_cli_trains_on_a_tarred_jpeg_image_folder(tmp_path: Path) -> None:
    """`python -m vit_core.train --data <tar of train/ and test/ JPEG folders>`: unpacked, not MD5-checked as CIFAR-10."""
    from tests._tiny_data import make_jpeg_archive

    archive = make_jpeg_archive(tmp_path / "jpeg.tar.gz", classes=2, train_per_class=8, test_per_class=4, size=8)
    out = tmp_path / "run"
    args = ["--data", str(archive), "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--no-bar"]
    shape = ["--img-size", "8", "--patch-size", "4", "--embed-dim", "16", "--depth", "1", "--num-heads", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", "vit_core.train", *args, *shape, "--epochs", "1", "--batch-size", "8", "--threads", "1"],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["status"] == "finished" and doc["step"] == 2 and len(doc["final"]["confusion"]) == 2
    assert load_checkpoint(out / "model.safetensors").class_names == ["class0", "class1"]
    assert len([p for p in (tmp_path / "cache" / "archives").iterdir() if p.is_dir()]) == 1  # unpacked once
    # the same archive for --export-only: the test split comes from it too
    assert main([*args, "--export-only", "--export", str(tmp_path / "x.safetensors")]) == 0
    assert json.loads((tmp_path / "x.metrics.json").read_text())["test_images"] == 8
