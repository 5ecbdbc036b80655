"""Retake the README's screenshots (docs/screenshots/*.png) from the running app.

    python docs/make_screenshots.py          # needs Chromium at /usr/bin/chromium and playwright

Starts `streamlit run app.py` on a free port (offline, like the browser tests), opens each page
in Chromium in a 1500-px-wide window with the bundled model and the default sample image, and
saves the top of each page scaled to 1100 px wide (and the rollout and class-map sections at
the same scale); on the Attention page it first clicks patch 17 (row 2, column 1) so the
query is a patch, not [CLS]. Rerun it whenever the bundled model or the pages change, and look
at the pictures before committing them.
"""

from __future__ import annotations

import io
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests._browser_kit import CHROMIUM, CHROMIUM_ARGS, idle, map_point, streamlit_server  # noqa: E402
from tests._browser_kit import go_to as _go_to  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
WIDTH = 1500  # browser window
SAVED_WIDTH = 1100  # pictures are scaled to this width
# file name -> (navigation label, height of the top of the page kept, in window pixels)
PAGES = {
    "overview.png": ("Overview", 1330),
    "patches.png": ("Patches", 1500),
    "positions.png": ("Position embeddings", 1780),
    "prediction.png": ("Prediction", 1045),
}
ATTENTION_HEIGHT = 1080
QUERY_ROW, QUERY_COL = 2, 1  # the patch clicked on the Attention page


def go_to(pg, label: str) -> None:
    _go_to(pg, label, settle=0.8, timeout_ms=120_000)
    if pg.locator('[data-testid="stException"]').count():
        raise SystemExit(f"the {label} page shows an exception; not taking its screenshot")


def save(png: bytes, path: Path) -> None:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    scale = SAVED_WIDTH / WIDTH
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    img.save(path, optimize=True)
    print(f"wrote {path.relative_to(ROOT)} {img.size[0]}x{img.size[1]}")


def top_of_page(pg, path: Path, height: int) -> None:
    pg.set_viewport_size({"width": WIDTH, "height": height})
    time.sleep(1.0)  # charts re-layout after a resize
    save(pg.screenshot(), path)


def click_query_patch(pg) -> None:
    """Click patch (QUERY_ROW, QUERY_COL) of the first attention map; the grid comes from the sidebar."""
    gh, gw = map(int, re.search(r"grid (\d+)x(\d+)", pg.locator('[data-testid="stSidebar"]').inner_text()).groups())
    x, y = map_point(pg, (QUERY_COL + 0.5) / gw, (QUERY_ROW + 0.5) / gh)
    pg.mouse.move(x, y)
    time.sleep(0.3)
    pg.mouse.click(x, y)
    patch = QUERY_ROW * gw + QUERY_COL
    pg.wait_for_function(
        "n => [...document.querySelectorAll('[data-testid=\"stMarkdownContainer\"]')]"
        ".some(e => e.innerText.startsWith('Query: patch ' + n))",
        arg=patch,
        timeout=120_000,
    )
    idle(pg, settle=0.8, timeout_ms=120_000)


def attention_maps(pg, path: Path) -> None:
    """The rollout and class-specific sections of the Attention page, without the sidebar."""
    pg.set_viewport_size({"width": WIDTH, "height": 1000})
    time.sleep(0.5)
    main = '[data-testid="stMain"]'
    full = pg.evaluate(f"() => document.querySelector('{main}').scrollHeight")
    pg.set_viewport_size({"width": WIDTH, "height": int(min(full + 40, 9000))})
    time.sleep(1.5)
    heads = pg.locator(f"{main} h3")  # st.subheader
    titles = [t.strip() for t in heads.all_inner_texts()]
    first = next(i for i, t in enumerate(titles) if t.startswith("Attention rollout"))
    last = next(i for i, t in enumerate(titles) if t.startswith("Class-specific map"))
    top = heads.nth(first).bounding_box()
    container = pg.locator(f"{main} [data-testid='stMainBlockContainer']")
    block = (container if container.count() else pg.locator(main)).bounding_box()
    bottom = heads.nth(last + 1).bounding_box()["y"] if last + 1 < len(titles) else block["y"] + block["height"]
    clip = {"x": block["x"], "y": top["y"] - 16, "width": block["width"], "height": bottom - top["y"]}
    save(pg.screenshot(clip=clip), path)


def main() -> int:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        print(f"needs Chromium at {CHROMIUM}", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    with streamlit_server("screenshots.log") as srv, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for scheme in ("light", "dark"):
            ctx = browser.new_context(color_scheme=scheme, viewport={"width": WIDTH, "height": 1000})
            pg = ctx.new_page()
            pg.goto(srv.url)
            idle(pg, settle=0.8, timeout_ms=120_000)
            if scheme == "light":
                for name, (label, height) in PAGES.items():
                    go_to(pg, label)
                    top_of_page(pg, OUT / name, height)
                go_to(pg, "Attention")
                pg.set_viewport_size({"width": WIDTH, "height": 1000})
                click_query_patch(pg)
                top_of_page(pg, OUT / "attention.png", ATTENTION_HEIGHT)
                attention_maps(pg, OUT / "attention_maps.png")
            else:
                go_to(pg, "Attention")
                click_query_patch(pg)
                top_of_page(pg, OUT / "attention_dark.png", ATTENTION_HEIGHT)
            ctx.close()
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
