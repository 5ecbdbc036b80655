"""A class opens the app at once: N concurrent browser sessions against one local server.

Each session is its own Playwright context (its own cookies and Streamlit session) in one
Chromium: it opens the app, uploads a different image through the sidebar widget, waits for
the prediction of that image, opens the Attention page and waits for all of its charts. The
prediction text each session shows is checked against vit_core's own computation for its image
(load_image -> preprocess -> model, no Streamlit, no caches).

Reported: latency per step and per session (p50, p95, max), the CPU seconds the app server
and the whole machine spent during each wave (the browsers share the machine here, unlike a
classroom where each student's browser runs on their own device), the server's resident memory
(VmRSS) after start, after one warm-up session and after each wave, and the bytes Streamlit
holds in each cache (/_stcore/metrics). With `--waves W` the whole thing runs W times
with new images each time: a bounded app reaches a plateau instead of growing per image.

Run:   python benchmarks/load_test.py --sessions 20 --waves 3 [--json out.json]
       python benchmarks/load_test.py --url http://host:8501   (an app that is already running)

tests/test_load.py runs a small version (4 sessions, one wave) in CI.
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
ATTENTION_CHARTS = 7
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
            f"document.querySelectorAll('.js-plotly-plot').length >= {ATTENTION_CHARTS}", timeout=TIMEOUT_MS
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=20, help="concurrent browser sessions per wave")
    ap.add_argument("--waves", type=int, default=1, help="waves of new sessions with new images")
    ap.add_argument("--url", help="an app already running (no memory figures then)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--direct", action="store_true", help="open /attention first (as tests/test_load.py does)")
    args = ap.parse_args(argv)

    report: dict = {"sessions": args.sessions, "waves": []}
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
