"""Cost of the analyses the app shows for one image, relative to one `model.trace`.

ViT-B/16 at 224x224, random weights, batch 1, CPU. Each repetition times, in a shuffled
order, one plain `model.trace(x)` and every analysis group once; medians over repetitions are
reported, so background load hits all groups alike.

Groups:
  views      everything computed from one trace (rollout + CLS map, mean attention distance,
             DINO heads, logit lens, token PCA colour + scatter, attention entropy, one
             head's step-by-step computation, patchify/patch boxes, conv vs linear)
  model      views that depend only on the weights (raw filters, filter PCA, position
             similarity): "cold" recomputes the filter PCA, "cached" reuses it (the library
             caches it per weight tensor; the app can also cache all three per model)
  chefer     one class_attention_map: a trace with a target (forward + backward) plus the
             relevance propagation; reported both whole and as its extra cost over a plain trace
  what-ifs   occlusion (mean colour), occlusion (drop tokens), one shuffle: a forward each

Run:  python benchmarks/bench_analysis.py [--reps 15] [--threads N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vit_core import VisionTransformer, ViTConfig  # noqa: E402
from vit_core import analysis as A  # noqa: E402


def groups(model: VisionTransformer, x: torch.Tensor, trace) -> dict[str, Callable[[], object]]:
    grid, k, P = trace.grid, trace.num_prefix_tokens, trace.patch_size
    L = trace.num_layers

    def views() -> None:
        A.patchify(x, P)
        A.patch_boxes(grid, P)
        A.conv_vs_linear(model, x)
        A.attention_rollout(trace.attentions, "mean", 0.0, 0, k)
        A.rollout_cls_map(trace.attentions, grid, k, "max", 0.9)
        A.mean_attention_distance(trace.attentions, grid, P, k)
        A.last_layer_heads(trace.attentions, grid, k, mass=0.6)
        A.logit_lens(model, trace)
        A.token_pca_rgb(trace.hidden_states, L // 2, grid, k)
        A.token_pca(trace.hidden_states, L // 2, k, k=2)
        A.attention_entropy(trace.attentions)
        A.head_computation(model, trace, L - 1, 0, 0)

    def model_views() -> None:
        A.embedding_filters(model)
        A.embedding_filters_pca(model, 28)
        A.position_similarity(model)

    def chefer() -> None:
        A.class_attention_map(model, x, int(trace.logits.argmax()))

    def whatifs() -> None:
        A.occlude_patches(model, x, list(range(0, 40)), "mean")
        A.occlude_patches(model, x, list(range(0, 40)), "drop")
        A.shuffle_patches(model, x, keep_positions=False)

    return {
        "trace": lambda: model.trace(x),
        "trace+target": lambda: model.trace(x, target=0),
        "views": views,
        "model views": model_views,
        "chefer": chefer,
        "what-ifs": whatifs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig()).eval()  # ViT-B/16, 224, 1000 classes
    x = torch.randn(1, 3, 224, 224)
    trace = model.trace(x)
    tasks = groups(model, x, trace)
    for fn in tasks.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in tasks}
    order = list(tasks)
    rng = random.Random(0)
    for _ in range(args.reps):
        rng.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            tasks[name]()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) for name, v in times.items()}
    base = med["trace"]
    print(f"ViT-B/16 224, batch 1, CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.reps} reps")
    print(f"{'group':<14}{'median ms':>10}{'x trace':>9}")
    for name in tasks:
        print(f"{name:<14}{med[name] * 1e3:>10.1f}{med[name] / base:>9.3f}")
    chefer_extra = med["chefer"] - base
    views, cold, cached = med["views"], med["model cold"], med["model cached"]
    totals = {
        "views + model views, cached (per image)": views + cached,
        "views + model views, cold (first image)": views + cold,
        "  + chefer's extra over a plain trace": views + cold + chefer_extra,
        "  + whole chefer (own trace) + what-ifs": views + cold + med["chefer"] + med["what-ifs"],
    }
    print()
    for label, t in totals.items():
        print(f"{label:<42}{t * 1e3:>9.1f} ms {t / base:>7.3f}x trace")


if __name__ == "__main__":
    main()
