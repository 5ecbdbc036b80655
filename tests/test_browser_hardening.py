"""Bad input through the real widgets, in Chromium: images, checkpoints, a broken download.

One `streamlit run app.py` server and one browser tab for the module. Every file is made here.
Each bad file must end in a short message (no traceback text, no Streamlit exception box) with
the previous image or model still in use, and the session must go on: the next good upload
works. Files that can be used must give the prediction that vit_core computes on its own for
them. A few screenshots of the messages go to tests/artifacts/hardening_*.png.

The pretrained download in this server goes to a local stand-in for the Hugging Face Hub
(HF_ENDPOINT) that cuts every transfer short; nothing reaches the internet.

Skipped without /usr/bin/chromium or the playwright package.
"""

from __future__ import annotations

import io
import pickle
import struct
import time
import zlib
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests._browser_kit import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    SCRIPT_IDLE,
    expected_prediction,
    import_playwright,
    model_for_label,
    parse_prediction,
    png_bytes,
    skip_without_browser,
    streamlit_server,
    synthetic_photo,
)
from tests._fault_servers import FaultServer
from vit_core import VisionTransformer, ViTConfig, save_checkpoint

playwright = import_playwright()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(skip_without_browser(), reason="needs Debian's Chromium at /usr/bin/chromium"),
]

MAX_MESSAGE = 600  # characters: a short message, not a dump


@pytest.fixture(scope="module")
def hub():
    with FaultServer(b"\x00" * 200_000, "short") as srv:
        yield srv


@pytest.fixture(scope="module")
def server(hub, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf")
    env = {
        "HF_HUB_OFFLINE": None,  # this server may try a download, to the local fault server only
        "HF_ENDPOINT": hub.url,
        "HF_HUB_CACHE": str(tmp / "hub"),
        "VIT_EXPLORER_MODELS": str(tmp / "by_hand"),
    }
    with streamlit_server("streamlit_hardening.log", env) as srv:
        srv.hf_cache = tmp / "hub"
        yield srv


@pytest.fixture(scope="module")
def page(server):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.goto(server.url)
        idle(pg)
        yield pg
        browser.close()


def idle(pg, settle: float = 0.1, start: float = 0.3) -> None:
    """Wait for the script run to end (`start`: time for a rerun just asked for to begin)."""
    time.sleep(start)
    pg.wait_for_selector(SCRIPT_IDLE, timeout=90_000)
    time.sleep(settle)


def assert_no_crash(pg) -> None:
    body = pg.locator("body").inner_text()
    assert "Traceback" not in body and 'File "' not in body, body[-2000:]
    assert pg.locator('[data-testid="stException"]').count() == 0


def prediction(pg) -> dict[str, str]:
    alerts = pg.locator('[data-testid="stMain"] [data-testid="stAlert"]').all_inner_texts()
    lines = [a for a in alerts if "Prediction:" in a]
    assert len(lines) == 1, alerts
    return parse_prediction(lines[0])


def sidebar_errors(pg) -> list[str]:
    return pg.locator('[data-testid="stSidebar"] [data-testid="stAlert"]').all_inner_texts()


def wait_for_text(pg, scope: str, *texts: str, timeout: float = 90_000) -> None:
    """Wait until one element under `scope` shows all of `texts`, then until the script run is over."""
    try:
        pg.wait_for_function(
            "([scope, texts]) => [...document.querySelectorAll(scope)].some(e => texts.every(t => e.innerText.includes(t)))",
            arg=[scope, list(texts)],
            timeout=timeout,
        )
    except playwright.Error:
        shoot(pg, "timeout")
        raise AssertionError(f"{texts} never appeared in {scope}; see tests/artifacts/hardening_timeout.png") from None
    idle(pg, start=0.0)  # the text is from the run we wait for


def shoot(pg, name: str) -> Path:
    path = ARTIFACTS / f"hardening_{name}.png"
    pg.screenshot(path=str(path))
    return path


# ----------------------------------------------------------------------------------------------
# Images


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_header_only(w: int, h: int) -> bytes:
    """A valid PNG signature and IHDR claiming w x h pixels, with a tiny empty IDAT: a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _upright_red_over_blue() -> Image.Image:
    a = np.zeros((60, 40, 3), np.uint8)  # 40 wide, 60 tall when upright
    a[:30] = (220, 30, 30)
    a[30:] = (30, 30, 220)
    return Image.fromarray(a)


def _exif_rotated_jpeg() -> bytes:
    """Stored on its side (60x40) with EXIF orientation 6: shown upright it is 40x60, red over blue."""
    stored = _upright_red_over_blue().transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encoded(stored, "JPEG", quality=95, exif=exif)


def _palette_with_transparency() -> bytes:
    img = _noise(64, 48, 1).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return png_bytes(img, transparency=0)


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (48, 48), c).convert("P") for c in ((250, 200, 0), (0, 0, 250), (0, 250, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def _sixteen_bit() -> bytes:
    a = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    img = Image.fromarray(a)
    assert img.mode == "I;16"
    return png_bytes(img)


def _truncated(fmt: str) -> bytes:
    data = _encoded(_noise(128, 96), fmt)
    return data[: len(data) // 2]


# (file name, mime type, bytes, words the message must contain, or None if the image is usable)
BAD_IMAGES = [
    ("empty.png", "image/png", lambda: b"", "empty"),
    ("notes.png", "image/png", lambda: b"shopping list: milk, eggs\n" * 40, "not an image"),
    ("cut.png", "image/png", lambda: _truncated("PNG"), "damaged or truncated"),
    ("cut.jpg", "image/jpeg", lambda: _truncated("JPEG"), "damaged or truncated"),
    ("bomb.png", "image/png", lambda: _png_header_only(100_000, 100_000), "too large"),
]
ODD_IMAGES = [
    ("dot.png", "image/png", lambda: png_bytes(Image.new("RGB", (1, 1), (200, 120, 40)))),
    ("strip.png", "image/png", lambda: png_bytes(_noise(10_000, 10, 2))),
    ("tower.png", "image/png", lambda: png_bytes(_noise(10, 3_000, 3))),
    ("grey16.png", "image/png", _sixteen_bit),
    ("cmyk.jpg", "image/jpeg", lambda: _encoded(_noise(64, 48, 4).convert("CMYK"), "JPEG", quality=95)),
    ("palette_alpha.png", "image/png", _palette_with_transparency),
    ("grey_alpha.png", "image/png", lambda: png_bytes(_noise(64, 48, 5).convert("LA"))),
    ("animated.gif", "image/gif", _animated_gif),
    ("rotated.jpg", "image/jpeg", _exif_rotated_jpeg),
]


def upload_image(pg, name: str, mime: str, data: bytes) -> None:
    uploader = pg.locator('[data-testid="stSidebar"] [data-testid="stFileUploader"]').filter(has_text="upload an image")
    uploader.locator('input[type="file"]').set_input_files(files=[{"name": name, "mimeType": mime, "buffer": data}])


def test_bad_images_give_a_short_message_and_keep_the_previous_image(page, tmp_path):
    before = prediction(page)
    for name, mime, make, words in BAD_IMAGES:
        upload_image(page, name, mime, make())
        wait_for_text(page, '[data-testid="stSidebar"] [data-testid="stAlert"]', name)
        assert_no_crash(page)
        msg = next(e for e in sidebar_errors(page) if name in e)
        assert words in msg and "previous image is still shown" in msg, msg
        assert len(msg) < MAX_MESSAGE, msg
        assert prediction(page)["image"] == before["image"]  # the page still shows the previous image
        if name in ("notes.png", "bomb.png"):
            shoot(page, name.split(".")[0])
    # over the image uploader's limit (ui.images.MAX_IMAGE_MB = 20 MB): the widget refuses it
    huge = tmp_path / "huge.png"  # 21 MB, sparse: handed to the browser as a path, not sent through the driver
    with open(huge, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(21 * 2**20)
    page.locator('[data-testid="stSidebar"] [data-testid="stFileUploader"]').filter(has_text="upload an image").locator(
        'input[type="file"]'
    ).set_input_files(str(huge))
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stFileUploader\"]')].some(e => /must be .*or smaller/i.test(e.innerText))",
        timeout=30_000,
    )
    idle(page)
    assert_no_crash(page)
    assert prediction(page)["image"] == before["image"]
    shoot(page, "too_big")
    # the session goes on: a good upload after all that works
    good = synthetic_photo(11)
    upload_image(page, "after_bad.png", "image/png", good)
    wait_for_text(page, '[data-testid="stMain"] [data-testid="stAlert"]', "image: upload: after_bad.png")
    assert_no_crash(page)
    shown = prediction(page)
    assert shown["pred"] == expected_prediction(model_for_label(shown["model"]), good)


def test_odd_images_work_and_give_the_right_prediction(page):
    for name, mime, make in ODD_IMAGES:
        data = make()
        upload_image(page, name, mime, data)
        wait_for_text(page, '[data-testid="stMain"] [data-testid="stAlert"]', f"image: upload: {name}")
        assert_no_crash(page)
        assert not [e for e in sidebar_errors(page) if name in e]
        shown = prediction(page)
        assert shown["pred"] == expected_prediction(model_for_label(shown["model"]), data), name
    # the EXIF-rotated photo is shown upright: 40x60, red on top
    sidebar = page.locator('[data-testid="stSidebar"]')
    assert "upload: rotated.jpg (40x60)" in sidebar.inner_text()
    src = sidebar.locator('[data-testid="stImage"] img').first.get_attribute("src")
    thumb = Image.open(io.BytesIO(page.request.get(urljoin(page.url, src)).body())).convert("RGB")
    a = np.asarray(thumb).astype(int)
    assert a.shape[0] > a.shape[1]  # taller than wide
    top, bottom = a[: a.shape[0] // 4].mean((0, 1)), a[-a.shape[0] // 4 :].mean((0, 1))
    assert top[0] > 150 and top[2] < 90 and bottom[2] > 150 and bottom[0] < 90, (top, bottom)


# ----------------------------------------------------------------------------------------------
# Checkpoints


class _RunsCode:
    """Unpickling this writes a file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def _tiny(classes: int = 3) -> VisionTransformer:
    torch.manual_seed(0)
    cfg = ViTConfig(img_size=32, patch_size=8, num_classes=classes, embed_dim=24, depth=2, num_heads=2, crop_pct=1.0)
    return VisionTransformer(cfg, [f"thing {i}" for i in range(classes)]).eval()


def _lying_checkpoint(path: Path, **config_changes) -> Path:
    """Our format, whose metadata config disagrees with the weights in the file."""
    import json

    model = _tiny()
    cfg = {**model.cfg.to_dict(), **config_changes}
    names = [f"thing {i}" for i in range(cfg["num_classes"])]  # as many names as the config says, not the head
    meta = {"format": "vit-explorer/1", "config": json.dumps(cfg), "class_names": json.dumps(names)}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path, metadata=meta)
    return path


def open_more_models(pg) -> None:
    expander = pg.locator('[data-testid="stSidebar"] [data-testid="stExpander"]').filter(has_text="More models")
    if not expander.locator('[data-testid="stFileUploader"]').is_visible():
        expander.locator("summary").click()
        time.sleep(0.5)


def selected_model(pg) -> str:
    box = pg.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').filter(has_text="Model").first
    return box.inner_text().replace("Model", "", 1).strip()


def path_box(pg):
    return pg.locator('[data-testid="stSidebar"]').get_by_label("…or a checkpoint path")


def test_bad_checkpoints_run_nothing_and_keep_the_previous_model(page, tmp_path):
    photo = synthetic_photo(21)
    upload_image(page, "for_models.png", "image/png", photo)
    wait_for_text(page, '[data-testid="stMain"] [data-testid="stAlert"]', "image: upload: for_models.png")
    open_more_models(page)
    model_before = selected_model(page)
    shown_before = prediction(page)
    marker = tmp_path / "side_effect.txt"
    # the payload is live: unpickled without weights_only it does write its file
    control = tmp_path / "control.txt"
    pickle.loads(pickle.dumps(_RunsCode(control)))
    assert control.read_text() == "pwned"
    evil_zip = io.BytesIO()
    torch.save({"model": _tiny().state_dict(), "payload": _RunsCode(marker)}, evil_zip)
    good = save_checkpoint(_tiny(), tmp_path / "good.safetensors").read_bytes()
    resnet = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, resnet)
    lying_head = _lying_checkpoint(tmp_path / "classes.safetensors", num_classes=5)
    lying_size = _lying_checkpoint(tmp_path / "size.safetensors", img_size=[64, 64])
    cases = [  # (how, file name, bytes or path, words the message must contain)
        ("upload", "evil.pth", pickle.dumps({"state_dict": _RunsCode(marker)}, protocol=2), "would run code"),
        ("upload", "evil_zip.pt", evil_zip.getvalue(), "would run code"),
        ("upload", "resnet.safetensors", resnet.read_bytes(), "unknown checkpoint format"),
        ("upload", "cut.safetensors", good[: len(good) // 2], "truncated"),
        ("path", "classes.safetensors", lying_head, "head.weight"),  # 5 classes named, 3 in the weights
        ("path", "size.safetensors", lying_size, "64x64"),  # 64x64 said, 32x32 position embeddings
    ]
    for how, name, payload, words in cases:
        if how == "upload":
            uploader = page.locator('[data-testid="stSidebar"] [data-testid="stFileUploader"]').filter(
                has_text="Upload a checkpoint"
            )
            uploader.locator('input[type="file"]').set_input_files(
                files=[{"name": name, "mimeType": "application/octet-stream", "buffer": payload}]
            )
        else:
            path_box(page).fill(str(payload))
            path_box(page).press("Enter")
        wait_for_text(page, '[data-testid="stSidebar"] [data-testid="stAlert"]', Path(name).stem, "previous model is")
        assert_no_crash(page)
        msg = next(e for e in sidebar_errors(page) if "previous model" in e)
        assert Path(name).stem in msg and words in msg, msg  # uploads are stored as <stem>-<digest><suffix>
        assert len(msg) < MAX_MESSAGE, msg
        assert not marker.exists(), "a checkpoint ran code"
        assert selected_model(page) == model_before
        assert prediction(page)["model"] == shown_before["model"]
        if name in ("evil.pth", "size.safetensors"):
            shoot(page, name.split(".")[0])
        open_more_models(page)
    # the session goes on: a good checkpoint is taken and predicts what vit_core computes
    path_box(page).fill(str(tmp_path / "good.safetensors"))
    path_box(page).press("Enter")
    wait_for_text(page, '[data-testid="stMain"] [data-testid="stAlert"]', f"model: {tmp_path / 'good.safetensors'}")
    assert_no_crash(page)
    assert "2 layers · 2 heads" in page.locator('[data-testid="stSidebar"]').inner_text()
    assert prediction(page)["pred"] == expected_prediction(_tiny(), photo)


def test_a_download_cut_short_leaves_no_file_and_keeps_the_model(page, server, hub):
    open_more_models(page)
    model_before = selected_model(page)
    expander = page.locator('[data-testid="stSidebar"] [data-testid="stExpander"]').filter(has_text="More models")
    expander.get_by_role("button", name="Download and use").click()
    wait_for_text(page, '[data-testid="stSidebar"] [data-testid="stAlert"]', "Could not download")
    assert_no_crash(page)
    msg = next(e for e in sidebar_errors(page) if "Could not download" in e)
    assert "is not on this computer (the connection broke off during the transfer)" in msg, msg
    assert "put it at" in msg and msg.rstrip().endswith("model.safetensors."), msg  # not cut off
    assert len(msg) < MAX_MESSAGE, msg
    assert any(method == "GET" for method, _ in hub.requests)  # it did reach the (local) server
    assert not [p for p in server.hf_cache.rglob("snapshots/*/*") if p.is_file()]  # nothing usable was kept
    shoot(page, "download")
    assert selected_model(page) == model_before
    assert "Prediction:" in page.locator('[data-testid="stMain"]').inner_text()
