"""How fast the explorer's pages react: the cached compute functions + figure builders, no browser.

    python benchmarks/bench_pages.py [--repeats 5] [--threads N]

Each page is replayed as its storyboard: the compute calls (ui/compute.py, the same cached
functions the page calls, with the page's default settings) and every figure builder the page
draws. Timed, median of --repeats:
  * new image: a never-seen image (cache miss: preprocessing, one forward pass, every
    analysis) to every figure of each page, on the bundled CIFAR-10 model (target < 0.3 s);
  * slider change: the trace is cached; one setting changes (layer, head, query, discard
    ratio, start layer, occluded patch, top-k, ...) and the page's affected work is redone
    (target < 0.15 s);
  * ViT-B/16 (random weights, 224x224): the first image, every figure of each page (target < 3 s).
Threads: as the app sets them (vit_core.threads: one thread up to ViT-B size), or a fixed
--threads N. --compare-threads times every new-image page with 1 thread
and with torch's default, alternating sample by sample, and prints the ratio.
The bundled model is assets/vit_cifar10.safetensors; if it is missing, the untrained
CIFAR-sized ViT the app falls back to (same architecture) is used, and the output says so.
Streamlit's caches run in memory without a server (cache hits copy results as they would in
the app). Plotly's one-off import of its validators is warmed up first, as in a running app.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import streamlit.logger  # noqa: E402

streamlit.logger.set_log_level("error")  # no "No runtime found" / "missing ScriptRunContext" per call

import vit_plots as vp  # noqa: E402
from ui import compute  # noqa: E402
from ui.images import ImageChoice  # noqa: E402
from ui.models import BUNDLED_PATH, LoadedModel, untrained_cifar_model  # noqa: E402
from ui.selection import Current, Prepared  # noqa: E402
from vit_core import VisionTransformer, ViTConfig, load_checkpoint  # noqa: E402
from vit_core.threads import _DEFAULT_THREADS, use_inference_threads  # noqa: E402


class Page:
    """The model + image a page works on (`cur`, what the page hands to ui.compute), and its shapes."""

    def __init__(self, model: VisionTransformer, model_id: str, data: bytes) -> None:
        loaded = LoadedModel(model, model_id, "bench", model_id)
        image = ImageChoice("bench image", data, uuid.uuid4().hex, "upload")  # a fresh key: nothing cached for it
        self.cur = Current(loaded, image, compute.prepare(loaded, image))
        t = self.prep.trace
        self.grid, self.P, self.k = t.grid, t.patch_size, t.num_prefix_tokens
        self.n = self.grid[0] * self.grid[1]
        self.L, self.h = t.num_layers, t.attentions.shape[2]
        self.names = model.class_names

    @property
    def prep(self) -> Prepared:
        return self.cur.prep


def overview(p: Page) -> list:
    params = compute.stage_params(p.cur)
    stages = [vp.Stage(name, "1 x 1", "", f"{v:,}") for name, v in params.items()]
    return [
        vp.pipeline_figure(stages[:6]),
        vp.crop_figure(p.prep.thumbnail, p.prep.crop_box),
        vp.image_figure(p.prep.resized),
        vp.topk_figure(p.prep.probs, p.names, 5),
    ]


def patches(p: Page, pick: int = 0, try_p: int | None = None) -> list:
    H, W = p.prep.x.shape[-2:]
    m = compute.patch_matrix(p.cur)
    r, c = divmod(pick, p.grid[1])
    try_p = try_p or p.P
    sizes = [s for s in range(1, min(H, W) + 1) if H % s == 0 and W % s == 0 and (H // s) * (W // s) <= 4096]
    return [
        vp.patch_grid_figure(p.prep.display, p.grid, p.P, selected=pick),
        vp.image_figure(p.prep.display[r * p.P : (r + 1) * p.P, c * p.P : (c + 1) * p.P], height=200),
        compute.patch_animation(p.cur),
        vp.patch_matrix_figure(m, 3, p.P),
        vp.patch_grid_figure(
            p.prep.display, (H // try_p, W // try_p), try_p, numbers=(H // try_p) * (W // try_p) <= 256, height=340
        ),
        vp.patch_size_figure(vp.patch_size_whatif((H, W), sizes, p.k), current=try_p),
    ]


def embeddings(p: Page, filters_view: str = "pca") -> list:
    cl = compute.conv_vs_linear(p.cur)
    f = compute.filters(p.cur)
    tv = compute.token_views(p.cur)
    colours = compute.patch_colours(p.cur)
    labels = ["embedding"] + [f"block {i}" for i in range(1, p.L + 1)]
    filt = f["pca"] if filters_view == "pca" else f["raw"]
    return [
        vp.conv_linear_figure(cl["conv"], cl["linear"]),
        vp.filters_figure(filt, [str(i) for i in range(len(filt))]),
        vp.token_pca_figure(tv["rgb"], labels, cols=min(7, p.L + 1)),
        vp.token_scatter_figure(tv["xy"], np.clip(colours, 0, 1), labels, p.grid),
    ]


def positions(p: Page, patch: int = 0, seed: int = 0) -> list:
    sim = compute.position_similarity(p.cur)
    r, c = divmod(patch, p.grid[1])
    res = compute.shuffled(p.cur, seed)
    runs = {"original": p.prep.probs, "kept": res["kept"], "moved": res["moved"], "none": res["no_pos"]}
    return [
        vp.similarity_tiles_figure(sim, selected=patch),
        vp.similarity_map_figure(sim[r, c], patch),
        vp.image_figure(p.prep.display, height=260),
        vp.image_figure(res["display"], height=260),
        vp.compare_figure(runs, p.names, list(vp.top_k(p.prep.probs, 5))),
    ]


def attention(
    p: Page,
    layer: int | None = None,
    head: int | str = "mean",
    query: int = 0,
    discard: float = 0.0,
    start: int = 0,
    target: int | None = None,
    mass: float = 0.6,
) -> list:
    layer = p.L - 1 if layer is None else layer
    gh, gw = p.grid
    A = p.prep.trace.attentions[0, layer].numpy()
    row = A.mean(0)[query] if head == "mean" else A[head, query]
    steps = compute.head_steps(p.cur, layer, 0 if head == "mean" else int(head), query)
    roll = compute.rollout(p.cur, "mean", discard, start)
    target = int(np.argmax(p.prep.probs)) if target is None else target
    cmap = compute.class_map(p.cur, target)
    hm = compute.head_maps(p.cur)
    dino = compute.last_heads(p.cur, mass)
    qpatch = query - p.k if query >= p.k else None
    return [
        vp.overlay_figure(p.prep.display, row[p.k :].reshape(gh, gw), p.grid, p.P, vmin=0, selected=qpatch),
        vp.heads_figure(A[:, query, p.k :].reshape(p.h, gh, gw), query=qpatch),
        vp.head_steps_figure(steps["scores"], steps["weights"], steps["output"], p.grid, p.k),
        vp.overlay_figure(p.prep.display, roll, p.grid, p.P, vmin=0),
        vp.overlay_figure(p.prep.display, cmap, p.grid, p.P),
        vp.heads_figure(dino),
        vp.mean_distance_figure(hm["distance"], image_extent=float(max(p.prep.x.shape[-2:]))),
        vp.entropy_figure(hm["entropy"], max_entropy=float(np.log(p.n + p.k))),
    ]


def prediction(p: Page, top_n: int = 5, occluded: tuple[int, ...] = (), mode: str = "mean") -> list:
    lens = compute.logit_lens(p.cur)
    top5 = list(vp.top_k(p.prep.probs, 5))
    roll = compute.rollout(p.cur, "mean", 0.0, 0)
    _ = roll.reshape(-1).argsort()[::-1][: max(1, p.n // 10)]
    res = compute.occluded(p.cur, tuple(sorted(occluded)), mode)
    return [
        vp.topk_figure(p.prep.probs, p.names, k=top_n),
        vp.logit_lens_figure(lens, p.names, top5),
        vp.patch_grid_figure(res["display"], p.grid, p.P, numbers=False, marked=list(occluded)),
        vp.compare_figure({"original": p.prep.probs, "hidden": res["probs"]}, p.names, top5),
    ]


PAGES: dict[str, Callable[..., list]] = {
    "overview": overview,
    "patches": patches,
    "embeddings": embeddings,
    "positions": positions,
    "attention": attention,
    "prediction": prediction,
}

# one setting changed on a page whose trace is cached: (label, page, keyword arguments)
SLIDERS: list[tuple[str, str, Callable[[Page], dict]]] = [
    ("patches: pick another patch", "patches", lambda p: {"pick": p.n // 2}),
    (
        "patches: try another patch size",
        "patches",
        lambda p: {"try_p": p.P * 2 if (p.prep.x.shape[-1] % (p.P * 2) == 0) else 1},
    ),
    ("embeddings: raw filters", "embeddings", lambda p: {"filters_view": "raw"}),
    ("positions: click a tile", "positions", lambda p: {"patch": p.n - 1}),
    ("positions: shuffle seed", "positions", lambda p: {"seed": 7}),
    ("attention: layer slider", "attention", lambda p: {"layer": 0}),
    ("attention: head", "attention", lambda p: {"head": 1}),
    ("attention: click a query patch", "attention", lambda p: {"query": p.k + p.n // 3}),
    ("attention: discard ratio", "attention", lambda p: {"discard": 0.9}),
    ("attention: start layer", "attention", lambda p: {"start": 1}),
    ("attention: class for the map", "attention", lambda p: {"target": int(np.argsort(p.prep.probs)[-2])}),
    ("attention: DINO mass slider", "attention", lambda p: {"mass": 0.3}),
    ("prediction: top-k slider", "prediction", lambda p: {"top_n": 8}),
    ("prediction: occlude a patch", "prediction", lambda p: {"occluded": (0,)}),
    ("prediction: drop tokens", "prediction", lambda p: {"occluded": (0, 1), "mode": "drop"}),
]


def image_bytes(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A different photo-like image per seed (smooth blobs + noise), as PNG bytes."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    a = np.zeros((h, w, 3))
    for _ in range(4):
        cx, cy, r = rng.random(3)
        a += rng.random(3) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.05 + 0.2 * r))[..., None]
    a = np.clip(a / a.max() + 0.05 * rng.standard_normal(a.shape), 0, 1)
    buf = io.BytesIO()
    Image.fromarray((a * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and process-CPU seconds of `fn()`.

    On a shared machine the wall time includes waiting for a core; CPU time is what the work
    itself costs (with one torch thread, about the wall time on an idle machine)."""
    c, t = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def median2(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def new_image(model: VisionTransformer, model_id: str, name: str, seed: int) -> tuple[float, float]:
    """A page from a never-seen image: preprocessing + forward + analyses + figures."""
    data = image_bytes(seed * 100 + sum(map(ord, name)) % 97)
    return timed(lambda: PAGES[name](Page(model, model_id, data)))


def bench_new_image(model: VisionTransformer, model_id: str, repeats: int) -> dict[str, tuple[float, float]]:
    return {name: median2([new_image(model, model_id, name, r) for r in range(repeats)]) for name in PAGES}


def bench_sliders(model: VisionTransformer, model_id: str, repeats: int) -> dict[str, tuple[float, float]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for r in range(repeats):
        base = Page(model, model_id, image_bytes(10_000 + r))
        for name in PAGES:
            PAGES[name](base)  # the page as first drawn: everything for this image is cached
        for label, page, kwargs in SLIDERS:
            # a rerun: the cached preparation is fetched again (a copy), then the page is redone
            def rerun(page=page, kwargs=kwargs, base=base):
                p = Page.__new__(Page)
                p.__dict__.update(base.__dict__)
                cur = base.cur
                p.cur = Current(cur.loaded, cur.image, compute.prepare(cur.loaded, cur.image))
                return PAGES[page](p, **kwargs(p))

            out.setdefault(label, []).append(timed(rerun))
    return {k: median2(v) for k, v in out.items()}


def compare_threads(model: VisionTransformer, model_id: str, repeats: int, seed0: int) -> None:
    """Every page from a new image with 1 thread and with the default, sample by sample."""
    counts = sorted({1, _DEFAULT_THREADS})
    walls: dict[tuple[str, int], list[float]] = {}
    for r in range(repeats):
        for i, name in enumerate(PAGES):
            for n in counts if r % 2 == 0 else counts[::-1]:
                torch.set_num_threads(n)
                walls.setdefault((name, n), []).append(
                    new_image(model, model_id, name, seed0 + 100 * r + 10 * i + n)[0]
                )
    head = "  ".join(f"{n} thread{'s' if n > 1 else ''}" for n in counts)
    print(f"    {'page':<11s} {head}  (median wall s)  ratio {counts[-1]}/{counts[0]}")
    for name in PAGES:
        med = [statistics.median(walls[(name, n)]) for n in counts]
        print(f"    {name:<11s} " + "  ".join(f"{m:9.3f}" for m in med) + f"  {med[-1] / med[0]:23.2f}")


def report(rows: dict[str, tuple[float, float]], target: float, width: int) -> float:
    worst = 0.0
    for name, (wall, cpu) in rows.items():
        worst = max(worst, wall)
        print(f"    {name:<{width}s} {wall:6.3f} s wall {cpu:6.3f} s cpu  {'ok' if wall < target else 'SLOW'}")
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="fixed torch threads (0: as the app sets them per model)")
    ap.add_argument("--compare-threads", action="store_true", help="also time 1 thread against the default")
    args = ap.parse_args(argv)

    def set_threads(m: VisionTransformer) -> int:
        if args.threads:
            torch.set_num_threads(args.threads)
            return args.threads
        return use_inference_threads(m)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, default {_DEFAULT_THREADS} threads, {os.cpu_count()} cores, load average {load:.1f}; median of {args.repeats}"
    )

    if BUNDLED_PATH.exists():
        model, model_id, label = load_checkpoint(BUNDLED_PATH), "bench:bundled", "bundled CIFAR-10 model"
    else:
        model, model_id, label = (
            untrained_cifar_model(),
            "bench:untrained",
            "untrained CIFAR-sized fallback (bundled model missing)",
        )
    cfg = model.cfg
    print(
        f"\n{label}: {model.num_params() / 1e6:.2f} M params, {cfg.img_size[0]}x{cfg.img_size[1]}, patch {cfg.patch_size}, {cfg.depth} layers, {cfg.num_heads} heads"
    )
    print(f"  threads: {set_threads(model)}")
    PAGES["overview"](Page(model, model_id, image_bytes(99_999)))  # warm-up: plotly, torch kernels
    print("  new image -> every figure of the page (target < 0.30 s):")
    worst = report(bench_new_image(model, model_id, args.repeats), 0.3, 11)
    print("  slider change, trace cached (target < 0.15 s):")
    worst_s = report(bench_sliders(model, model_id, args.repeats), 0.15, 34)
    if args.compare_threads:
        print("  new image, 1 thread against the default (alternating):")
        compare_threads(model, model_id, args.repeats, 50_000)
        set_threads(model)

    torch.manual_seed(0)
    vitb = VisionTransformer(ViTConfig(name="ViT-B/16 (random weights)")).eval()  # 224, patch 16, 12 x 12 heads
    print(f"\nViT-B/16, random weights: {vitb.num_params() / 1e6:.1f} M params, 224x224, 196 patches")
    print(f"  threads: {set_threads(vitb)}")
    photo = (ROOT / "assets" / "samples" / "photos" / "chelsea_cat.jpg").read_bytes()
    wall, cpu = timed(lambda: Page(vitb, "bench:vitb", photo))
    print(f"  first image, preprocessing + traced forward pass: {wall:6.3f} s wall {cpu:6.3f} s cpu")
    print("  first image -> every figure of the page (target < 3 s):")
    worst_b = report({name: new_image(vitb, "bench:vitb", name, 1000 + i) for i, name in enumerate(PAGES)}, 3.0, 11)
    if args.compare_threads:
        print("  first image, 1 thread against the default (alternating):")
        compare_threads(vitb, "bench:vitb", 1, 60_000)
    print(f"\nworst wall: new image {worst:.3f} s, slider {worst_s:.3f} s, ViT-B/16 first image {worst_b:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
