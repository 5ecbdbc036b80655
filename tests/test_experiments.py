"""The trainer's variants (ViT ablations, the CNN baseline, data budgets), their checkpoints and
snapshots, the sweep's plan and result files, the computed findings and the page's figures.
Everything on tiny synthetic data: no CIFAR-10 needed."""

from __future__ import annotations

import json
import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from vit_core import experiments as ex
from vit_core.analysis.emergence import model_position_structure_score
from vit_core.analysis.whatif import shuffle_patches
from vit_core.checkpoints import load_checkpoint
from vit_core.cli import _parse_args
from vit_core.cnn import ResNet, is_cnn
from vit_core.config import ViTConfig
from vit_core.data import ImageDataset
from vit_core.export import save_float16
from vit_core.model import VisionTransformer
from vit_core.snapshots import take_snapshot
from vit_core.subsets import balanced_subset
from vit_core.train import TrainConfig, Trainer, training_subset
from vit_plots import experiments as vpe

CLASSES = 4


def synthetic(n_per_class: int = 24, seed: int = 0, size: int = 16) -> ImageDataset:
    """Noisy one-colour images, a different colour per class: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[220, 40, 40], [40, 200, 40], [40, 40, 220], [220, 220, 40]], dtype=torch.float32)
    labels = torch.arange(CLASSES).repeat_interleave(n_per_class)
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    x = colours[labels][:, :, None, None] + 40 * torch.randn(labels.numel(), 3, size, size, generator=g)
    images = x.clamp(0, 255).to(torch.uint8)
    return ImageDataset(images, labels, [f"c{i}" for i in range(CLASSES)], "synthetic")


def tiny(**changes) -> TrainConfig:
    cfg = TrainConfig(
        img_size=16,
        patch_size=4,
        embed_dim=16,
        depth=2,
        num_heads=2,
        epochs=1.0,
        batch_size=16,
        lr=2e-3,
        warmup_epochs=0.2,
        eval_batch_size=64,
        cnn_preset="demo",
        device="cpu",
        name="tiny",
    )
    return cfg.replace(**changes)


VARIANTS = {v.key: v.changes for v in ex.ABLATIONS} | {"resnet": {"arch": "resnet"}, "subset": {"train_size": 48}}


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_every_variant_trains_a_few_steps_and_loads_back_with_equal_logits(key, tmp_path):
    changes = dict(VARIANTS[key])
    if changes.get("embed_dim"):  # the width step, scaled to the tiny model
        changes["embed_dim"] = 24
    cfg = tiny(**changes)
    data = synthetic()
    trainer = Trainer(cfg, data, synthetic(6, seed=1), out_dir=tmp_path)
    w0 = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    res = trainer.run()
    assert res.status == "finished" and res.step == trainer.total_steps > 0
    changed = [k for k, v in trainer.model.state_dict().items() if v.is_floating_point() and not torch.equal(v, w0[k])]
    assert changed, "training changed no weight"
    loaded = load_checkpoint(tmp_path / "model.safetensors")
    assert type(loaded) is type(trainer.model)
    assert loaded.cfg == trainer.model.cfg
    x = torch.randn(5, 3, 16, 16)
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), trainer.model(x))
    if key == "resnet":
        assert is_cnn(loaded) and loaded.cfg.stem_width == 16
    else:
        assert isinstance(loaded, VisionTransformer)
        for field in ("pos_embed_type", "global_pool", "class_token", "reg_tokens", "patch_size", "depth", "embed_dim"):
            assert getattr(loaded.cfg, field) == getattr(cfg, field)


def test_model_config_follows_arch_and_variant_fields():
    vit = tiny(pos_embed_type="sincos", reg_tokens=2).model_config(10)
    assert isinstance(vit, ViTConfig) and vit.no_embed_class and vit.num_prefix_tokens == 3
    cnn = tiny(arch="resnet", cnn_preset="quick").model_config(10, in_chans=1)
    assert cnn.arch == "resnet" and cnn.in_chans == 1 and cnn.img_size == (16, 16) and cnn.widths == (32, 64, 120)
    with pytest.raises(ValueError, match="arch"):
        TrainConfig(arch="mlp")
    with pytest.raises(ValueError, match="cnn_preset"):
        TrainConfig(cnn_preset="huge")
    with pytest.raises(ValueError, match="train_size"):
        TrainConfig(train_size=-1)


def test_no_position_embeddings_are_exact_zeros_and_make_the_model_permutation_invariant():
    cfg = ViTConfig(img_size=16, patch_size=4, num_classes=3, embed_dim=16, depth=2, num_heads=2, pos_embed_type="none")
    torch.manual_seed(0)
    model = VisionTransformer(cfg).eval()
    assert "pos_embed" not in model.state_dict() and not model.pos_embed.any()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        base = model.trace(x)
        _, perm = shuffle_patches(model, x, seed=3, keep_positions=False)
        shuffled, _ = shuffle_patches(model, x, perm=perm, keep_positions=False)
        tokens, patches, _ = model.embed(x)
    # adding the zero positions changes nothing, bit for bit
    assert torch.equal(tokens, torch.cat([model.cls_token.expand(2, -1, -1), patches], dim=1))
    # attention over a bag of patches: the [CLS] read-out does not depend on their order
    torch.testing.assert_close(shuffled, base.logits, atol=1e-5, rtol=1e-5)
    assert model_position_structure_score(model) == 0.0
    assert model.pos_embed_for((2, 2)).shape == (1, 1 + 4, 16) and not model.pos_embed_for((2, 2)).any()


def test_sincos_with_a_class_token_leaves_the_prefix_without_position():
    cfg = tiny(pos_embed_type="sincos").vit_config(3)
    model = VisionTransformer(cfg).eval()
    x = torch.randn(1, 3, 16, 16)
    tokens, patches, _ = model.embed(x)
    torch.testing.assert_close(tokens[:, 0], model.cls_token[:, 0])
    torch.testing.assert_close(tokens[:, 1:], patches + model.pos_embed)
    with pytest.raises(ValueError, match="no_embed_class"):
        ViTConfig(pos_embed_type="sincos", embed_dim=16, num_heads=2)


def test_the_trainers_subset_is_balanced_deterministic_and_seeded():
    data = synthetic(30)
    a = Trainer(tiny(train_size=40, seed=1), data).train_data
    b = Trainer(tiny(train_size=40, seed=1), data).train_data
    c = Trainer(tiny(train_size=40, seed=2), data).train_data
    assert a.class_counts() == [10] * CLASSES
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    idx = balanced_subset(data.labels, 40, 1, CLASSES)
    assert torch.equal(training_subset(data, 40, 1).images, data.images[idx])
    assert "balanced subset of 40" in a.source
    assert len(Trainer(tiny(train_size=0), data).train_data) == len(data)


def test_a_cnn_float16_export_loads_and_keeps_batchnorm_counters(tmp_path):
    trainer = Trainer(tiny(arch="resnet"), synthetic())
    trainer.run()
    save_float16(trainer.model, tmp_path / "cnn.safetensors", {"test_acc": 0.5})
    loaded = load_checkpoint(tmp_path / "cnn.safetensors").float()
    assert isinstance(loaded, ResNet)
    counter = "stem_bn.num_batches_tracked"
    assert loaded.state_dict()[counter] == trainer.model.state_dict()[counter] > 0
    x = torch.randn(3, 3, 16, 16)
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trainer.model(x), atol=2e-2, rtol=2e-2)


def test_snapshots_hold_stem_filters_for_a_cnn_and_emergence_measures_for_a_vit():
    data = synthetic(8)
    x = (data.images[:8].float() / 255 - 0.5) / 0.25
    cnn = Trainer(tiny(arch="resnet"), data).model
    snap = take_snapshot(cnn, x[:1], step=3, epoch=0.1)
    assert snap.stem_filters.shape == (16, 3, 3, 3) and snap.stem_filters.min() >= 0 and snap.stem_filters.max() <= 1
    assert snap.position_similarity.size == 0 and snap.measures is None and snap.probe_probs.shape == (CLASSES,)
    vit = Trainer(tiny(), data).model
    snap = take_snapshot(vit, x[:1], step=3, epoch=0.1, measure_images=x, measure_labels=data.labels[:8])
    assert snap.stem_filters is None
    m = snap.measures
    assert len(m["mean_attention_distance"]) == 2 and len(m["logit_lens_accuracy"]) == 3
    assert all(0 <= v <= 1 for v in m["logit_lens_accuracy"])


def test_cli_flags_follow_the_new_fields():
    args = _parse_args(
        ["--out", "x", "--arch", "resnet", "--cnn-preset", "demo", "--train-size", "1000", "--pos-embed-type", "none"]
        + ["--global-pool", "avg", "--class-token", "false", "--reg-tokens", "4"]
    )
    assert (args.arch, args.cnn_preset, args.train_size, args.pos_embed_type) == ("resnet", "demo", 1000, "none")
    assert (args.global_pool, args.class_token, args.reg_tokens) == ("avg", False, 4)


# ---------------------------------------------------------------- the sweep's plan and files


def test_the_plan_gives_every_run_the_same_steps_and_one_change():
    plan = ex.sweep_plan()
    keys = [r.key for r in plan]
    assert len(keys) == len(set(keys))
    base = ex.sweep_config("vit", ex.ABLATION_SIZE).to_dict()
    for r in plan:
        assert r.config.steps(r.train_size)[1] == ex.SWEEP_STEPS
        assert r.config.train_size == r.train_size and r.config.seed == 0
        if r.group == "ablation":
            diff = {k for k, v in r.config.to_dict().items() if base[k] != v}
            assert diff == set(dict(next(v for v in ex.ABLATIONS if v.key == r.variant).changes))
    assert {r.arch for r in plan if r.group == "data_size"} == {"vit", "resnet"}


def test_uniform_attention_distance_matches_a_loop():
    gh, gw, P = 3, 4, 4
    cells = [(i, j) for i in range(gh) for j in range(gw)]
    want = sum(math.dist(a, b) for a in cells for b in cells) / len(cells) ** 2 * P
    assert ex.uniform_attention_distance((gh, gw), P) == pytest.approx(want)


def fake_doc(key: str, arch: str, variant: str, n: int, acc: float, groups=("data_size",), **measures) -> dict:
    cfg = ex.sweep_config(arch, n, next((v.changes for v in ex.ABLATIONS if v.key == variant), {}))
    if arch == "resnet":
        m = {"receptive_field_distance": [1.2, 2.5, 4.0, 6.5, 8.0], "layer_names": ["stem", "b1", "b2", "b3", "b4"]}
    else:
        m = {
            "mean_attention_distance": [9.0, 11.0, 12.0, 12.5],
            "attention_entropy": [2.0, 2.5, 2.6, 2.4],
            "position_structure_score": 0.2 if variant == "baseline" else 0.0,
            "logit_lens_accuracy": [0.1, 0.2, 0.3, 0.4, acc],
        }
    m.update(measures)
    return {
        "key": key,
        "groups": list(groups),
        "arch": arch,
        "variant": variant,
        "train_size": n,
        "params": 1000,
        "test_acc": acc,
        "train_seconds": 10.0,
        "measures": m,
        "train_config": cfg.to_dict(),
    }


def fake_results(folder) -> dict:
    docs = [
        fake_doc("vit_n1000", "vit", "baseline", 1000, 0.30),
        fake_doc("resnet_n1000", "resnet", "baseline", 1000, 0.40),
        fake_doc("vit_n10000", "vit", "baseline", 10000, 0.45, groups=("data_size", "ablation")),
        fake_doc("resnet_n10000", "resnet", "baseline", 10000, 0.50),
        fake_doc("vit_n10000_pos_none", "vit", "pos_none", 10000, 0.447, groups=("ablation",)),
        fake_doc("vit_n10000_pool_avg", "vit", "pool_avg", 10000, 0.48, groups=("ablation",)),
    ]
    for d in docs:
        ex.write_result(d, folder)
    return ex.load_results(folder)


def test_result_files_round_trip_small_and_rounded(tmp_path):
    res = fake_results(tmp_path)
    assert len(res) == 6 and res["vit_n1000"]["format"] == ex.RESULT_FORMAT
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"key": "x"}))
    assert set(ex.load_results(tmp_path)) == set(res)
    ex.write_result({"key": "r", "v": 1 / 3}, tmp_path)
    assert json.loads((tmp_path / "r.json").read_text())["v"] == 0.33333
    assert ex.load_results(tmp_path / "missing") == {}


def test_tables_and_findings_report_what_the_numbers_say(tmp_path):
    res = fake_results(tmp_path)
    assert ex.data_size_table(res) == {"vit": [(1000, 0.30), (10000, 0.45)], "resnet": [(1000, 0.40), (10000, 0.50)]}
    rows = ex.ablation_rows(res)
    assert [r["key"] for r in rows] == ["baseline", "pos_none", "pool_avg"]
    f = ex.findings(res)
    assert "ResNet 40.0%, ViT 30.0%" in f["data_size"] and "ahead at every size" in f["data_size"]
    assert "narrows from +10.0 to +5.0" in f["data_size"]
    assert "0.3 points lower" in f["pos_none"] and "within the noise" in f["pos_none"]
    assert "barely matter" in f["pos_none"]  # the computed wording disagrees with the tutorials here
    assert "3.0 points higher" in f["pool_avg"] and "not needed" in f["pool_avg"]
    assert "9.0 px" in f["distance"] and "stem reaches 1.2 px" in f["distance"]
    assert "after block 4" in f["logit_lens"]
    # the other way round: the CNN behind, and positions that matter
    res["resnet_n1000"]["test_acc"] = 0.2
    res["resnet_n10000"]["test_acc"] = 0.22
    res["vit_n10000_pos_none"]["test_acc"] = 0.30
    f = ex.findings(res)
    assert "not ahead at any size" in f["data_size"] and "Positions help" in f["pos_none"]
    assert "ResNet's accuracy by less than 5 points" in f["data_size"] and "ViT and" not in f["data_size"]
    assert "barely specialised" not in f["distance"]
    res["vit_n10000"]["measures"]["mean_attention_distance"] = [16.4, 16.6, 16.5, 16.5]  # attention spread evenly
    assert "barely specialised" in ex.findings(res)["distance"]
    assert ex.findings({}) == {}


# ---------------------------------------------------------------- figures


def _valid(fig: go.Figure) -> go.Figure:
    return go.Figure(fig.to_dict())  # plotly's full validation (the builders skip it)


def test_figure_builders(tmp_path):
    res = fake_results(tmp_path)
    fig = _valid(vpe.accuracy_vs_data_figure(ex.data_size_table(res)))
    assert [t.name for t in fig.data] == ["ViT", "ResNet (CNN)"]
    assert list(fig.data[1].y) == pytest.approx([40.0, 50.0]) and fig.layout.xaxis.type == "log"
    series = [
        {"name": "vit", "values": [1.0, 2.0, 3.0]},
        {"name": "cnn", "values": [1.0, 2.0, 4.0, 8.0], "kind": "resnet", "dash": "dot"},
    ]
    fig = _valid(vpe.distance_by_depth_figure(series, reference=12.0))
    assert list(fig.data[1].x) == [1, 2, 3, 4] and fig.layout.shapes[0].y0 == 12.0
    rows = ex.ablation_rows(res)
    fig = _valid(vpe.ablation_accuracy_figure(rows))
    assert list(fig.data[0].x) == pytest.approx([45.0, 44.7, 48.0]) and fig.layout.shapes[0].x0 == pytest.approx(45.0)
    fig = _valid(vpe.ablation_by_depth_figure(rows, "logit_lens_accuracy", "%"))
    assert len(fig.data) == 3 and list(fig.data[0].x) == [0, 1, 2, 3, 4]
    measures = [{**rows[0], "position_structure_score": s} for s in (0.0, 0.1, 0.2)]
    raw = vpe.emergence_figure([0, 10, 20], measures)
    fig = _valid(raw)
    # 4 blocks of distance, 4 of entropy, 1 score line, 5 lens depths
    assert len(fig.data) == 4 + 4 + 1 + 5
    assert list(fig.data[8].y) == pytest.approx([0.0, 0.1, 0.2])
    assert np.asarray(raw.data[0].y, dtype=float) == pytest.approx([9.0] * 3)


# ---------------------------------------------------------------- app runs (vit_core.runs)


@pytest.fixture
def run_env(tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_EXPLORER_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("VIT_EXPLORER_TRAIN_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("VIT_EXPLORER_MAX_RUNS", raising=False)
    from tests._tiny_data import make_image_folder

    return make_image_folder(tmp_path / "tiny")


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_an_app_run_of_either_arch_finishes_with_its_kind_of_snapshot(run_env, arch):
    from tests._tiny_data import tiny_config
    from vit_core.runs import TrainingRun
    from vit_core.sources import DataSource

    cfg = tiny_config(epochs=2, arch=arch, cnn_preset="demo", train_size=36)
    run = TrainingRun(cfg, DataSource("path", str(run_env)), snapshots=3, min_snapshot_interval_s=0.0)
    run.start()
    assert run.join(120)
    v = run.view()
    assert v.status == "finished", v.message
    assert v.train_size == 36 and len(v.snapshots) >= 2
    model = run.export_model()
    if arch == "resnet":
        assert is_cnn(model) and v.tokens == 0
        assert all(s.stem_filters is not None and s.measures is None for s in v.snapshots)
    else:
        assert all(s.measures is not None for s in v.snapshots)
        assert len(v.snapshots[-1].measures["logit_lens_accuracy"]) == cfg.depth + 1
