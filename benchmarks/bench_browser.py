"""How the Attention page feels in a real browser: median time from an input to idle.

Starts `streamlit run app.py` (bundled model, sample cat), opens the Attention page in Debian's
Chromium (Playwright, the project's kit in tests/_browser_kit.py) and measures, for each input,
the time from the input to the last change of the page:

- slider: one arrow-key step of the focused "Layer" slider (alternately left and right);
- click: a click on a patch of the attention map (alternating between two patches);
- switch: a click on "Attention" in the sidebar navigation, coming from the Overview.

"Idle" is the moment of the last DOM mutation in the main area once the script run is over
and nothing has changed for `--quiet` ms (an input must change something; one that changes
nothing in 60 s counts as NaN): it includes sending the figures, plotly drawing them and
Streamlit's stale-element fading, which is what a user waits for. Times are read
off the page's own clock (performance.now), so the polling interval does not add to them.

With `--ref GIT_REV` the same measurements run, interleaved round by round, on a `git
worktree` of that revision too (e.g. the commit before a change): both apps share the
machine's load at the same moments, so the two medians compare fairly on a busy machine.

With `--lab` it measures instead a click on the knockout grid of "Which map to trust" (issue 18's
"a knockout click < 0.3 s"): each click toggles one head, so the rounds alternate knocked out / back.

Run:   python benchmarks/bench_browser.py [--rounds 9] [--ref HEAD~3] [--width 1400] [--lab]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests._browser_kit import CHROMIUM, CHROMIUM_ARGS, SCRIPT_IDLE, free_port  # noqa: E402

ACTIONS = ("slider", "click", "switch")
# Records the page-clock time of every mutation under the main area.
OBSERVER_JS = """() => {
  window.__lastMutation = performance.now();
  window.__mutations = 0;
  const target = document.querySelector('[data-testid="stMain"]') || document.body;
  if (window.__obs) window.__obs.disconnect();
  window.__obs = new MutationObserver((ms) => { window.__lastMutation = performance.now(); window.__mutations += ms.length; });
  window.__obs.observe(target, {subtree: true, childList: true, attributes: true, characterData: true});
}"""


@contextlib.contextmanager
def serve(root: Path, log: Path) -> Iterator[str]:
    """`streamlit run app.py` in `root` on a free port; yields its URL."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
    cmd += ["--server.port", str(port), "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 120
            while True:
                try:
                    with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"streamlit in {root} did not start; see {log}")
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """A detached `git worktree` of `rev` in a temporary folder, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="bench_ref_")) / "app"
    subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=ROOT, check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, capture_output=True)


class AttentionPage:
    """One browser tab on one app, driven to the Attention page."""

    def __init__(self, browser, url: str, width: int, quiet_ms: int) -> None:
        self.pg = browser.new_page(viewport={"width": width, "height": 1000})
        self.quiet_ms = quiet_ms
        self.received = 0  # bytes the server sent over the websocket (figures, elements)
        self.pg.on("websocket", lambda ws: ws.on("framereceived", self._count))
        self.pg.goto(url)
        self._wait_idle(timeout_s=300)  # the first run loads the model: slow on a busy machine
        self.switch()  # opens the page and warms the caches
        self.n = {a: 0 for a in ACTIONS}

    def _count(self, payload: bytes | str) -> None:
        self.received += len(payload)

    def _wait_idle(self, timeout_s: float = 180.0) -> None:
        self.pg.wait_for_selector(SCRIPT_IDLE, timeout=timeout_s * 1000)

    def _measure(self, act) -> float:
        """Seconds from `act()` to the last mutation, once the run is over and the page is quiet;
        the bytes received and DOM mutations it caused go to `self.last_cost`."""
        self.pg.evaluate(OBSERVER_JS)
        sent = self.received
        t0 = self.pg.evaluate("() => performance.now()")
        act()
        time.sleep(0.05)
        deadline = time.time() + 60
        while time.time() < deadline:
            self._wait_idle()
            changed, quiet = self.pg.evaluate("() => [window.__mutations, performance.now() - window.__lastMutation]")
            if changed and quiet >= self.quiet_ms:
                break
            time.sleep(max(0.02, (self.quiet_ms - quiet) / 1000))
        else:
            return float("nan")
        self.last_cost = (self.received - sent, self.pg.evaluate("() => window.__mutations"))
        return (self.pg.evaluate("() => window.__lastMutation") - t0) / 1000

    def _nav(self, label: str) -> None:
        self.pg.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=label, exact=True).click()

    def switch(self) -> float:
        self._nav("Overview")
        self._wait_idle()
        time.sleep(0.5)
        return self._measure(lambda: self._nav("Attention"))

    def slider(self) -> float:
        # the slider is found and focused before the clock starts: finding it by its role is
        # Playwright's work in the page (10-20 ms), not something a user waits for
        self.pg.get_by_role("slider", name="Layer").first.focus()
        key = "ArrowLeft" if self.n["slider"] % 2 == 0 else "ArrowRight"
        return self._measure(lambda: self.pg.keyboard.press(key))

    def click(self) -> float:
        # the picture of ui.picker; a revision before it drew the map with plotly
        target = self.pg.locator(".st-key-attn_image .vx-stage img, .js-plotly-plot .nsewdrag").first
        target.scroll_into_view_if_needed()  # below the fold in a narrow window: a click there would miss it
        box = target.bounding_box()
        side = min(box["width"], box["height"])
        x0, y0 = box["x"] + (box["width"] - side) / 2, box["y"] + (box["height"] - side) / 2
        f = (0.3, 0.4) if self.n["click"] % 2 == 0 else (0.7, 0.6)
        x, y = x0 + side * f[0], y0 + side * f[1]
        self.pg.mouse.move(x, y)
        time.sleep(0.2)
        return self._measure(lambda: self.pg.mouse.click(x, y))

    def run(self, action: str) -> tuple[float, int, int]:
        """(seconds to idle, bytes received, DOM mutations) of one input."""
        self.last_cost = (0, 0)
        t = getattr(self, action)()
        self.n[action] += 1
        return (t, *self.last_cost)


class LabPage(AttentionPage):
    """One tab on "Which map to trust": a click on the knockout grid toggles head (2, 2) of layer 2."""

    def __init__(self, browser, url: str, width: int, quiet_ms: int) -> None:
        self.pg = browser.new_page(viewport={"width": width, "height": 1000})
        self.quiet_ms = quiet_ms
        self.received = 0
        self.pg.on("websocket", lambda ws: ws.on("framereceived", self._count))
        self.pg.goto(url)
        self._wait_idle(timeout_s=300)
        self._nav(LAB)
        self._wait_idle(timeout_s=900)  # the lab's first run computes every curve
        self.n = {"knockout": 0}

    def knockout(self) -> float:
        # the picture of ui.picker; a revision before it drew the grid with plotly
        grid = self.pg.locator(".st-key-lab_heads .vx-stage img, .st-key-lab_heads .js-plotly-plot .nsewdrag").first
        grid.scroll_into_view_if_needed()
        time.sleep(0.3)
        box = grid.bounding_box()
        rows, cols = LAB_GRID
        x, y = box["x"] + box["width"] * 1.5 / cols, box["y"] + box["height"] * 1.5 / rows
        self.pg.mouse.move(x, y)
        time.sleep(0.2)
        return self._measure(lambda: self.pg.mouse.click(x, y))


LAB = "Which map to trust"


def _bundled_grid() -> tuple[int, int]:
    """(layers, heads) of the bundled model: the knockout grid's rows and columns."""
    from vit_core import load_checkpoint

    cfg = load_checkpoint(ROOT / "assets" / "vit_cifar10.safetensors").cfg
    return cfg.depth, cfg.num_heads


LAB_GRID = _bundled_grid()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9, help="measurements per action and app")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first")
    ap.add_argument("--ref", help="also measure this git revision (a worktree), interleaved")
    ap.add_argument("--width", type=int, default=1400, help="browser window width in px")
    ap.add_argument("--quiet", type=int, default=400, help="ms without change that count as idle")
    ap.add_argument("--lab", action="store_true", help="only the knockout click on 'Which map to trust' (issue 18)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    logs = ROOT / "tests" / "artifacts"
    logs.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        apps = {"this tree": ROOT}
        if args.ref:
            rev = subprocess.run(
                ["git", "rev-parse", "--short", args.ref], cwd=ROOT, check=True, capture_output=True, text=True
            ).stdout.strip()
            apps[f"ref {rev}"] = stack.enter_context(worktree(args.ref))
        urls = {
            name: stack.enter_context(serve(root, logs / f"bench_browser_{i}.log"))
            for i, (name, root) in enumerate(apps.items())
        }
        p = stack.enter_context(sync_playwright())
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        stack.callback(browser.close)
        kind, actions = (LabPage, ("knockout",)) if args.lab else (AttentionPage, ACTIONS)
        pages = {name: kind(browser, url, args.width, args.quiet) for name, url in urls.items()}
        times: dict[str, dict[str, list[tuple[float, int, int]]]] = {name: {a: [] for a in actions} for name in pages}
        for r in range(args.warmup + args.rounds):
            for action in actions:
                for name, page in pages.items():
                    t = page.run(action)
                    if r >= args.warmup:
                        times[name][action].append(t)
        where = f"'{LAB}' (knockout grid)" if args.lab else "Attention page"
        print(f"{where}, bundled model, sample image, {args.width} px wide; {args.rounds} rounds")
        print(
            "seconds from input to idle: median [min - max]; then the median kB received and DOM mutations "
            f"(independent of the machine's load); load average {os.getloadavg()[0]:.1f}"
        )
        for name, per in times.items():
            cells = []
            for a, v in per.items():
                ok = [t for t, _, _ in v if t == t]  # NaN: the input changed nothing within 60 s
                lost = f", {len(v) - len(ok)} NaN" if len(ok) < len(v) else ""
                kb = statistics.median(b for _, b, _ in v) / 1000 if v else 0.0
                muts = statistics.median(m for _, _, m in v) if v else 0
                if ok:
                    cells.append(
                        f"{a} {statistics.median(ok):.3f} s [{min(ok):.2f}-{max(ok):.2f}{lost}] {kb:.0f} kB {muts:.0f} mut"
                    )
            print(f"  {name:>14}: " + " · ".join(cells))


if __name__ == "__main__":
    main()
