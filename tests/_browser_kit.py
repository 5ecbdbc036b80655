"""Shared pieces of the real-browser tests and the load benchmark: a local `streamlit run app.py`
server, Chromium launch settings, images to upload, and the prediction the app should show,
computed independently of the app (vit_core only, no Streamlit caches)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
BUNDLED_LABEL = "Bundled: ViT on CIFAR-10"
UNTRAINED_LABEL = "Untrained CIFAR-sized ViT (random weights)"
# The prediction line every page shows: "Prediction: cat (87.1%) · model: ... · image: ..."
PREDICTION_RE = re.compile(
    r"Prediction:\s*(?P<pred>.+?) · model: (?P<model>.+?) · image: (?P<image>.+?)(?: — .*)?$", re.S
)
SCRIPT_IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
# CI sets this: a missing Chromium or playwright then fails the browser tests instead of skipping them.
REQUIRE_BROWSER = os.environ.get("VIT_EXPLORER_REQUIRE_BROWSER", "") == "1"


def skip_without_browser() -> bool:
    """True when the browser tests should be skipped: no Chromium here, and CI does not require it."""
    return not REQUIRE_BROWSER and not Path(CHROMIUM).exists()


def import_playwright(module: str = "playwright.sync_api"):
    """The playwright module; the calling test module is skipped without it unless CI requires it."""
    if REQUIRE_BROWSER:
        import importlib

        return importlib.import_module(module)
    import pytest

    return pytest.importorskip(module)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen

    def rss_mib(self) -> float:
        """Resident memory of the server process (Linux /proc), in MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def metrics(self) -> str:
        """Streamlit's /_stcore/metrics (OpenMetrics text: cache sizes, session state)."""
        with urllib.request.urlopen(self.url + "/_stcore/metrics", timeout=10) as r:
            return r.read().decode()


@contextlib.contextmanager
def streamlit_server(log_name: str, env: dict[str, str] | None = None, args: list[str] = ()) -> Iterator[Server]:
    """`streamlit run app.py` on a free port; its output goes to tests/artifacts/<log_name>."""
    port = free_port()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
    cmd += ["--server.port", str(port), "--browser.gatherUsageStats", "false", *args]
    with open(ARTIFACTS / log_name, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 90
            while True:
                try:
                    with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"streamlit did not start (exit {proc.poll()}); see tests/artifacts/{log_name}")
                time.sleep(0.3)
            yield Server(url, proc)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---- driving a page ----


def idle(pg, settle: float = 0.5, timeout_ms: int = 60_000) -> None:
    """Wait until the script run is over and the charts have drawn."""
    time.sleep(0.3)
    pg.wait_for_selector(SCRIPT_IDLE, timeout=timeout_ms)
    time.sleep(settle)


def go_to(pg, label: str, **idle_kw) -> None:
    """Open a page through the sidebar navigation and wait for it."""
    pg.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=label, exact=True).click()
    idle(pg, **idle_kw)


def map_point(pg, fx: float, fy: float) -> tuple[float, float]:
    """Page coordinates of the point (fx, fy), as fractions of width and height, of the image in
    the page's first map: a clickable picture (ui.picker) or a plotly map (the image is square and
    centred: scaleanchor, constrain=domain)."""
    box = pg.locator(".vx-stage img, .js-plotly-plot .nsewdrag").first.bounding_box()
    assert box is not None, "no map on the page"
    side = min(box["width"], box["height"])
    x0 = box["x"] + (box["width"] - side) / 2
    y0 = box["y"] + (box["height"] - side) / 2
    return x0 + side * fx, y0 + side * fy


# ---- images ----


def png_bytes(img: Image.Image, **save_kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **save_kw)
    return buf.getvalue()


def synthetic_photo(seed: int, size: tuple[int, int] = (160, 120)) -> bytes:
    """A distinct, photo-like PNG per seed: a coloured background, shapes and noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
        x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    a = np.asarray(img).astype(np.int16) + rng.integers(-20, 21, (h, w, 3))
    return png_bytes(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)))


# ---- what the app should show, computed without the app ----


def model_for_label(label: str):
    """The model behind the label the app prints on its prediction line."""
    from vit_core import load_checkpoint

    if label == BUNDLED_LABEL:
        return load_checkpoint(ROOT / "assets" / "vit_cifar10.safetensors")
    if label.startswith("Untrained"):
        from ui.models import untrained_cifar_model  # seeded: the same weights as the app's

        return untrained_cifar_model()
    path = Path(label)
    return load_checkpoint(path if path.is_absolute() else ROOT / path)


def expected_prediction(model, data: bytes) -> str:
    """'cat (87.1%)' as `ui.session.Current.prediction_text` formats it, from vit_core alone."""
    import torch

    from vit_core import load_image, preprocess

    with torch.no_grad():
        p = model(preprocess(load_image(data), model)).softmax(-1)[0]
    c = int(p.argmax())
    return f"{model.class_names[c]} ({p[c] * 100:.1f}%)"


def parse_prediction(text: str) -> dict[str, str]:
    m = PREDICTION_RE.search(" ".join(text.split()))
    if not m:
        raise AssertionError(f"no prediction line in {text!r}")
    return {k: v.strip() for k, v in m.groupdict().items()}
