"""Faults below the UI that the other library tests do not reach.

* Downloads against local servers on 127.0.0.1 that refuse, hang before answering, hang in the
  middle of the body, send a short body or answer 500 (tests/_fault_servers.py): the CIFAR-10
  download (`vit_core.data`) and the pretrained download (`vit_core.pretrained`, through the
  real `huggingface_hub` client). Each ends in the library's error within seconds, leaves no
  file that a later load would use, and a good server afterwards gives the right bytes.
* A full disk while saving a checkpoint: the real safetensors writer under a file-size limit
  (the kernel refuses the write, EFBIG) and a writer that fails with ENOSPC half-way.
* Damaged files of nine image formats and of checkpoints (byte flips, truncation): an image or
  an ImageError, a model or a CheckpointError, nothing else.
* Checkpoint metadata that lies: safetensors headers that look like a pickle, configs that
  are not buildable or claim a far larger model than the weights, class names that disagree.

tests/test_data.py, test_checkpoints.py and test_images.py already cover the plain cases
(nothing listening on port 9, checksum mismatch, unwritable folder, truncated files, pickles
that would run code, every odd image): they are not repeated here.
"""

from __future__ import annotations

import errno
import functools
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save, save_file

from tests._fault_servers import FaultServer, refused_url
from tests._tiny_data import make_cifar_archive
from vit_core import (
    CheckpointError,
    DataError,
    ImageError,
    VisionTransformer,
    load_checkpoint,
    load_image,
    preprocess,
    save_checkpoint,
)
from vit_core import checkpoints as ckpt_mod
from vit_core import fetch as D
from vit_core import pretrained as P
from vit_core.checkpoints import sniff_format
from vit_core.sources import load_split

ROOT = Path(__file__).resolve().parent.parent


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ----------------------------------------------------------------------------------------------
# Damaged images of every format Pillow writes: the loader's only error is ImageError


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "ICO", "PPM", "TGA"])
def test_damaged_files_of_every_format_give_an_image_or_an_image_error(fmt, make_config):
    """Random byte flips (in the header or anywhere) and truncations of a small valid file: each
    load either gives an RGB image the preprocessing takes, or raises ImageError; never another
    exception, which the upload widget would show as a traceback."""
    rng = np.random.default_rng(7)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(buf, format=fmt)
    data = buf.getvalue()
    cfg = make_config(crop_pct=1.0)
    outcomes = {"image": 0, "error": 0}
    for i in range(200):
        d = bytearray(data)
        for _ in range(int(rng.integers(1, 8))):
            d[int(rng.integers(0, min(len(d), 64 if i % 2 else len(d))))] = int(rng.integers(0, 256))
        if i % 4 == 0:
            d = d[: int(rng.integers(1, len(d)))]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = load_image(bytes(d))
        except ImageError as e:
            assert str(e) and "Traceback" not in str(e)
            outcomes["error"] += 1
            continue
        assert img.mode == "RGB" and min(img.size) >= 1
        assert preprocess(img, cfg).shape == (1, 3, 32, 32)
        outcomes["image"] += 1
    assert outcomes["error"] > 0  # the damage was real


# ----------------------------------------------------------------------------------------------
# CIFAR-10 download (vit_core.data)


@pytest.fixture(scope="module")
def cifar_archive(tmp_path_factory) -> bytes:
    return make_cifar_archive(
        tmp_path_factory.mktemp("cifar") / D.CIFAR10_ARCHIVE, per_batch=10, n_test=10
    ).read_bytes()


@pytest.mark.parametrize(
    "mode, message",
    [
        ("refused", "Could not reach"),
        ("hang", "Could not reach .*timed out"),
        ("hang-body", r"broke off after \d+ bytes \(timed out\)"),
        ("short", "stopped at .* of .* bytes|broke off"),
        ("500", "answered 500"),
    ],
)
def test_cifar_download_faults_leave_nothing_behind(tmp_path, cifar_archive, mode, message, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setattr(D, "CIFAR10_MD5", D.hashlib.md5(cifar_archive).hexdigest())
    with FaultServer(cifar_archive, mode) as srv:
        url = (refused_url() if mode == "refused" else srv.url) + "/cifar-10-python.tar.gz"
        # load_split downloads through download_cifar10 -> download_file; point both at the server
        monkeypatch.setattr(D, "download_cifar10", functools.partial(D.download_cifar10, url=url))
        monkeypatch.setattr(D, "download_file", functools.partial(D.download_file, timeout=1.0))
        t0 = time.monotonic()
        with pytest.raises(DataError, match=message):
            load_split(None, "train", download=True, cache_dir=cache)
        assert time.monotonic() - t0 < 15
    assert _leftovers(cache) == []  # no archive, no .tmp, no extracted folder
    with pytest.raises(DataError, match="not in"):  # and nothing a later offline load would pick up
        load_split(None, "train", cache_dir=cache)
    # The same call against a server that behaves: proves the server speaks HTTP well enough.
    with FaultServer(cifar_archive, "ok") as srv:
        monkeypatch.setattr(D, "download_cifar10", functools.partial(D.download_cifar10.func, url=srv.url + "/c.tgz"))
        train = load_split(None, "train", download=True, cache_dir=cache)
    assert len(train) == 50 and (cache / D.CIFAR10_ARCHIVE).read_bytes() == cifar_archive


def test_cifar_download_without_content_length_is_checked_by_md5(tmp_path, cifar_archive):
    with FaultServer(cifar_archive[: len(cifar_archive) // 2], "no-length") as srv:  # short, and no way to tell
        with pytest.raises(DataError, match="MD5"):
            D.download_file(srv.url + "/a.tgz", tmp_path / "a.tgz", md5=D.hashlib.md5(cifar_archive).hexdigest())
    assert _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# Pretrained download (vit_core.pretrained through huggingface_hub)


@pytest.fixture
def hub_env(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(P.MODELS_DIR_ENV, str(tmp_path / "by_hand"))
    return tmp_path / "hf_cache"


@pytest.mark.parametrize("mode", ["refused", "hang", "hang-body", "short"])
def test_pretrained_download_faults(hub_env, mode):
    """Refused, no answer, a stalled body, a short body: a clear error within seconds, nothing usable left."""
    payload = os.urandom(300_000)
    calls: list[tuple[int, int | None, int]] = []
    with FaultServer(payload, mode) as srv:
        url = refused_url() if mode == "refused" else srv.url
        t0 = time.monotonic()
        with pytest.raises(P.PretrainedNotAvailableError) as err:
            P.download_pretrained(
                "deit-tiny",
                hub_env,
                progress=lambda done, total: calls.append((done, total, threading.get_ident())),
                endpoint=url,
                stall_timeout=8.0 if mode == "short" else 2.0,  # short: let the client's own retries end it
            )
        elapsed = time.monotonic() - t0
    msg = str(err.value)
    assert elapsed < 20, elapsed
    assert "DeiT-tiny/16" in msg and str(P.manual_path("deit-tiny")) in msg  # what to do without a network
    if mode == "refused":  # the connectivity probe answers at once, before the client's retries
        assert "no network: 127.0.0.1 could not be reached" in msg and elapsed < 5, (msg, elapsed)
    elif mode in ("hang", "hang-body"):
        assert "no data from 127.0.0.1" in msg
    else:
        assert "the connection broke off during the transfer" in msg
    assert all(ident == threading.get_ident() for *_, ident in calls)  # progress on the caller's thread
    assert not P.is_downloaded("deit-tiny", hub_env)
    snapshots = [p for p in hub_env.rglob("snapshots/*/*") if p.is_file()]
    assert snapshots == []
    with pytest.raises(P.PretrainedNotAvailableError, match="not been downloaded"):
        P.load_pretrained("deit-tiny", hub_env)


def test_pretrained_download_from_a_good_server_then_loads(hub_env, deit_tiny_state_dict):
    """The control for the faults above: the same client and server in "ok" mode give a working model."""
    sd = deit_tiny_state_dict
    payload = save(sd)
    calls: list[tuple[int, int | None]] = []
    with FaultServer(payload, "ok", files={"config.json": None}) as srv:  # a Hub repo without timm's config
        path = P.download_pretrained("deit-tiny", hub_env, progress=lambda d, t: calls.append((d, t)), endpoint=srv.url)
        assert [m for m, _ in srv.requests].count("GET") >= 1
    assert path.read_bytes() == payload and P.is_downloaded("deit-tiny", hub_env)
    assert calls[-1] == (len(payload), len(payload)) and all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))
    model = P.load_pretrained("deit-tiny", hub_env)
    assert (model.cfg.embed_dim, model.cfg.depth, model.cfg.num_heads) == (192, 12, 3)
    torch.testing.assert_close(model.state_dict()["head.weight"], sd["head.weight"], atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------
# A full disk on checkpoint save


SMALL = dict(embed_dim=32, depth=2, num_classes=3)  # the tiny ViT (tests/conftest.py), two blocks, 3 classes
NAMES = ["c0", "c1", "c2"]


@pytest.fixture
def tiny(make_vit) -> VisionTransformer:
    return make_vit(0, NAMES, **SMALL)


def test_full_disk_from_the_kernel_keeps_the_old_checkpoint(tmp_path, tiny):
    """The real writer, in a child process whose files may not grow past 64 KiB (RLIMIT_FSIZE):
    the kernel refuses the write half-way (EFBIG), as a full disk refuses it with ENOSPC."""
    old = save_checkpoint(tiny, tmp_path / "m.safetensors")
    before = old.read_bytes()
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        import torch
        from vit_core import CheckpointError, VisionTransformer, ViTConfig, save_checkpoint
        cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=2, num_classes=3)
        model = VisionTransformer(cfg)  # about 800 KB of weights
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        try:
            save_checkpoint(model, {str(old)!r})
        except CheckpointError as e:
            print("CheckpointError:", e)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("CheckpointError: Could not write") and "File too large" in out.stdout, out.stdout
    assert "Free some disk space" in out.stdout
    assert old.read_bytes() == before  # the old file is untouched ...
    assert _leftovers(tmp_path) == ["m.safetensors"]  # ... and no half-written temporary is left
    assert load_checkpoint(old).cfg.embed_dim == 32


def test_no_space_left_mid_write_keeps_the_old_checkpoint(tmp_path, monkeypatch, tiny, make_vit):
    old = save_checkpoint(tiny, tmp_path / "m.safetensors")
    before = old.read_bytes()

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 4096)  # some bytes made it to the disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(ckpt_mod, "save_file", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device. Free some disk space"):
        save_checkpoint(make_vit(1, NAMES, **SMALL), old)
    assert old.read_bytes() == before and _leftovers(tmp_path) == ["m.safetensors"]


# ----------------------------------------------------------------------------------------------
# Checkpoint metadata that lies


def _header_len(path: Path) -> int:
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


@pytest.mark.parametrize("kind", ["own.safetensors", "state_dict.pth"])
def test_damaged_checkpoints_give_a_model_or_a_checkpoint_error(tmp_path, kind, tiny):
    """Byte flips in the header / zip directory or anywhere, and truncations: load_checkpoint gives
    a working model or a CheckpointError, never another exception (the sidebar shows only those)."""
    rng = np.random.default_rng(3)
    model = tiny
    if kind.endswith(".pth"):
        torch.save(model.state_dict(), tmp_path / "src")
    else:
        save_checkpoint(model, tmp_path / "src")
    data = (tmp_path / "src").read_bytes()
    loaded = 0
    for i in range(300):
        d = bytearray(data)
        # torch zips keep their directory at the end; safetensors their JSON header at the start
        region = range(len(d) - 600, len(d)) if kind.endswith(".pth") and i % 2 else range(0, min(len(d), 1200))
        for _ in range(int(rng.integers(1, 6))):
            d[int(rng.choice(region))] = int(rng.integers(0, 256))
        if i % 7 == 0:
            d = d[: int(rng.integers(1, len(d)))]
        (tmp_path / kind).write_bytes(bytes(d))
        try:
            m = load_checkpoint(tmp_path / kind)
        except CheckpointError:
            continue
        assert m(torch.zeros(1, 3, *m.cfg.img_size)).shape[0] == 1
        loaded += 1
    assert loaded < 300  # the damage was real


def test_own_checkpoint_whose_header_length_starts_like_a_pickle(tmp_path, tiny):
    """A safetensors header of 128 + 256k bytes begins with 0x80, a pickle's first byte: the file
    must still be read as safetensors with its metadata (config, class names), not through
    torch.load, which reads the tensors and silently drops the metadata."""
    model = tiny
    path = tmp_path / "m.safetensors"
    for pad in range(300):
        save_checkpoint(model, path, extra={"note": "x" * pad})
        if _header_len(path) % 256 == 0x80:
            break
    assert path.read_bytes()[:1] == b"\x80"
    assert sniff_format(path) == "safetensors"
    loaded = load_checkpoint(path)
    assert loaded.cfg == model.cfg and loaded.class_names == model.class_names
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def _with_meta(tmp_path: Path, name: str, model: VisionTransformer, config: object, class_names: object = None) -> Path:
    """`model`'s weights with metadata that says `config` and `class_names`."""
    meta = {"format": ckpt_mod.FORMAT_TAG, "config": config if isinstance(config, str) else json.dumps(config)}
    if class_names is not None:
        meta["class_names"] = json.dumps(class_names)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, tmp_path / name, metadata=meta)
    return tmp_path / name


@pytest.mark.parametrize(
    "change, message",
    [
        ({"patch_size": 0}, "patch_size must be a positive integer"),
        ({"depth": "2"}, "depth must be a positive integer"),
        ({"embed_dim": -32, "num_heads": -2}, "embed_dim must be a positive integer"),
        ({"num_classes": 2.5}, "num_classes must be a non-negative integer"),
        ({"std": [0, 0, 0]}, "std"),
        ({"mlp_ratio": "wide"}, "config"),
        ({"img_size": [32]}, "config"),
        ({"depth": 3}, r"missing keys blocks\.2"),
        ({"num_classes": 5}, r"shape mismatch.*head\.weight \(3, 32\) vs \(5, 32\)"),
        ({"img_size": [64, 64]}, "64x64 needs 65 position embeddings but the weights have 17"),
    ],
)
def test_own_config_that_disagrees_with_its_weights(tmp_path, change, message, tiny):
    cfg = {**tiny.cfg.to_dict(), **change}
    path = _with_meta(
        tmp_path, "m.safetensors", tiny, cfg, [f"c{i}" for i in range(3)] if "num_classes" not in change else None
    )
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_class_names_that_disagree_with_the_head(tmp_path, tiny):
    cfg = tiny.cfg.to_dict()
    with pytest.raises(CheckpointError, match="2 class names but the config has 3 classes"):
        load_checkpoint(_with_meta(tmp_path, "a.safetensors", tiny, cfg, ["cat", "dog"]))
    with pytest.raises(CheckpointError, match="class names are not a list"):
        load_checkpoint(_with_meta(tmp_path, "b.safetensors", tiny, cfg, {"0": "cat"}))
    m = load_checkpoint(_with_meta(tmp_path, "c.safetensors", tiny, cfg, [7, 8, 9]))  # numbers become names
    assert m.class_names == ["7", "8", "9"]


def test_a_config_claiming_a_huge_model_is_refused_before_allocating_it(tmp_path, monkeypatch, tiny):
    """A 17-token, 2-block file whose config says 64 blocks of width 16384 (about 800 GB of
    weights): refused by comparing shapes on the meta device, never allocated."""
    cfg = {**tiny.cfg.to_dict(), "embed_dim": 16384, "num_heads": 128, "depth": 64}
    path = _with_meta(tmp_path, "huge.safetensors", tiny, cfg, ["a", "b", "c"])
    allocated: list[str] = []
    to_empty = torch.nn.Module.to_empty
    monkeypatch.setattr(torch.nn.Module, "to_empty", lambda self, **kw: allocated.append("!") or to_empty(self, **kw))
    t0 = time.monotonic()
    with pytest.raises(CheckpointError, match="does not fit this ViT: missing keys"):
        load_checkpoint(path)
    assert allocated == [] and time.monotonic() - t0 < 30


def test_upload_limits_are_set_and_within_what_the_image_loader_takes():
    """A server-wide cap in .streamlit/config.toml, and a tighter one on the image uploader (the
    browser test sends a file over it); both within what load_image accepts or refuses cleanly."""
    tomllib = pytest.importorskip("tomllib")
    from ui import images as ui_images
    from vit_core import images

    server_mb = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]["maxUploadSize"]
    assert 1 <= ui_images.MAX_IMAGE_MB <= images.MAX_BYTES / 2**20
    assert ui_images.MAX_IMAGE_MB <= server_mb <= 1024
