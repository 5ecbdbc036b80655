"""ViT-B/16 at 224, batch 1, CPU: what observing the model costs, and how we compare with
Hugging Face transformers' ViT (sdpa attention) on the same weights.

    python benchmarks/bench_model.py [--repeats 15] [--threads N]

Prints, from interleaved runs (median of `--repeats`):
  * `trace(x)` / `model(x)` time (target <= 1.3), and `trace(x, target=c)` / `model(x)`;
  * `model(x)` / transformers `ViTForImageClassification(x)` with sdpa (<= 1.0: ours no slower);
  * peak resident memory added by one `model(x)`, `trace(x)` and `trace(x, target=c)`, each
    measured in a fresh subprocess as the growth of `ru_maxrss` over a warmed-up baseline.
Weights are random (a transformers model saved and loaded through `load_checkpoint`), which
does not change the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vit_core import VisionTransformer, load_checkpoint  # noqa: E402

ViTB16 = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    image_size=224,
    patch_size=16,
    num_labels=1000,
    layer_norm_eps=1e-6,
)


def build_pair(folder: Path) -> tuple[VisionTransformer, torch.nn.Module]:
    """Our ViT-B/16 and transformers' (sdpa) with identical weights."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(**ViTB16, attn_implementation="sdpa")
    hf = transformers.ViTForImageClassification(cfg).eval()
    hf.save_pretrained(folder)
    ours = load_checkpoint(folder)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        diff = (ours(x) - hf(pixel_values=x).logits).abs().max().item()
    assert diff < 1e-4, f"the two models disagree by {diff}"
    return ours, hf


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Run each function once per round, in a rotating order, and collect wall times (s)."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def memory_child(mode: str) -> None:
    """In a fresh process: warm up with model(x), then report the ru_maxrss growth of `mode`."""
    torch.manual_seed(0)
    from vit_core import ViTConfig

    with torch.device("meta"):  # no init temporaries to raise the high-water mark before we start
        model = VisionTransformer(ViTConfig())
    model = model.to_empty(device="cpu").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        model(x)
        model(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    if mode == "forward":
        with torch.inference_mode():
            out = model(x)
    elif mode == "trace":
        out = model.trace(x)
    else:
        out = model.trace(x, target=3)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del out
    print(json.dumps({"mode": mode, "delta_mib": (after - before) / 1024, "baseline_mib": before / 1024}))


def measure_memory(mode: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--memory-child", mode]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child)
        return

    # Memory first, while this process is small: Linux carries ru_maxrss across fork and exec,
    # so children started after the models are built would inherit this process's high-water mark.
    memory = {mode: measure_memory(mode) for mode in ("forward", "trace", "trace_target")}

    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        ours, hf = build_pair(Path(tmp))
    x = torch.randn(1, 3, 224, 224)

    def forward() -> object:
        with torch.inference_mode():
            return ours(x)

    def hf_forward() -> object:
        with torch.inference_mode():
            return hf(pixel_values=x).logits

    fns = {
        "model(x)": forward,
        "trace(x)": lambda: ours.trace(x),
        "trace(x, target)": lambda: ours.trace(x, target=3),
        "transformers sdpa": hf_forward,
    }
    times = time_interleaved(fns, args.repeats)
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f"ViT-B/16, 224x224, batch 1, CPU, {args.repeats} interleaved rounds:")
    for name, t in times.items():
        print(
            f"  {name:<18} median {med[name] * 1e3:7.1f} ms   min {min(t) * 1e3:7.1f} ms   max {max(t) * 1e3:7.1f} ms"
        )

    def ratio(a: str, b: str) -> tuple[float, float, float]:
        """Median of per-round ratios (robust to load that changes between rounds), ratio of
        medians and ratio of minima."""
        per_round = statistics.median(x / y for x, y in zip(times[a], times[b]))
        return per_round, med[a] / med[b], min(times[a]) / min(times[b])

    def show(label: str, r: tuple[float, float, float], note: str) -> None:
        print(f"  {label:<26} {r[0]:.3f}  (medians {r[1]:.3f}, minima {r[2]:.3f})  {note}")

    print("Ratios (median of per-round ratios; ratio of medians and of minima in brackets):")
    r = ratio("trace(x)", "model(x)")
    show("trace / model(x)", r, f"target <= 1.3: {'ok' if r[0] <= 1.3 else 'OVER'}")
    show("trace(target) / model(x)", ratio("trace(x, target)", "model(x)"), "with backward to the attentions")
    r = ratio("model(x)", "transformers sdpa")
    show("model(x) / transformers", r, "<= 1.0: ours no slower")
    print("Peak memory added by one call (ru_maxrss growth over a warmed-up model, fresh process):")
    for mode, m in memory.items():
        print(f"  {mode:<13} +{m['delta_mib']:6.1f} MiB   (process baseline {m['baseline_mib']:.0f} MiB)")
    tr = ours.trace(x)
    kept = sum(t.numel() * t.element_size() for t in (tr.attentions, tr.hidden_states, tr.patch_embeddings))
    print(f"  (the trace itself holds {kept / 2**20:.1f} MiB: attentions, hidden states, patch embeddings)")


if __name__ == "__main__":
    main()
