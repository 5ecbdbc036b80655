"""Cost of the faithfulness lab (issue 18) on this machine: deletion/insertion curves, head
importance, one knockout forward, the per-patch logit lens and the randomisation cascade.

Targets from the issue (2-core CPU, bundled model): every curve of every method for one image
< 2 s; head importance over 1,000 test images < 60 s; a knockout click < 0.3 s. This prints
figures only; nothing is asserted.

Six maps, as the lab shows them: last-layer CLS attention (mean of heads), rollout, the
class-specific map (Chefer), occlusion sensitivity (one forward per patch), input x gradient,
and a random ranking. Their computation is timed apart from the curves. The ViT-B/16 section
(random weights) uses six random rankings instead, times one map's curves and scales by 6.

Run:  python benchmarks/bench_faithfulness.py [--data cifar-10-batches-py/] [--images 1000] [--reps 3]
                                              [--threads N] [--vit-b] [--vit-b-images 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vit_core import VisionTransformer, ViTConfig, load_checkpoint, load_image, preprocess  # noqa: E402
from vit_core import analysis as A  # noqa: E402


def timed(fn: Callable[[], object], reps: int) -> tuple[float, object]:
    """Median seconds over `reps` calls (after a warm-up call when reps > 1), and the last result."""
    out = fn() if reps > 1 else None
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def line(label: str, seconds: float, note: str = "") -> None:
    print(f"  {label:<52}{seconds * 1e3:10.1f} ms" + (f"   ({note})" if note else ""))


def six_maps(model: VisionTransformer, x: torch.Tensor, target: int) -> tuple[list[str], torch.Tensor]:
    """(6, n) saliency maps of the lab's methods for one image."""
    k = model.num_prefix_tokens
    tr = model.trace(x)
    grid = tr.grid
    n = grid[0] * grid[1]
    raw = tr.attentions[0, -1, :, 0, k:].mean(0)
    rollout = A.rollout_cls_map(tr.attentions, grid, k)[0].reshape(-1)
    chefer = A.class_attention_map(model, x, target)[0].reshape(-1)
    with torch.no_grad():
        p0 = model(x).softmax(-1)[0, target]
        occluded = torch.cat([A.occlude_image(x, [i], model.patch_size) for i in range(n)])
        occlusion = p0 - model(occluded).softmax(-1)[:, target]
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        model(xg)[0, target].backward()
    ixg = A.patchify((xg.grad * x).sum(1, keepdim=True), model.patch_size).sum(-1)[0].detach()
    rand = A.random_saliencies(n, 1, seed=0)[0]
    names = ["raw attention", "rollout", "class-specific", "occlusion", "input x gradient", "random"]
    return names, torch.stack([m.double() for m in (raw, rollout, chefer, occlusion, ixg, rand)])


def labelled_images(model: VisionTransformer, data: str | None, count: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """`count` preprocessed images with labels: CIFAR-10 test images, or synthetic noise."""
    from vit_core.data import load_cifar10_batches

    try:
        from vit_core.batches import normalize_batch
    except ImportError:  # before batching moved out of vit_core.data
        from vit_core.data import normalize_batch

    cfg = model.cfg
    if data:
        ds = load_cifar10_batches(data, split="test")
        images, labels = ds.images[:count], ds.labels[:count]
        if tuple(images.shape[-2:]) != tuple(cfg.img_size):
            raise SystemExit(f"the data's images are {tuple(images.shape[-2:])}, the model wants {cfg.img_size}")
        note = f"{len(images)} CIFAR-10 test images from {data}"
    else:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (count, cfg.in_chans, *cfg.img_size), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, cfg.num_classes, (count,), generator=g)
        note = f"{count} synthetic noise images with random labels (no --data given): timing only, drops meaningless"
    return normalize_batch(images, cfg.mean, cfg.std), labels, note


def report(
    model: VisionTransformer, x: torch.Tensor, args: argparse.Namespace, importance_images: int, full: bool = True
) -> None:
    """Print every figure for one model; `full=False` skips the alternative curve timings (ViT-B)."""
    cfg = model.cfg
    gh, gw = cfg.grid_size
    n = gh * gw
    L, H = cfg.depth, cfg.num_heads
    print(f"model: {cfg.name}: {cfg.img_size[0]}x{cfg.img_size[1]}, patch {cfg.patch_size} ({n} patches), ", end="")
    print(f"depth {L}, {H} heads, width {cfg.embed_dim}, {model.num_params() / 1e6:.1f}M parameters")
    with torch.no_grad():
        target = int(model(x).argmax())
    t, _ = timed(lambda: model(x), args.reps)
    line("one forward (batch 1)", t)
    batch = x.repeat(A.faithfulness.CURVE_BATCH, 1, 1, 1)
    t_batch, _ = timed(lambda: model(batch), args.reps)
    per_img = t_batch / len(batch)
    line(f"batched forward, per image (batch {len(batch)})", per_img)
    curve_images = 6 * 2 * (n + 1)
    line(f"  -> the {curve_images} images of 6 maps' curves at that rate", per_img * curve_images)

    if full:
        t_maps, (names, maps) = timed(lambda: six_maps(model, x, target), 1)
        line(f"the six maps themselves (occlusion: {n} forwards)", t_maps)
    else:  # random weights: the methods' maps mean nothing, and curves cost the same for any map
        names, maps = [f"random {i}" for i in range(6)], A.random_saliencies(n, 6, seed=2)
    t1, _ = timed(lambda: A.deletion_insertion_curves(model, x, maps[0], target, k=1), args.reps)
    line(f"deletion + insertion, one map, k=1 ({2 * (n + 1)} images)", t1)
    if full:
        t12, _ = timed(
            lambda: (
                [A.deletion_curve(model, x, m, target) for m in maps],
                [A.insertion_curve(model, x, m, target) for m in maps],
            ),
            args.reps,
        )
        line("6 maps, 12 separate curve calls, k=1", t12)
        t6, (dele, ins) = timed(lambda: A.deletion_insertion_curves(model, x, maps, target, k=1), args.reps)
        line("6 maps, one deletion_insertion_curves call, k=1", t6, "issue target < 2 s")
        rand = A.random_saliencies(n, 5, seed=1)
        t5, _ = timed(lambda: A.deletion_insertion_curves(model, x, torch.cat([maps, rand]), target, k=1), 1)
        line("6 maps + 5 more random seeds (spread), k=1", t5)
    else:
        line("6 maps, k=1: 6 x one map (extrapolated)", 6 * t1)
    kk = max(1, n // 16)
    tk, curves_k = timed(lambda: A.deletion_insertion_curves(model, x, maps, target, k=kk), args.reps)
    line(f"6 maps, k={kk} ({-(-n // kk) + 1} points a curve)", tk)
    if not full:
        dele, ins = curves_k
    print(f"  areas on this image (class {target} '{model.class_names[target]}', k={1 if full else kk}):")
    fr = A.step_fractions(n, 1 if full else kk)
    for name, d, i in zip(names, dele, ins):
        print(f"    {name:<18} deletion {A.curve_area(d, fr):.3f}  insertion {A.curve_area(i, fr):.3f}")

    agree_t, _ = timed(lambda: A.agreement_matrix(maps), args.reps)
    line("agreement matrix of the 6 maps", agree_t)
    tr = model.trace(x)
    tl, _ = timed(lambda: A.patch_logit_lens(model, tr), args.reps)
    line(f"per-patch logit lens ({L + 1} x {n} x {cfg.num_classes})", tl)
    tc, _ = timed(lambda: [None for _ in A.randomise_cascade(model, seed=0)], 1)
    line(f"randomise_cascade, all {L + 3} copies (no maps)", tc)

    tk1, _ = timed(lambda: A.knockout_heads(model, x, [(L - 1, 0)]), args.reps)
    line("one knockout forward (1 head)", tk1, "issue target < 0.3 s")
    many = [(layer, h) for layer in range(L) for h in range(0, H, 2)]
    tkm, _ = timed(lambda: A.knockout_heads(model, x, many), args.reps)
    line(f"one knockout forward ({len(many)} heads)", tkm)
    with A.heads_knocked_out(model, [(L - 1, 0)]):
        tkt, _ = timed(lambda: model.trace(x, target=target), args.reps)
    line("knocked-out trace with gradients (class map)", tkt)

    images, labels, note = labelled_images(model, args.data, importance_images)
    print(f"  head importance over {note}")
    t0 = time.perf_counter()
    res = A.head_importance(model, images, labels)
    t_imp = time.perf_counter() - t0
    per_image = t_imp / len(images)
    print(f"    {t_imp:.2f} s for {len(images)} images ({per_image * 1e3:.1f} ms an image, {L * H} knockouts each)")
    print(f"    -> 1,000 images: {per_image * 1000:.1f} s   (issue target < 60 s for the bundled model)")
    top = torch.topk(res.logprob_drop.reshape(-1), min(3, L * H)).indices.tolist()
    print(f"    base accuracy {res.accuracy:.3f}; largest log-prob drops at (layer, head) ", end="")
    print(", ".join(f"({i // H}, {i % H}) {float(res.logprob_drop.reshape(-1)[i]):+.3f}" for i in top))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="the extracted CIFAR-10 folder cifar-10-batches-py/; default synthetic noise images")
    ap.add_argument("--images", type=int, default=1000, help="images for head importance (bundled model)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per timing (median)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--vit-b", action="store_true", help="also a randomly initialised ViT-B/16 at 224")
    ap.add_argument("--vit-b-images", type=int, default=4, help="images for ViT-B head importance (extrapolated)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} torch threads, CPU")
    print(f"load average (1, 5, 15 min) at start: {load} (other work on the machine slows every figure)")

    model = load_checkpoint(ROOT / "assets" / "vit_cifar10.safetensors").eval()
    x = preprocess(load_image(ROOT / "assets" / "samples" / "cifar10" / "cat.jpg"), model)
    print("image: assets/samples/cifar10/cat.jpg")
    with torch.inference_mode(False):
        report(model, x, args, args.images)

    if args.vit_b:
        print()
        torch.manual_seed(0)
        vitb = VisionTransformer(ViTConfig(name="ViT-B/16 (random init)")).eval()
        xb = preprocess(load_image(ROOT / "assets" / "samples" / "cifar10" / "cat.jpg"), vitb)
        args.data = None
        args.reps = 1  # a ViT-B curve set takes minutes on 2 cores
        report(vitb, xb, args, args.vit_b_images, full=False)


if __name__ == "__main__":
    main()
