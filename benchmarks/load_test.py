"""A class opens the app at once: N concurrent browser sessions against one local server.

Two modes.

**classroom** (the default): the server runs as for a class (`VIT_EXPLORER_PUBLIC=1`, loopback
only, its own temporary folder). N sessions (default 30) start together, each its own Playwright
context (its own cookies and Streamlit session) in one Chromium. A few of them (`--attackers`)
try what issue 16 lists: a 40-megapixel PNG of a few hundred KiB, many uploads in a row, looking
for the checkpoint upload and path box (off in classroom mode); with `--open` (no classroom
mode) also a checkpoint of patch size 1, the upload folder typed as a checkpoint path, and a
FIFO typed as one. Each attack must be refused with its message. The others follow the tour:
open the app, upload their own image, then Patches, Embeddings, Position embeddings, Attention
and Prediction, each timed until its title is drawn and the script run is over; the prediction
shown for their image is checked against vit_core's own computation. Reported: each honest
session's p50 / p95 page time, the server's resident memory (start, warm, peak during the
class, after) and the bytes in its temporary folder before, during and after (every session
closed: nothing left behind). Bounded: at most 200 sessions, one time limit for the whole class.

**waves**: every session opens the app, uploads a different image, waits for its prediction and
opens the Attention page; with `--waves W` the whole thing runs W times with new images each
time: a bounded app reaches a plateau instead of growing per image. It reports latency per step
(p50, p95, max), the CPU seconds of the server and of the machine during each wave (the browsers
share the machine here, unlike a classroom), resident memory and the bytes each Streamlit cache
holds (/_stcore/metrics).

Run:   python benchmarks/load_test.py --sessions 30 --attackers 4 [--json out.json]
       python benchmarks/load_test.py --open --sessions 30 --attackers 6
       python benchmarks/load_test.py --mode waves --sessions 20 --waves 3
       python benchmarks/load_test.py --mode waves --url http://host:8501   (an app already running)

tests/test_load.py runs small versions of both (4 sessions) in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests._browser_kit import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    SCRIPT_IDLE,
    Server,
    expected_prediction,
    model_for_label,
    parse_prediction,
    streamlit_server,
    synthetic_photo,
)

ATTENTION_TITLE = "Step 4: attention, who looks at whom"
ATTENTION_CHARTS = 5  # plotly figures; the query section's maps are pictures
TIMEOUT_MS = 300_000  # generous: 20 sessions on a shared 2-core machine queue up


@dataclass
class SessionResult:
    index: int
    image: str
    open_s: float = float("nan")  # first page ready
    upload_s: float = float("nan")  # upload -> prediction of this image shown, run over
    attention_s: float = float("nan")  # click -> Attention page with all charts, run over
    total_s: float = float("nan")
    shown: str = ""  # the prediction line's class text, e.g. "cat (41.2%)"
    model: str = ""  # the model label on the prediction line
    image_on_page: str = ""
    errors: list[str] = field(default_factory=list)  # exceptions or tracebacks seen on the page
    expected: str = ""
    correct: bool = False


async def _idle(pg) -> None:
    await pg.wait_for_selector(SCRIPT_IDLE, timeout=TIMEOUT_MS)


async def _text_appears(pg, scope: str, text: str) -> None:
    await pg.wait_for_function(
        "([scope, text]) => [...document.querySelectorAll(scope)].some(e => e.innerText.includes(text))",
        arg=[scope, text],
        timeout=TIMEOUT_MS,
        polling=100,
    )


async def _crash_check(pg, r: SessionResult) -> None:
    if await pg.locator('[data-testid="stException"]').count():
        r.errors.append("stException: " + (await pg.locator('[data-testid="stException"]').first.inner_text())[:300])
    body = await pg.locator("body").inner_text()
    if "Traceback" in body:
        r.errors.append("Traceback text on the page")


async def one_session(
    browser, url: str, index: int, name: str, data: bytes, start: asyncio.Event, direct: bool = False
) -> SessionResult:
    """Open the app, upload `data`, open the Attention page; `direct` opens /attention first instead
    (one page run fewer: the small CI version)."""
    r = SessionResult(index, name)
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        pg = await context.new_page()
        await start.wait()
        t0 = time.perf_counter()
        await pg.goto(url + ("/attention" if direct else ""), timeout=TIMEOUT_MS)
        uploader = pg.locator('[data-testid="stSidebar"] [data-testid="stFileUploader"]').filter(
            has_text="upload an image"
        )
        await uploader.wait_for(timeout=TIMEOUT_MS)
        await _text_appears(pg, '[data-testid="stMain"] [data-testid="stAlert"]', "Prediction:")
        await _idle(pg)
        t1 = time.perf_counter()
        r.open_s = t1 - t0
        await uploader.locator('input[type="file"]').set_input_files(
            files=[{"name": name, "mimeType": "image/png", "buffer": data}], timeout=TIMEOUT_MS
        )
        await _text_appears(pg, '[data-testid="stMain"] [data-testid="stAlert"]', f"image: upload: {name}")
        await _idle(pg)
        t2 = time.perf_counter()
        r.upload_s = t2 - t1
        if not direct:
            await (
                pg.locator('[data-testid="stSidebarNav"]')
                .get_by_role("link", name="Attention", exact=True)
                .click(timeout=TIMEOUT_MS)
            )
        await _text_appears(pg, "h1", ATTENTION_TITLE)
        await pg.wait_for_function(
            f"document.querySelectorAll('.js-plotly-plot').length >= {ATTENTION_CHARTS}"
            " && document.querySelector('.st-key-attn_image') !== null",  # the clickable map (ui.picker)
            timeout=TIMEOUT_MS,
        )
        await _idle(pg)
        t3 = time.perf_counter()
        r.attention_s, r.total_s = t3 - t2, t3 - t0
        lines = [t for t in await pg.locator('[data-testid="stMain"] [data-testid="stAlert"]').all_inner_texts()]
        line = next((t for t in lines if "Prediction:" in t), "")
        if line:
            p = parse_prediction(line)
            r.shown, r.model, r.image_on_page = p["pred"], p["model"], p["image"]
        else:
            r.errors.append(f"no prediction line on the Attention page: {lines}")
        await _crash_check(pg, r)
    except Exception as e:  # a timeout or a broken page is a result to report, not a crash of the benchmark
        r.errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
    finally:
        await context.close()
    return r


async def run_wave(url: str, images: list[tuple[str, bytes]], direct: bool = False) -> list[SessionResult]:
    """All sessions at once, in one Chromium, one context each; they start together."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            start = asyncio.Event()
            tasks = [
                asyncio.create_task(one_session(browser, url, i, name, data, start, direct))
                for i, (name, data) in enumerate(images)
            ]
            await asyncio.sleep(1.0)  # let every context open its tab first
            start.set()
            return list(await asyncio.gather(*tasks))
        finally:
            await browser.close()


def check(results: list[SessionResult], images: dict[str, bytes]) -> None:
    """Fill in the prediction vit_core computes for each session's image, with the model it shows."""
    models: dict[str, object] = {}
    for r in results:
        if not r.model:
            continue
        if r.model not in models:
            models[r.model] = model_for_label(r.model)
        r.expected = expected_prediction(models[r.model], images[r.image])
        r.correct = not r.errors and r.shown == r.expected and r.image_on_page == f"upload: {r.image}"


def cache_sizes(server: Server) -> dict[str, float]:
    """Streamlit's own account of its caches (/_stcore/metrics `cache_memory_bytes`): bytes held by
    each `st.cache_data` function, uploaded files and media; entry counts for `st.cache_resource`."""
    out: dict[str, float] = {}
    for line in server.metrics().splitlines():
        m = re.match(r'cache_memory_bytes\{cache_type="([^"]+)",cache="([^"]*)"\} ([0-9.e+]+)', line)
        if m:
            kind, name = m.group(1), m.group(2).rsplit(".", 1)[-1]
            key = f"{kind}:{name}" if name else kind
            out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def _ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _ticks()


def machine_cpu_s() -> float:
    """CPU seconds every core of the machine has spent busy so far (Linux /proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / _ticks()


def percentile(values: list[float], q: float) -> float:
    v = sorted(x for x in values if x == x)
    if not v:
        return float("nan")
    if len(v) == 1:
        return v[0]
    return statistics.quantiles(v, n=100, method="inclusive")[q - 1] if 1 <= q <= 99 else v[-1]


def summary(results: list[SessionResult]) -> dict[str, dict[str, float]]:
    out = {}
    for step in ("open_s", "upload_s", "attention_s", "total_s"):
        vals = [getattr(r, step) for r in results]
        out[step] = {
            "p50": percentile(vals, 50),
            "p95": percentile(vals, 95),
            "max": max((v for v in vals if v == v), default=float("nan")),
        }
    return out


def images_for_wave(wave: int, n: int) -> list[tuple[str, bytes]]:
    return [(f"w{wave}_s{i:02d}.png", synthetic_photo(1000 * wave + i)) for i in range(n)]


# ---- classroom mode: honest sessions on the tour, a few attackers ----

TOUR = [  # (sidebar link, page title)
    ("Patches", "Step 1: cut the image into patches"),
    ("Embeddings", "Step 2: turn every patch into a vector"),
    ("Position embeddings", "Step 3: tell each token where it came from"),
    ("Attention", "Step 4: attention, who looks at whom"),
    ("Prediction", "Step 5: the answer"),
]
OVERVIEW_TITLE = "How a Vision Transformer sees an image"
PUBLIC_ATTACKS = ("40mp", "checkpoint_widgets", "many_uploads")
OPEN_ATTACKS = ("patch1_checkpoint", "upload_folder_path", "fifo_path", "40mp", "many_uploads")
REFUSED_PATH = "No checkpoint this app can load at that path"
MAX_SESSIONS = 200


@dataclass
class ClassSession:
    index: int
    role: str  # "tour" or the attack's name
    open_s: float = float("nan")
    upload_s: float = float("nan")
    pages: dict[str, float] = field(default_factory=dict)  # tour page -> seconds
    refused: bool = False  # an attack: refused with its message
    message: str = ""  # the refusal an attack got (or what an honest session saw)
    shown: str = ""
    model: str = ""
    image_on_page: str = ""
    expected: str = ""
    correct: bool = False
    errors: list[str] = field(default_factory=list)

    def page_times(self) -> list[float]:
        return [v for v in (self.open_s, self.upload_s, *self.pages.values()) if v == v]


def forty_megapixel_png() -> bytes:
    """8000 x 5000 pixels of one colour: a few hundred KiB of PNG, 120 MB once decoded."""
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGB", (8000, 5000), (200, 120, 40)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def patch1_checkpoint() -> bytes:
    """A 0.36 MiB checkpoint of a ViT with 1-pixel patches on 64 px images: 4,097 tokens, 2 GiB of
    attention maps per traced image."""
    import tempfile

    import torch

    from vit_core import VisionTransformer, ViTConfig, save_checkpoint

    cfg = ViTConfig(img_size=64, patch_size=1, embed_dim=16, depth=8, num_heads=4, num_classes=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = VisionTransformer(cfg, ["a", "b"]).eval()
    with tempfile.TemporaryDirectory() as d:
        return save_checkpoint(model, Path(d) / "patch1.safetensors").read_bytes()


async def _upload(pg, label: str, name: str, data: bytes, mime: str = "image/png") -> None:
    box = pg.locator('[data-testid="stSidebar"] [data-testid="stFileUploader"]').filter(has_text=label)
    await box.locator('input[type="file"]').set_input_files(
        files=[{"name": name, "mimeType": mime, "buffer": data}], timeout=TIMEOUT_MS
    )


async def _open_more_models(pg) -> None:
    await pg.locator('[data-testid="stSidebar"] summary').filter(has_text="More models").click(timeout=TIMEOUT_MS)
    await pg.wait_for_timeout(300)


async def _type_path(pg, path: str) -> None:
    box = pg.locator('[data-testid="stSidebar"] [data-testid="stTextInput"]').filter(has_text="checkpoint path")
    field_ = box.locator("input")
    await field_.fill(path, timeout=TIMEOUT_MS)
    await field_.press("Enter")


async def _attack(pg, r: ClassSession, ctx: dict) -> None:
    """One attack; `r.refused` when the app said no with the expected message and kept going."""
    alert = '[data-testid="stMain"] [data-testid="stAlert"], [data-testid="stSidebar"] [data-testid="stAlert"]'
    if r.role == "40mp":
        await _upload(pg, "upload an image", "huge.png", ctx["40mp"])
        await _text_appears(pg, alert, "huge.png was not used")
        r.message = next(t for t in await pg.locator(alert).all_inner_texts() if "huge.png" in t)
        r.refused = "MP" in r.message
    elif r.role == "many_uploads":
        for i in range(ctx["many"]):
            name = f"many_{r.index}_{i}.png"
            await _upload(pg, "upload an image", name, synthetic_photo(50_000 + 100 * r.index + i))
            await _text_appears(pg, alert, f"image: upload: {name}")
        r.message = f"{ctx['many']} uploads shown in turn"
        r.refused = True  # nothing to refuse: the check is that nothing is written (disk figures)
    elif r.role == "checkpoint_widgets":
        await _open_more_models(pg)
        sidebar = await pg.locator('[data-testid="stSidebar"]').inner_text()
        absent = "Upload a checkpoint" not in sidebar and "checkpoint path" not in sidebar
        r.message = "no checkpoint upload or path box" if absent else "the checkpoint upload or path box is there"
        r.refused = absent and "Classroom mode" in sidebar
    elif r.role == "patch1_checkpoint":
        await _open_more_models(pg)
        await _upload(pg, "Upload a checkpoint", "patch1.safetensors", ctx["patch1"], "application/octet-stream")
        await _text_appears(pg, alert, "patch1.safetensors was not loaded")
        r.message = next(t for t in await pg.locator(alert).all_inner_texts() if "patch1" in t)
        r.refused = "attention maps" in r.message or "tokens" in r.message
    elif r.role in ("upload_folder_path", "fifo_path"):
        await _open_more_models(pg)
        await _type_path(pg, ctx["upload_dir"] if r.role == "upload_folder_path" else ctx["fifo"])
        await _text_appears(pg, alert, REFUSED_PATH)
        r.message = next(t for t in await pg.locator(alert).all_inner_texts() if REFUSED_PATH in t)
        r.refused = True
    else:
        raise ValueError(f"unknown attack {r.role!r}")
    await _idle(pg)
    await _text_appears(pg, '[data-testid="stMain"] [data-testid="stAlert"]', "Prediction:")  # still working


async def class_session(browser, url: str, r: ClassSession, data: bytes, start: asyncio.Event, ctx: dict) -> None:
    """Open the app; an honest session uploads `data` and follows the tour, an attacker attacks."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        pg = await context.new_page()
        await start.wait()
        t0 = time.perf_counter()
        await pg.goto(url, timeout=TIMEOUT_MS)
        await _text_appears(pg, "h1", OVERVIEW_TITLE)
        await _text_appears(pg, '[data-testid="stMain"] [data-testid="stAlert"]', "Prediction:")
        await _idle(pg)
        r.open_s = time.perf_counter() - t0
        if r.role != "tour":
            await _attack(pg, r, ctx)
        else:
            t1 = time.perf_counter()
            await _upload(pg, "upload an image", ctx["name"], data)
            await _text_appears(pg, '[data-testid="stMain"] [data-testid="stAlert"]', f"image: upload: {ctx['name']}")
            await _idle(pg)
            r.upload_s = time.perf_counter() - t1
            for link, title in ctx["tour"]:
                t = time.perf_counter()
                nav = pg.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=link, exact=True)
                await nav.click(timeout=TIMEOUT_MS)
                await _text_appears(pg, "h1", title)
                await _idle(pg)
                r.pages[link] = time.perf_counter() - t
            lines = await pg.locator('[data-testid="stMain"] [data-testid="stAlert"]').all_inner_texts()
            line = next((t for t in lines if "Prediction:" in t), "")
            if line:
                p = parse_prediction(line)
                r.shown, r.model, r.image_on_page = p["pred"], p["model"], p["image"]
            else:
                r.errors.append("no prediction line at the end of the tour")
        await _crash_check(pg, r)
    except Exception as e:  # a timeout or a broken page is a result to report
        r.errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
    finally:
        await context.close()


def folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


async def _sample_rss(server: Server, out: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            out.append(server.rss_mib())
        except (OSError, RuntimeError):
            pass
        await asyncio.sleep(0.5)


def roles(sessions: int, attackers: int, attacks: tuple[str, ...]) -> list[str]:
    """Attackers spread evenly among the honest sessions, each attack in turn."""
    attackers = min(attackers, sessions)
    out = ["tour"] * sessions
    for k in range(attackers):
        out[(k * sessions) // max(attackers, 1)] = attacks[k % len(attacks)]
    return out


async def run_class(
    server: Server,
    tmp: Path,
    sessions: int,
    attackers: int,
    open_mode: bool,
    tour: list[tuple[str, str]],
    time_limit_s: float,
    many: int = 6,
) -> dict:
    """The whole class at once against `server` (whose temporary folder is `tmp`); the report."""
    from playwright.async_api import async_playwright

    sessions = max(1, min(sessions, MAX_SESSIONS))
    attacks = OPEN_ATTACKS if open_mode else PUBLIC_ATTACKS
    fifo = tmp / "model.safetensors"
    if open_mode and not fifo.exists():
        os.mkfifo(fifo)
    ctx_base = {
        "40mp": forty_megapixel_png(),
        "patch1": patch1_checkpoint() if open_mode else b"",
        "upload_dir": str(tmp / "vit-explorer-uploads"),
        "fifo": str(fifo),
        "many": many,
        "tour": tour,
    }
    results = [ClassSession(i, role) for i, role in enumerate(roles(sessions, attackers, attacks))]
    images = {r.index: (f"student_{r.index:03d}.png", synthetic_photo(7000 + r.index)) for r in results}
    report: dict = {"sessions": sessions, "attackers": sum(r.role != "tour" for r in results), "open": open_mode}
    report["disk_before_bytes"] = folder_bytes(tmp)
    report["rss_before_mib"] = server.rss_mib()
    report["load_before"] = os.getloadavg()
    cpu0 = (process_cpu_s(server.proc.pid), machine_cpu_s())
    rss: list[float] = []
    disk_peak = 0
    stop = asyncio.Event()
    t0 = time.perf_counter()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            start = asyncio.Event()
            sampler = asyncio.create_task(_sample_rss(server, rss, stop))
            tasks = [
                asyncio.create_task(
                    class_session(
                        browser, server.url, r, images[r.index][1], start, {**ctx_base, "name": images[r.index][0]}
                    )
                )
                for r in results
            ]
            await asyncio.sleep(1.0)
            start.set()
            done, pending = await asyncio.wait(tasks, timeout=time_limit_s)
            for t in pending:
                t.cancel()
            for r, t in zip(results, tasks):
                if t in pending:
                    r.errors.append(f"not done within the class's time limit ({time_limit_s:.0f} s)")
            disk_peak = folder_bytes(tmp)
            stop.set()
            await sampler
        finally:
            await browser.close()
    report["wall_s"] = time.perf_counter() - t0
    report["load_after"] = os.getloadavg()
    # who had the CPU: on one machine the class's browser tabs share the cores with the server
    report["server_cpu_s"] = process_cpu_s(server.proc.pid) - cpu0[0]
    report["machine_cpu_s"] = machine_cpu_s() - cpu0[1]
    report["rss_peak_mib"] = max(rss, default=float("nan"))
    # every tab is closed: Streamlit ends the sessions, which removes what they uploaded
    deadline = time.monotonic() + 30
    while folder_bytes(tmp) > report["disk_before_bytes"] and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
    report["rss_after_mib"] = server.rss_mib()
    report["disk_end_of_class_bytes"] = disk_peak
    report["disk_after_bytes"] = folder_bytes(tmp)
    report["left_behind"] = [f for f in _files(tmp) if f != fifo.name]
    check_class(results, images)
    report["results"] = [asdict(r) for r in results]
    honest = [r for r in results if r.role == "tour"]
    report["honest"] = {
        "correct": sum(r.correct for r in honest),
        "count": len(honest),
        "page_p50_s": percentile([v for r in honest for v in r.page_times()], 50),
        "page_p95_s": percentile([v for r in honest for v in r.page_times()], 95),
        "per_session": [
            {"index": r.index, "p50_s": percentile(r.page_times(), 50), "p95_s": percentile(r.page_times(), 95)}
            for r in honest
        ],
    }
    report["attacks"] = [
        {"index": r.index, "attack": r.role, "refused": r.refused, "message": r.message[:200], "errors": r.errors}
        for r in results
        if r.role != "tour"
    ]
    return report


def check_class(results: list[ClassSession], images: dict[int, tuple[str, bytes]]) -> None:
    """Fill in the prediction vit_core computes for each honest session's image."""
    models: dict[str, object] = {}
    for r in results:
        if r.role != "tour" or not r.model:
            continue
        if r.model not in models:
            models[r.model] = model_for_label(r.model)
        name, data = images[r.index]
        r.expected = expected_prediction(models[r.model], data)
        r.correct = not r.errors and r.shown == r.expected and r.image_on_page == f"upload: {name}"


def class_ok(report: dict) -> bool:
    """Every honest session correct, every attack refused, nothing left on disk."""
    h = report["honest"]
    return (
        h["correct"] == h["count"]
        and all(a["refused"] and not a["errors"] for a in report["attacks"])
        and not report["left_behind"]
        and report["disk_after_bytes"] <= report["disk_before_bytes"]
    )


def print_class(report: dict) -> None:
    h = report["honest"]
    print(
        f"class of {report['sessions']} ({report['attackers']} attacking, "
        f"{'open server' if report['open'] else 'classroom mode'}) in {report['wall_s']:.0f} s; load average "
        f"{report['load_before'][0]:.1f} before, {report['load_after'][0]:.1f} after, {os.cpu_count()} cores",
        flush=True,
    )
    print(
        f"  honest sessions: {h['correct']}/{h['count']} correct; page time p50 {h['page_p50_s']:.1f} s, "
        f"p95 {h['page_p95_s']:.1f} s (all pages of all honest sessions)"
    )
    for s in h["per_session"]:
        print(f"    session {s['index']:3d}: p50 {s['p50_s']:.1f} s  p95 {s['p95_s']:.1f} s")
    for a in report["attacks"]:
        print(
            f"  attack {a['attack']} (session {a['index']}): {'refused' if a['refused'] else 'NOT REFUSED'}: {a['message']!r} {a['errors'] or ''}"
        )
    for r in report["results"]:
        if r["role"] == "tour" and not r["correct"]:
            print(f"  session {r['index']}: shown {r['shown']!r} expected {r['expected']!r} {r['errors']}")
    print(
        f"  server RSS: {report['rss_before_mib']:.0f} MiB before, peak {report['rss_peak_mib']:.0f} MiB, "
        f"{report['rss_after_mib']:.0f} MiB after"
    )
    if "server_cpu_s" in report:
        cores_s = (os.cpu_count() or 1) * report["wall_s"]
        print(
            f"  CPU during the class: the app server {report['server_cpu_s']:.0f} s, the whole machine "
            f"{report['machine_cpu_s']:.0f} s of {cores_s:.0f} s available ({report['server_cpu_s'] / max(report['machine_cpu_s'], 1e-9):.0%} "
            f"the server; the rest is the {report['sessions']} browser tabs and anything else running here)"
        )
    print(
        f"  server temp folder: {report['disk_before_bytes']} bytes before, {report['disk_end_of_class_bytes']} at the "
        f"end of the class, {report['disk_after_bytes']} after the tabs closed; left behind: {report['left_behind'] or 'nothing'}",
        flush=True,
    )


def classroom_server_env(tmp: Path, open_mode: bool) -> dict[str, str | None]:
    """The server's environment: classroom mode (unless `open_mode`) and every file it writes in `tmp`."""
    return {
        "VIT_EXPLORER_PUBLIC": None if open_mode else "1",
        "TMPDIR": str(tmp),
        "VIT_EXPLORER_TRAIN_DIR": str(tmp / "train"),
    }


def classroom(
    sessions: int = 30,
    attackers: int = 4,
    open_mode: bool = False,
    tour: list[tuple[str, str]] | None = None,
    time_limit_s: float = 1200.0,
    many: int = 6,
    warmup: bool = True,
) -> dict:
    """Start a loopback-only server in a fresh temporary folder, warm it up (one session, unless not
    `warmup`), run the class; the report."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vit-class-") as d:
        tmp = Path(d)
        env = classroom_server_env(tmp, open_mode)
        with streamlit_server("classroom_server.log", env=env, args=["--server.address", "127.0.0.1"]) as server:
            report: dict = {"rss_after_start_mib": server.rss_mib(), "warmup_errors": []}
            if warmup:
                warm = asyncio.run(run_wave(server.url, [("warmup.png", synthetic_photo(999_999))], direct=True))
                report["warmup_errors"] = warm[0].errors
                report["rss_after_warmup_mib"] = server.rss_mib()
            report.update(
                asyncio.run(run_class(server, tmp, sessions, attackers, open_mode, tour or TOUR, time_limit_s, many))
            )
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("classroom", "waves"), default="classroom")
    ap.add_argument("--sessions", type=int, help="concurrent browser sessions (classroom 30, waves 20)")
    ap.add_argument("--attackers", type=int, default=4, help="classroom: sessions that attack instead of the tour")
    ap.add_argument("--open", action="store_true", help="classroom: a server without VIT_EXPLORER_PUBLIC=1")
    ap.add_argument("--time-limit", type=float, default=1200.0, help="classroom: seconds for the whole class")
    ap.add_argument("--waves", type=int, default=1, help="waves: waves of new sessions with new images")
    ap.add_argument("--url", help="waves: an app already running (no memory figures then)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--direct", action="store_true", help="waves: open /attention first (as tests/test_load.py does)")
    args = ap.parse_args(argv)
    if args.mode == "classroom":
        report = classroom(args.sessions or 30, args.attackers, args.open, time_limit_s=args.time_limit)
        print_class(report)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        return 0 if class_ok(report) else 1
    args.sessions = args.sessions or 20

    report = {"sessions": args.sessions, "waves": []}
    server_cm = None if args.url else streamlit_server("load_test_server.log")
    server = server_cm.__enter__() if server_cm else None
    url = args.url or server.url
    try:
        if server:
            report["rss_after_start_mib"] = server.rss_mib()
            warm = asyncio.run(run_wave(url, [("warmup.png", synthetic_photo(999_999))]))
            report["warmup_errors"] = warm[0].errors
            report["rss_after_warmup_mib"] = server.rss_mib()
            print(
                f"server RSS: {report['rss_after_start_mib']:.0f} MiB after start, "
                f"{report['rss_after_warmup_mib']:.0f} MiB after one warm-up session",
                flush=True,
            )
        for wave in range(args.waves):
            images = images_for_wave(wave, args.sessions)
            t0 = time.perf_counter()
            cpu0 = (process_cpu_s(server.proc.pid), machine_cpu_s()) if server else None
            results = asyncio.run(run_wave(url, images, args.direct))
            wall = time.perf_counter() - t0
            cpu = (process_cpu_s(server.proc.pid) - cpu0[0], machine_cpu_s() - cpu0[1]) if server else None
            check(results, dict(images))
            w = {
                "wave": wave,
                "wall_s": wall,
                "correct": sum(r.correct for r in results),
                "summary": summary(results),
                "sessions": [asdict(r) for r in results],
            }
            if server:
                w["rss_mib"] = server.rss_mib()
                w["caches"] = cache_sizes(server)
                w["server_cpu_s"], w["machine_cpu_s"] = cpu
            report["waves"].append(w)
            s = w["summary"]
            print(
                f"wave {wave}: {w['correct']}/{len(results)} correct in {wall:.1f} s wall; "
                + "; ".join(f"{k[:-2]} p50 {v['p50']:.1f} s p95 {v['p95']:.1f} s" for k, v in s.items())
                + (f"; server RSS {w['rss_mib']:.0f} MiB" if server else ""),
                flush=True,
            )
            if server:
                print(
                    f"  CPU during the wave: the app server {cpu[0]:.0f} s, the whole machine {cpu[1]:.0f} s "
                    f"({cpu[0] / max(cpu[1], 1e-9):.0%} the server; the rest is the {len(results)} browser tabs "
                    f"and anything else running), {os.cpu_count()} cores x {wall:.0f} s = {os.cpu_count() * wall:.0f} s available",
                    flush=True,
                )
            for r in results:
                if not r.correct:
                    print(f"  session {r.index} ({r.image}): shown {r.shown!r} expected {r.expected!r} {r.errors}")
            if server:
                data = sum(v for k, v in w["caches"].items() if k.startswith("st_cache_data"))
                big = sorted(w["caches"].items(), key=lambda kv: -kv[1])[:4]
                print(
                    f"  st.cache_data holds {data / 2**20:.1f} MiB in all; largest: "
                    + ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in big),
                    flush=True,
                )
    finally:
        if server_cm:
            server_cm.__exit__(None, None, None)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    ok = all(w["correct"] == args.sessions for w in report["waves"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
