"""Serving a class (issue 16, the app side): what an anonymous user of a shared server can try.

One test per row of the issue's table that concerns the model picker and the image uploader,
each through the library and through AppTest: the refusal message, that disk and memory stay
under the cap, and that another session keeps working. Then the public switch.

Memory is the process's peak resident size (`ru_maxrss`): torch allocates outside Python's
allocator, so tracemalloc would not see a model or an attention map. Each test's bound is far
below what the attack cost before (hundreds of MiB) and far above AppTest's own noise.
"""

from __future__ import annotations

import io
import os
import resource
import threading
import time
from pathlib import Path

import pytest
import streamlit as st
import torch
from PIL import Image
from streamlit.runtime.caching import clear_session_resource_cache
from streamlit.testing.v1 import AppTest

from tests.test_app import APP, MODEL_KEY, ok, png, prediction_text
from vit_core import CheckpointError, VisionTransformer, ViTConfig, load_checkpoint, save_checkpoint
from vit_core.limits import ModelTooLargeError
from vit_core.uploads import folder_bytes

TIMEOUT = 120
APPTEST_SESSION = "test session id"  # the session id AppTest gives every script run
MiB = 2**20
# ui.models.NO_CHECKPOINT: one message for a missing file, a folder, a pipe and a forbidden path
REFUSED = (
    "No checkpoint this app can load at that path (it may not exist, not be a regular file, be too large, "
    "or be outside the folders this server allows). Check the path, or pick another model. "
    "The previous model is still in use."
)


def peak_rss() -> int:
    """The process's peak resident size so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def patch1_model(depth: int = 8, heads: int = 4) -> VisionTransformer:
    """The issue's tiny file with a huge forward pass: 64x64 patches of 1 px (4,097 tokens), 16 wide.
    Its weights are 0.3 MiB; one traced image needs depth * heads * 4097^2 * 4 bytes (2 GiB here)."""
    cfg = ViTConfig(img_size=64, patch_size=1, embed_dim=16, depth=depth, num_heads=heads, num_classes=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return VisionTransformer(cfg, ["a", "b"]).eval()


def good_checkpoint(folder: Path, name: str = "mine.safetensors", seed: int = 5) -> Path:
    from tests.conftest import tiny_vit

    return save_checkpoint(tiny_vit(seed, ["left", "right"], depth=2, crop_pct=1.0), folder / name)


@pytest.fixture
def uploads(tmp_path, monkeypatch):
    """The upload store in tmp_path; each AppTest names its own session (AppTest gives all one id)."""
    import ui.models as models

    root = tmp_path / "uploads"
    monkeypatch.setattr(models, "UPLOAD_DIR", root)
    monkeypatch.setattr(models, "_session_id", lambda: st.session_state.get("_test_session", "alice"), raising=False)
    for var in ("VIT_EXPLORER_PUBLIC", "VIT_EXPLORER_MODELS"):
        monkeypatch.delenv(var, raising=False)
    yield root
    clear_session_resource_cache(APPTEST_SESSION)


def session(name: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["model_choice"] = MODEL_KEY
    at.session_state["_test_session"] = name
    at.run()
    ok(at)
    return at.run()


def sidebar_errors(at: AppTest) -> list[str]:
    return [e.value for e in at.sidebar.error]


def all_text(at: AppTest) -> str:
    kinds = ("error", "warning", "info", "caption", "markdown", "success")
    return " ".join(str(e.value) for k in kinds for e in getattr(at, k)) + " ".join(
        str(e.value) for k in kinds for e in getattr(at.sidebar, k)
    )


def still_works(at: AppTest) -> None:
    """A session that keeps working: a page run without an exception, a prediction of the default model."""
    at.run()
    ok(at)
    assert at.selectbox(key="model_key").value == MODEL_KEY
    assert "Prediction:" in prediction_text(at)


# ---- row: "upload a 0.3 MiB checkpoint with patch size 1 -> loads; one trace costs +653 MiB" ----


def test_a_tiny_checkpoint_with_patch_size_1_is_refused_from_its_config(tmp_path):
    path = save_checkpoint(patch1_model(), tmp_path / "patch1.safetensors")
    assert path.stat().st_size < 0.4 * MiB
    before = peak_rss()
    with pytest.raises(ModelTooLargeError, match=r"4,097 tokens|attention maps of one image"):
        load_checkpoint(path)
    # A timm state dict of the same model: its config comes from the weights, checked before building.
    sd = patch1_model().state_dict()
    torch.save(sd, tmp_path / "patch1.pth")
    with pytest.raises(ModelTooLargeError, match="patch1.pth"):
        load_checkpoint(tmp_path / "patch1.pth", num_heads=4)
    assert peak_rss() - before < 64 * MiB


def test_the_patch_size_1_upload_is_refused_in_memory_and_other_sessions_keep_working(uploads, tmp_path):
    data = save_checkpoint(patch1_model(), tmp_path / "patch1.safetensors").read_bytes()
    torch.save(patch1_model().state_dict(), tmp_path / "patch1.pth")
    alice, bob = session("alice"), session("bob")
    before = peak_rss()
    alice.file_uploader(key="model_upload").upload("patch1.safetensors", data, "application/octet-stream").run()
    ok(alice)
    errors = sidebar_errors(alice)
    assert errors and "needs 2.0 GB for the attention maps of one image" in errors[0], errors
    assert "this server allows 1.0 GB" in errors[0] and "previous model is still in use" in errors[0], errors
    # the same model as a timm file: written, refused when its weights tell the config, removed again
    alice.file_uploader(key="model_upload").upload(
        "patch1.pth", (tmp_path / "patch1.pth").read_bytes(), "application/octet-stream"
    ).run()
    ok(alice)
    assert any("tokens per image" in e or "attention maps" in e or "heads" in e for e in sidebar_errors(alice))
    assert alice.selectbox(key="model_key").value == MODEL_KEY
    assert "Prediction:" in prediction_text(alice)
    assert peak_rss() - before < 128 * MiB  # was +653 MiB for one trace
    assert folder_bytes(uploads) == 0, list(uploads.rglob("*"))  # nothing left behind
    still_works(bob)


# ---- row: "type the upload folder as a checkpoint path -> lists another student's files, which load" ----


def test_the_upload_folder_typed_as_a_path_lists_nothing_and_loads_nothing(uploads, tmp_path):
    alice, bob = session("alice"), session("bob")
    alice.file_uploader(key="model_upload").upload(
        "secret-homework.safetensors", good_checkpoint(tmp_path).read_bytes(), "application/octet-stream"
    ).run()
    ok(alice)
    assert alice.selectbox(key="model_key").value.startswith("file:")
    stored = [p for p in uploads.rglob("secret-homework*")]
    assert len(stored) == 1
    tries = [uploads, uploads / "sessions", stored[0].parent, stored[0], tmp_path / "missing.safetensors"]
    for typed in tries:
        bob.text_input(key="model_path").set_value(str(typed)).run()
        ok(bob)
        assert sidebar_errors(bob) == [REFUSED], (
            typed,
            sidebar_errors(bob),
        )
        assert "secret-homework" not in all_text(bob) and "secret-homework" not in str(
            bob.selectbox(key="model_key").options
        )
        assert bob.selectbox(key="model_key").value == MODEL_KEY
    still_works(bob)
    alice.run()
    ok(alice)
    assert "Uploaded: secret-homework.safetensors" in alice.selectbox(key="model_key").options
    assert any(n in prediction_text(alice) for n in ("left", "right"))


# ---- row: "upload many files -> every upload is written before it is checked and never deleted" ----


def test_many_uploads_junk_writes_nothing_quota_holds_and_the_session_end_removes_the_rest(
    uploads, tmp_path, monkeypatch
):
    good = good_checkpoint(tmp_path).read_bytes()
    quota = int(3.5 * len(good))  # room for three files
    monkeypatch.setenv("VIT_EXPLORER_UPLOAD_QUOTA_SESSION_MB", str(quota / MiB))
    alice, bob = session("alice"), session("bob")
    for i in range(12):  # junk: refused in memory, nothing written
        alice.file_uploader(key="model_upload").upload(f"junk{i}.pt", b"not a checkpoint %d" % i, "application/x").run()
        ok(alice)
        assert "neither a safetensors file nor a PyTorch checkpoint" in sidebar_errors(alice)[0]
    assert folder_bytes(uploads) == 0 and not list(uploads.rglob("junk*"))
    refused = 0
    for i in range(6):  # good files under other names until the session's quota says no
        alice.file_uploader(key="model_upload").upload(f"m{i}.safetensors", good, "application/octet-stream").run()
        ok(alice)
        errs = sidebar_errors(alice)
        if errs:
            assert "would take your uploads past" in errs[0], errs
            refused += 1
    assert refused == 3
    assert 0 < folder_bytes(uploads) <= quota  # the session's cap, on disk
    still_works(bob)
    # the session ends: Streamlit clears its session-scoped resources, whose release removes its folder
    clear_session_resource_cache(APPTEST_SESSION)
    assert folder_bytes(uploads) == 0


def test_a_vanished_sessions_uploads_are_swept_after_the_time_limit(uploads, tmp_path, monkeypatch):
    alice = session("alice")
    alice.file_uploader(key="model_upload").upload(
        "old.safetensors", good_checkpoint(tmp_path).read_bytes(), "application/octet-stream"
    ).run()
    ok(alice)
    assert folder_bytes(uploads) > 0
    old = time.time() - 2 * 3600
    for p in uploads.rglob("*"):
        os.utime(p, (old, old))
    monkeypatch.setenv("VIT_EXPLORER_UPLOAD_TTL_S", "3600")
    bob = session("bob")  # the next upload of anyone sweeps
    bob.file_uploader(key="model_upload").upload(
        "new.safetensors", good_checkpoint(tmp_path, "new.safetensors", 6).read_bytes(), "application/octet-stream"
    ).run()
    ok(bob)
    assert [p.name for p in uploads.rglob("*.safetensors")] == ["new.safetensors"]


# ---- row: "a 40-megapixel PNG of 166 KiB -> +538 MiB peak; the 20 MB limit only in the browser" ----


def forty_megapixel_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8000, 5000), (200, 120, 40)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_a_40_megapixel_image_is_refused_from_its_header_in_classroom_mode(uploads, monkeypatch):
    data = forty_megapixel_png()
    assert len(data) < 400 * 1024
    monkeypatch.setenv("VIT_EXPLORER_PUBLIC", "1")
    alice, bob = session("alice"), session("bob")
    before = peak_rss()
    alice.file_uploader(key="image_upload").upload("huge.png", data, "image/png").run()
    ok(alice)
    errors = [e.value for e in alice.error]
    assert any("huge.png was not used" in e and "8000x5000" in e and "limit is 16 MP" in e for e in errors), errors
    assert peak_rss() - before < 100 * MiB  # was +538 MiB
    assert "image: CIFAR-10: cat" in prediction_text(alice)
    assert folder_bytes(uploads) == 0  # images are never written to disk
    still_works(bob)


def test_the_image_size_limit_holds_on_the_server(uploads, monkeypatch):
    monkeypatch.setenv("VIT_EXPLORER_MAX_IMAGE_MB", "1")
    big = png(3, size=(1000, 800))  # random pixels: ~2.3 MB of PNG
    assert len(big) > MiB
    alice, bob = session("alice"), session("bob")
    alice.file_uploader(key="image_upload").upload("big.png", big, "image/png").run()  # AppTest skips the browser check
    ok(alice)
    errors = [e.value for e in alice.error]
    assert any("big.png was not used" in e and "this server takes images up to 1 MB" in e for e in errors), errors
    assert "image: CIFAR-10: cat" in prediction_text(alice)
    still_works(bob)


# ---- row: "a FIFO named as a checkpoint path -> the loader blocks for ever" ----


def _unblock(fifo: Path) -> None:
    """Open the FIFO for writing once, so a reader stuck in open() on old code returns."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


def test_a_fifo_checkpoint_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    result: list[BaseException | None] = []

    def load() -> None:
        try:
            load_checkpoint(fifo)
            result.append(None)
        except BaseException as e:  # noqa: BLE001 - reported below
            result.append(e)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():
        _unblock(fifo)
        t.join(5)
        pytest.fail("load_checkpoint blocked on a FIFO")
    assert isinstance(result[0], CheckpointError) and "not a regular file" in str(result[0])


def test_a_fifo_typed_as_a_path_is_refused_at_once_like_a_missing_file(uploads, tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    alice, bob = session("alice"), session("bob")
    alice.default_timeout = 20
    t0 = time.monotonic()
    try:
        alice.text_input(key="model_path").set_value(str(fifo)).run()
    finally:
        _unblock(fifo)
    assert time.monotonic() - t0 < 15
    ok(alice)
    assert sidebar_errors(alice) == [REFUSED]
    alice.text_input(key="model_path").set_value(str(tmp_path)).run()  # a folder: the same words
    ok(alice)
    assert sidebar_errors(alice) == [REFUSED]
    assert "Prediction:" in prediction_text(alice)
    still_works(bob)


# ---- the public switch ----


def test_classroom_mode_has_no_checkpoint_upload_or_path_and_hides_error_details(uploads, monkeypatch):
    monkeypatch.setenv("VIT_EXPLORER_PUBLIC", "1")
    before = st.get_option("client.showErrorDetails")
    try:
        at = session("alice")
        assert not [u for u in at.get("file_uploader") if u.key == "model_upload"]
        assert not [t for t in at.get("text_input") if t.key == "model_path"]
        assert any("Classroom mode" in c.value for c in at.sidebar.caption)
        assert st.get_option("client.showErrorDetails") in ("none", False)
        assert "Prediction:" in prediction_text(at)
    finally:
        st.set_option("client.showErrorDetails", before)


def test_classroom_mode_loads_paths_only_from_the_models_folder(uploads, tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    good_checkpoint(models, "class-model.safetensors")
    outside = good_checkpoint(tmp_path, "outside.safetensors")
    monkeypatch.setenv("VIT_EXPLORER_PUBLIC", "1")
    monkeypatch.setenv("VIT_EXPLORER_MODELS", str(models))
    before = st.get_option("client.showErrorDetails")
    try:
        at = session("alice")
        assert "Server: class-model.safetensors" in at.selectbox(key="model_key").options
        for typed in (str(outside), "../outside.safetensors", "/etc/passwd"):
            at.text_input(key="model_path").set_value(typed).run()
            ok(at)
            assert sidebar_errors(at) == [REFUSED], typed
        at.text_input(key="model_path").set_value("class-model.safetensors").run()
        ok(at)
        assert any(n in prediction_text(at) for n in ("left", "right"))
        assert str(tmp_path) not in all_text(at)
    finally:
        st.set_option("client.showErrorDetails", before)
