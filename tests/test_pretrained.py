"""The pretrained catalogue and its files: entries, where files are looked for, offline refusal,
and preprocessing applied by the loader with its checks. Nothing here touches the network."""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vit_core import (
    CheckpointError,
    ViTConfig,
    catalogue,
    get_pretrained,
    infer_num_heads,
    is_downloaded,
    list_pretrained,
    load_checkpoint,
    load_pretrained,
)
from vit_core import pretrained as pretrained_mod
from vit_core.catalogue import PretrainedModel, entry_for_path
from vit_core.config import IMAGENET_MEAN
from vit_core.pretrained import PretrainedNotAvailableError, download_pretrained

REV = "0123456789abcdef0123456789abcdef01234567"  # a Hub commit, for the cache layout

# A catalogue entry for the tiny timm state dict of tests/conftest.py (width 64, 2 blocks of
# 1 head, 4x4 grid of 8-pixel patches, 5 classes), with preprocessing unlike any default.
TINY_ENTRY = PretrainedModel(
    key="tiny-test",
    title="Tiny test ViT",
    timm_name="vit_tiny_test_patch8_32.unit_test",
    embed_dim=64,
    depth=2,
    num_heads=1,
    num_classes=5,
    mean=(0.1, 0.2, 0.3),
    std=(0.4, 0.5, 0.6),
    download_mb=0.1,
    about="Made by the tests.",
    interpolation="bilinear",
    crop_pct=0.8,
    crop_mode="squash",
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a test of vit_core.pretrained tried to use the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(pretrained_mod.MODELS_DIR_ENV, str(tmp_path / "models"))
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    return cache


@pytest.fixture
def tiny_entry(monkeypatch: pytest.MonkeyPatch) -> PretrainedModel:
    """TINY_ENTRY in the catalogue for the length of a test."""
    monkeypatch.setitem(catalogue.CATALOGUE, TINY_ENTRY.key, TINY_ENTRY)
    return TINY_ENTRY


def _in_hub_cache(cache: Path, m: PretrainedModel, tensors: dict[str, torch.Tensor]) -> Path:
    """Put `tensors` where huggingface_hub would have downloaded `m`'s weights."""
    repo = cache / f"models--{m.repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REV)
    snap = repo / "snapshots" / REV
    snap.mkdir(parents=True)
    save_file(tensors, snap / m.filename)
    return snap / m.filename


# ----------------------------------------------------------------------------------------------
# The catalogue


def test_catalogue_entries() -> None:
    keys = [m.key for m in list_pretrained()]
    assert keys == ["vit-b16", "vit-s16", "deit-tiny", "deit-small", "deit-small-distilled", "dino-vits16"]
    assert get_pretrained("timm/deit_tiny_patch16_224.fb_in1k").key == "deit-tiny"
    assert get_pretrained("VIT-B16").repo_id == "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert get_pretrained("vit-b16").mean == (0.5, 0.5, 0.5)  # AugReg ViTs: inception normalisation
    assert get_pretrained("dino-vits16").num_classes == 0
    with pytest.raises(CheckpointError, match="Known: vit-b16"):
        get_pretrained("resnet50")


@pytest.mark.parametrize("m", list_pretrained(), ids=lambda m: m.key)
def test_every_entry_is_well_formed(m: PretrainedModel) -> None:
    assert catalogue.CATALOGUE[m.key] is m
    for name in (m.key, m.timm_name, m.repo_id, m.title, m.title.upper()):
        assert get_pretrained(name) is m
    assert m.repo_id == f"timm/{m.timm_name}" and "." in m.timm_name  # timm's architecture.tag
    assert m.url == f"https://huggingface.co/{m.repo_id}/resolve/main/{m.filename}"
    assert m.embed_dim % m.num_heads == 0 and infer_num_heads(m.embed_dim, m.timm_name) == m.num_heads
    assert m.depth > 0 and m.num_classes in (0, 1000) and m.download_mb > 0 and m.about.strip()
    # Its preprocessing is a valid ViTConfig's: the loader builds the config from it.
    cfg = ViTConfig(**m.preprocessing())
    assert (cfg.mean, cfg.std, cfg.interpolation, cfg.crop_pct, cfg.crop_mode) == (
        m.mean,
        m.std,
        m.interpolation,
        m.crop_pct,
        m.crop_mode,
    )
    assert entry_for_path(Path("/somewhere") / m.timm_name / m.filename) is m


def test_keys_titles_and_timm_names_are_unique() -> None:
    entries = list_pretrained()
    for field in ("key", "title", "timm_name"):
        values = [getattr(m, field).lower() for m in entries]
        assert len(set(values)) == len(values), field


def test_entry_for_path_reads_the_timm_name_out_of_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s16 = get_pretrained("vit-s16")
    by_hand = tmp_path / s16.timm_name / "model.safetensors"
    hub = tmp_path / f"models--timm--{s16.timm_name}" / "snapshots" / REV / "model.safetensors"
    named_file = tmp_path / f"{s16.timm_name}.safetensors"
    assert entry_for_path(by_hand) is entry_for_path(hub) is entry_for_path(str(named_file)) is s16
    assert entry_for_path(tmp_path / "vit_small_patch16_224.safetensors") is None  # no pretrained tag
    assert entry_for_path(tmp_path / "model.safetensors") is None
    # When two names are in the path, the longer (more specific) one wins.
    longer = dataclasses.replace(s16, key="vit-s16-longer", timm_name=s16.timm_name + "_longer")
    monkeypatch.setitem(catalogue.CATALOGUE, longer.key, longer)
    assert entry_for_path(tmp_path / longer.timm_name / "model.safetensors") is longer
    assert entry_for_path(by_hand) is s16


def test_catalogue_imports_no_loading_code() -> None:
    """The catalogue is data: checkpoints and pretrained import it, it imports neither."""
    import ast

    tree = ast.parse(Path(catalogue.__file__).read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "dataclasses", "typing", "config", "errors"}, imported


# ----------------------------------------------------------------------------------------------
# Where files are looked for


def test_models_dir_and_manual_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pretrained_mod.MODELS_DIR_ENV, str(tmp_path / "mine"))
    assert pretrained_mod.models_dir() == tmp_path / "mine"
    m = get_pretrained("deit-tiny")
    assert pretrained_mod.manual_path("DeiT-tiny/16 (ImageNet-1k)") == tmp_path / "mine" / m.timm_name / m.filename
    monkeypatch.delenv(pretrained_mod.MODELS_DIR_ENV)
    monkeypatch.setenv("VIT_EXPLORER_DATA", str(tmp_path / "cache"))  # one cache root for data and models
    assert pretrained_mod.models_dir() == tmp_path / "cache" / "models"


def test_local_path_finds_the_file_by_hand_first_then_the_hub_cache(
    offline_cache: Path, tiny_entry: PretrainedModel, make_timm_sd
) -> None:
    assert pretrained_mod.local_path(tiny_entry.key, offline_cache) is None
    assert not is_downloaded(tiny_entry.key, offline_cache)
    manual = pretrained_mod.manual_path(tiny_entry.key)
    manual.mkdir(parents=True)  # a folder where the file belongs is not the file
    assert pretrained_mod.local_path(tiny_entry.key, offline_cache) is None
    manual.rmdir()
    cached = _in_hub_cache(offline_cache, tiny_entry, make_timm_sd())
    assert pretrained_mod.local_path(tiny_entry.key, offline_cache) == cached
    assert is_downloaded(tiny_entry.key, offline_cache)
    save_file(make_timm_sd(seed=1), manual)
    assert pretrained_mod.local_path(tiny_entry.key, offline_cache) == manual  # by hand wins
    # Another cache folder does not have it; the folder by hand is still looked at.
    other = offline_cache.parent / "other_cache"
    other.mkdir()
    assert pretrained_mod.local_path(tiny_entry.key, other) == manual
    manual.unlink()
    assert not is_downloaded(tiny_entry.key, other)


# ----------------------------------------------------------------------------------------------
# Offline


def test_offline_with_empty_cache_names_the_file_and_where_to_put_it(offline_cache: Path, tmp_path: Path) -> None:
    assert not is_downloaded("deit-tiny", offline_cache)
    for call in (
        lambda: load_pretrained("deit-tiny", cache_dir=offline_cache),
        lambda: load_pretrained("deit-tiny", cache_dir=offline_cache, download=True),
        lambda: download_pretrained("deit-tiny", cache_dir=offline_cache, progress=lambda done, total: None),
    ):
        with pytest.raises(PretrainedNotAvailableError) as err:
            call()
        msg = str(err.value)
        assert "https://huggingface.co/timm/deit_tiny_patch16_224.fb_in1k/resolve/main/model.safetensors" in msg
        assert str(tmp_path / "models" / "deit_tiny_patch16_224.fb_in1k" / "model.safetensors") in msg
    assert not any((offline_cache).iterdir())


def test_offline_refusal_says_why(offline_cache: Path) -> None:
    with pytest.raises(PretrainedNotAvailableError, match="HF_HUB_OFFLINE is set") as err:
        download_pretrained("vit-s16", cache_dir=offline_cache)
    assert isinstance(err.value, CheckpointError)  # what the app's model menu catches
    assert "ViT-S/16" in str(err.value) and "88 MB" in str(err.value)
    with pytest.raises(PretrainedNotAvailableError, match="has not been downloaded yet"):
        load_pretrained("vit-s16", cache_dir=offline_cache)


# ----------------------------------------------------------------------------------------------
# Loading: the loader sets the catalogue's preprocessing, with its checks


def test_load_pretrained_from_a_file_put_by_hand(
    offline_cache: Path, tmp_path: Path, deit_tiny_state_dict, make_timm_sd
) -> None:
    dest = pretrained_mod.manual_path("deit-tiny")
    dest.parent.mkdir(parents=True)
    save_file(deit_tiny_state_dict, dest)
    assert is_downloaded("deit-tiny", offline_cache)
    model = load_pretrained("deit-tiny", cache_dir=offline_cache)
    assert model.cfg.num_heads == 3 and model.cfg.name.startswith("DeiT-tiny")
    assert model.cfg.mean == (0.485, 0.456, 0.406) and model.class_names[1] == "goldfish"
    assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)
    # The wrong model under the right name is caught.
    save_file(make_timm_sd(embed_dim=192), dest)
    with pytest.raises(CheckpointError, match="is not DeiT-tiny"):
        load_pretrained("deit-tiny", cache_dir=offline_cache)
    save_file(make_timm_sd(), dest)
    with pytest.raises(CheckpointError, match="could not be loaded as DeiT-tiny.*Delete it"):
        load_pretrained("deit-tiny", cache_dir=offline_cache)


def test_load_pretrained_from_the_hub_cache_layout(offline_cache: Path, deit_tiny_state_dict) -> None:
    """A file huggingface_hub downloaded earlier: models--timm--<name>/snapshots/<rev>/."""
    _in_hub_cache(offline_cache, get_pretrained("deit-tiny"), deit_tiny_state_dict)
    model = load_pretrained("deit-tiny", cache_dir=offline_cache)
    assert model.cfg.num_heads == 3 and model.cfg.extra["repo_id"] == "timm/deit_tiny_patch16_224.fb_in1k"
    # Without timm's config.json, the catalogue's preprocessing is used (AugReg ViTs: 0.5).
    found = entry_for_path(
        offline_cache
        / "models--timm--vit_small_patch16_224.augreg_in21k_ft_in1k"
        / "snapshots"
        / REV
        / "model.safetensors"
    )
    assert found is not None and found.timm_name == "vit_small_patch16_224.augreg_in21k_ft_in1k"
    assert found.mean == (0.5, 0.5, 0.5) and found.crop_pct == 0.9


def test_the_loader_applies_the_catalogue_preprocessing(tmp_path: Path, make_timm_sd) -> None:
    """load_checkpoint itself: a timm file in a folder named after a catalogue model gets that
    model's preprocessing; the same file elsewhere gets timm's defaults."""
    sd = make_timm_sd()
    s16 = get_pretrained("vit-s16")
    save_file(sd, tmp_path / "plain.safetensors")
    (tmp_path / s16.timm_name).mkdir()
    save_file(sd, tmp_path / s16.timm_name / "model.safetensors")
    plain = load_checkpoint(tmp_path / "plain.safetensors")
    named = load_checkpoint(tmp_path / s16.timm_name / "model.safetensors")
    assert plain.cfg.mean == IMAGENET_MEAN and named.cfg.mean == s16.mean == (0.5, 0.5, 0.5)
    assert {k: getattr(named.cfg, k) for k in s16.preprocessing()} == s16.preprocessing()
    assert named.cfg.name == s16.timm_name
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(named(x), plain(x), atol=0, rtol=0)  # same weights, same function


@pytest.mark.parametrize("where", ["by_hand", "hub_cache"])
def test_load_pretrained_gives_the_catalogue_preprocessing(
    offline_cache: Path, tiny_entry: PretrainedModel, make_timm_sd, where: str
) -> None:
    sd = make_timm_sd()
    if where == "by_hand":
        dest = pretrained_mod.manual_path(tiny_entry.key)
        dest.parent.mkdir(parents=True)
        save_file(sd, dest)
    else:
        _in_hub_cache(offline_cache, tiny_entry, sd)
    model = load_pretrained(tiny_entry.key, cache_dir=offline_cache)
    cfg = model.cfg
    assert (cfg.mean, cfg.std, cfg.interpolation, cfg.crop_pct, cfg.crop_mode) == (
        (0.1, 0.2, 0.3),
        (0.4, 0.5, 0.6),
        "bilinear",
        0.8,
        "squash",
    )
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.num_classes) == (64, 2, 1, 5)
    assert cfg.name == "Tiny test ViT" and cfg.extra["pretrained"] == "tiny-test"
    assert cfg.extra["repo_id"] == "timm/vit_tiny_test_patch8_32.unit_test" and not model.training
    torch.testing.assert_close(model.state_dict()["head.weight"], sd["head.weight"], atol=0, rtol=0)


def test_timm_config_json_beside_the_file_wins_over_the_catalogue(
    offline_cache: Path, tiny_entry: PretrainedModel, make_timm_sd
) -> None:
    dest = pretrained_mod.manual_path(tiny_entry.key)
    dest.parent.mkdir(parents=True)
    save_file(make_timm_sd(), dest)
    pretrained_cfg = {"mean": [0.7, 0.7, 0.7], "std": [0.2, 0.2, 0.2], "interpolation": "bicubic", "crop_pct": 1.0}
    (dest.parent / "config.json").write_text(json.dumps({"architecture": "vit_tiny", "pretrained_cfg": pretrained_cfg}))
    cfg = load_pretrained(tiny_entry.key, cache_dir=offline_cache).cfg
    assert (cfg.mean, cfg.std, cfg.interpolation, cfg.crop_pct) == ((0.7,) * 3, (0.2,) * 3, "bicubic", 1.0)
    assert cfg.crop_mode == "squash"  # not in config.json: the catalogue's


@pytest.mark.parametrize(
    "change, message",
    [({"crop_pct": 1.5}, "crop_pct must be in"), ({"mean": (0.5, 0.5)}, "one value per channel")],
)
def test_catalogue_preprocessing_goes_through_the_loaders_checks(
    offline_cache: Path, monkeypatch: pytest.MonkeyPatch, make_timm_sd, change: dict, message: str
) -> None:
    """A bad catalogue entry is refused with a CheckpointError, never set on a config unchecked."""
    bad = dataclasses.replace(TINY_ENTRY, **change)
    monkeypatch.setitem(catalogue.CATALOGUE, bad.key, bad)
    dest = pretrained_mod.manual_path(bad.key)
    dest.parent.mkdir(parents=True)
    save_file(make_timm_sd(), dest)
    with pytest.raises(CheckpointError, match=f"could not be loaded as Tiny test ViT.*{message}"):
        load_pretrained(bad.key, cache_dir=offline_cache)


# ----------------------------------------------------------------------------------------------
# Download progress


def test_download_progress_reports_bytes() -> None:
    seen: list[tuple[int, int | None]] = []
    cls = pretrained_mod._progress_class(lambda done, total: seen.append((done, total)))
    bar = cls(total=100, disable=True)
    bar.update(30)
    bar.update(70)
    bar.close()
    assert seen == [(0, 100), (30, 100), (100, 100)]
    assert pretrained_mod._progress_class(None) is None

    def broken(done: int, total: int | None) -> None:
        raise TypeError("a display bug")

    bar = pretrained_mod._progress_class(broken)(total=None, disable=True)
    bar.update(10)  # the error stays in the callback
    bar.close()
