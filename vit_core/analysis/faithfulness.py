"""Which map to trust: deletion and insertion curves, agreement between maps, the
randomisation sanity check, and the logit lens read at every patch token.

Definitions: ALGORITHMS.md, "Judging a saliency map", "Agreement between maps", "Sanity check
by model randomisation" and "Logit lens per patch".
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from .whatif import occlude_image

if TYPE_CHECKING:
    from ..model import VisionTransformer, ViTTrace

CURVE_BATCH = 64  # images per forward pass of a curve; bounds memory (ViT-B: about 0.5 GB)
_EMBEDDING_PARAMS = ("patch_embed.", "pos_embed", "cls_token", "dist_token", "reg_token")


def saliency_order(saliency: Tensor) -> Tensor:
    """Patches from most to least salient; ties break by patch index (lower first).

    Args:
        saliency: (n,) or a (gh, gw) map, one score per patch, row-major.

    Returns:
        (n,) int64 patch indices, on the CPU.
    """
    s = torch.as_tensor(saliency).detach().reshape(-1).to("cpu", torch.float64)
    if s.numel() == 0:
        raise ValueError("the saliency map is empty")
    if not torch.isfinite(s).all():
        raise ValueError("the saliency map has NaN or infinite entries: it cannot rank the patches")
    return torch.sort(s, descending=True, stable=True).indices


def step_fractions(n: int, k: int = 1) -> Tensor:
    """Share of the patches hidden (deletion) or restored (insertion) at each step of a curve.

    Step i covers `min(i * k, n)` patches: `ceil(n / k) + 1` points from 0 to 1, evenly spaced
    except the last step when `k` does not divide `n`.

    Returns:
        (ceil(n/k) + 1,) float64.
    """
    n, k = _check_steps(n, k)
    return torch.tensor([min(i * k, n) / n for i in range(math.ceil(n / k) + 1)], dtype=torch.float64)


def _check_steps(n: int, k: int) -> tuple[int, int]:
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k (patches per step) must be a positive integer, not {k!r}")
    if n < 1:
        raise ValueError(f"a curve needs at least one patch, not {n}")
    return int(n), int(k)


def _check_image(model: VisionTransformer, x: Tensor, target: int) -> int:
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one preprocessed image (1, C, H, W), got {tuple(x.shape)}")
    C = model.cfg.num_classes
    if C == 0:
        raise ValueError("this model has no classifier head: there is no class probability to follow")
    if isinstance(target, bool) or int(target) != target or not 0 <= int(target) < C:
        raise ValueError(f"target must be a class index in [0, {C - 1}], not {target!r}")
    P = model.patch_size
    if x.shape[2] % P or x.shape[3] % P:
        raise ValueError(f"image size {x.shape[2]}x{x.shape[3]} is not a multiple of the patch size {P}")
    return (x.shape[2] // P) * (x.shape[3] // P)


def _prepare(
    model: VisionTransformer, x: Tensor, saliencies: Tensor, target: int, k: int, batch_size: int | None
) -> tuple[Tensor, list[list[int]], int, int, int]:
    n = _check_image(model, x, target)
    n, k = _check_steps(n, k)
    maps = torch.as_tensor(saliencies).detach()
    maps = maps.reshape(1, -1) if maps.dim() == 1 else maps.reshape(maps.shape[0], -1)
    if maps.shape[1] != n:
        raise ValueError(f"a saliency map has {maps.shape[1]} entries, but the image has {n} patches")
    if batch_size is None:
        batch_size = curve_batch_size(model, n)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, not {batch_size}")
    p = next(model.parameters())
    return x.to(p.device, p.dtype), [saliency_order(m).tolist() for m in maps], n, k, batch_size


@torch.no_grad()
def _curves(
    model: VisionTransformer,
    x: Tensor,
    orders: list[list[int]],
    directions: tuple[str, ...],
    target: int,
    n: int,
    k: int,
    mode: str,
    batch_size: int,
) -> Tensor:
    """(M, len(directions), ceil(n/k) + 1) target probabilities, every image in shared batches.

    Images that hide the same set of patches are forwarded once: every curve's two ends (the
    original and the fully hidden image) and the first steps of maps that agree on their top
    patches are shared.
    """
    steps = math.ceil(n / k) + 1
    jobs = [(m, d, s) for m in range(len(orders)) for d in directions for s in range(steps)]
    unique: dict[tuple[int, ...], int] = {}  # hidden patches -> index of the image that shows it
    masks: list[list[int]] = []
    slot = []
    for m, d, s in jobs:
        done = min(s * k, n)
        hidden = orders[m][:done] if d == "deletion" else orders[m][done:]
        key = tuple(sorted(hidden))
        if key not in unique:
            unique[key] = len(masks)
            masks.append(hidden)
        slot.append(unique[key])
    workers = max(1, min(curve_workers(), math.ceil(len(masks) / 8)))  # at least 8 images a worker
    batches = max(workers, math.ceil(len(masks) / batch_size))
    per_batch = math.ceil(len(masks) / batches)  # evenly sized batches, at least one per worker
    chunks = [masks[i : i + per_batch] for i in range(0, len(masks), per_batch)]
    P, t = model.patch_size, int(target)

    def forward(chunk: list[list[int]]) -> Tensor:
        with torch.no_grad():  # grad mode is per thread: set it in the worker too
            images = torch.cat([occlude_image(x, hidden, P, mode) for hidden in chunk])  # the what-if's painting
            return model(images).double().softmax(-1)[:, t].cpu()

    probs = torch.cat(_map_in_threads(forward, chunks, workers))
    return probs[torch.tensor(slot)].reshape(len(orders), len(directions), steps)


CURVE_WORKERS_ENV = "VIT_EXPLORER_CURVE_WORKERS"


def curve_workers() -> int:
    """Threads that run the curves' batches side by side, each with one torch thread.

    The curves are hundreds of independent images. Split over threads that each use one torch
    thread, they use every core without OpenMP's spin-waiting between threads, which on a busy
    machine makes a 2-thread forward many times slower (see `vit_core.threads`): a thread that
    gets less CPU only finishes its own batches later. $VIT_EXPLORER_CURVE_WORKERS, else the
    usable cores (at most 4).
    """
    env = os.environ.get(CURVE_WORKERS_ENV, "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not on every platform
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def _map_in_threads(fn: Callable[[list[list[int]]], Tensor], chunks: list, workers: int) -> list[Tensor]:
    """`[fn(c) for c in chunks]`, over `workers` threads of one torch thread each (in order).

    Each worker sets one torch thread for itself (OpenMP keeps that per thread), but torch also
    reports and keeps the last value set process-wide, so the caller's value is put back afterwards.
    """
    if workers <= 1 or len(chunks) <= 1:
        return [fn(c) for c in chunks]
    before = torch.get_num_threads()

    def one_thread(c: list[list[int]]) -> Tensor:
        torch.set_num_threads(1)
        return fn(c)

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="curves") as pool:
            return list(pool.map(one_thread, chunks))
    finally:
        torch.set_num_threads(before)


def curve_batch_size(model: VisionTransformer, n: int, tokens_per_batch: int = 8192) -> int:
    """Images per forward pass of the curves: about `tokens_per_batch` tokens, 8 to 256 images.

    Measured on a 2-core CPU with the bundled model (65 tokens), batches of about 128 images ran
    faster per image than 64 or 256 (`benchmarks/bench_faithfulness.py`); ViT-B/16 at its ImageNet
    input size gets about 40 images a batch, whose activations stay well under 1 GB.
    """
    tokens = model.num_prefix_tokens + n  # n: the image's patches
    return max(8, min(256, tokens_per_batch // max(1, tokens)))


def deletion_insertion_curves(
    model: VisionTransformer,
    x: Tensor,
    saliencies: Tensor,
    target: int,
    k: int = 1,
    mode: str = "mean",
    batch_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Deletion and insertion curves of several saliency maps, in shared batched forwards.

    The same curves as `deletion_curve` and `insertion_curve`, for M maps at once.

    Args:
        model: the ViT.
        x: (1, C, H, W) one preprocessed image.
        saliencies: (M, n), (M, gh, gw) or one map (n,): one score per patch per map.
        target: class whose softmax probability is recorded.
        k: patches per step.
        mode: "mean" (ALGORITHMS.md) or "zero", as in `occlude_image`.
        batch_size: images per forward pass; None: `curve_batch_size` (about 8k tokens).

    Returns:
        deletion, insertion: each (M, ceil(n/k) + 1) float64 (or (ceil(n/k) + 1,) for one (n,)
        map), against `step_fractions(n, k)`.
    """
    x, orders, n, k, batch_size = _prepare(model, x, saliencies, target, k, batch_size)
    curves = _curves(model, x, orders, ("deletion", "insertion"), target, n, k, mode, batch_size)
    if torch.as_tensor(saliencies).dim() == 1:
        return curves[0, 0], curves[0, 1]
    return curves[:, 0], curves[:, 1]


def deletion_curve(
    model: VisionTransformer,
    x: Tensor,
    saliency: Tensor,
    target: int,
    k: int = 1,
    mode: str = "mean",
    batch_size: int | None = None,
) -> Tensor:
    """Target probability as the most salient patches are hidden, `k` at a time (Petsiuk 2018).

    A hidden patch is painted exactly as the occlusion what-if paints it (`occlude_image`;
    "mean": the image's own per-channel mean colour over all its pixels).

    Args:
        model: the ViT.
        x: (1, C, H, W) one preprocessed image.
        saliency: (n,) or (gh, gw) one score per patch, row-major; ties break by patch index.
        target: class index.
        k: patches hidden per step.
        mode: "mean" (ALGORITHMS.md) or "zero" (0 in normalised space).
        batch_size: images per forward pass (bounds memory); None: `curve_batch_size`.

    Returns:
        (ceil(n/k) + 1,) float64 probabilities; point i has `min(i*k, n)` patches hidden
        (`step_fractions`): from the unmasked image's probability to the fully hidden one's.
        A faithful map makes it fall fast (low `curve_area`).
    """
    x, orders, n, k, batch_size = _prepare(model, x, torch.as_tensor(saliency).reshape(-1), target, k, batch_size)
    return _curves(model, x, orders, ("deletion",), target, n, k, mode, batch_size)[0, 0]


def insertion_curve(
    model: VisionTransformer,
    x: Tensor,
    saliency: Tensor,
    target: int,
    k: int = 1,
    mode: str = "mean",
    batch_size: int | None = None,
) -> Tensor:
    """Target probability as patches are restored, most salient first, into the hidden image.

    Args: as `deletion_curve`.

    Returns:
        (ceil(n/k) + 1,) float64 probabilities; point i has `min(i*k, n)` patches restored:
        from the fully hidden image's probability to the unmasked one's. A faithful map makes
        it rise fast (high `curve_area`).
    """
    x, orders, n, k, batch_size = _prepare(model, x, torch.as_tensor(saliency).reshape(-1), target, k, batch_size)
    return _curves(model, x, orders, ("insertion",), target, n, k, mode, batch_size)[0, 0]


def random_saliencies(n: int, count: int = 5, seed: int = 0) -> Tensor:
    """Random rankings of n patches, the baseline every map must beat (ALGORITHMS.md).

    Returns:
        (count, n) float64 scores, each row a random permutation of 0..n-1 (no ties).
    """
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g) for _ in range(count)]).double()


def curve_area(curve: Tensor, fractions: Tensor | None = None) -> float:
    """Area under a deletion or insertion curve by the trapezoid rule over [0, 1].

    Args:
        curve: (S,) probabilities.
        fractions: (S,) x positions; default evenly spaced over [0, 1], which is exact when
            `k` divides `n`; otherwise pass `step_fractions(n, k)`.

    Returns:
        The area, in probability units (0 to 1).
    """
    y = torch.as_tensor(curve, dtype=torch.float64).reshape(-1)
    if y.numel() < 2:
        raise ValueError(f"a curve needs at least 2 points, got {y.numel()}")
    t = (
        torch.linspace(0.0, 1.0, y.numel(), dtype=torch.float64)
        if fractions is None
        else torch.as_tensor(fractions, dtype=torch.float64).reshape(-1)
    )
    if t.shape != y.shape:
        raise ValueError(f"{t.numel()} fractions for {y.numel()} curve points")
    return float(torch.trapezoid(y, t))


class MapAgreement(NamedTuple):
    """How much two saliency maps agree over the patches."""

    spearman: float  # rank correlation in [-1, 1]; NaN when a map is constant
    top_overlap: float  # |top(a) ∩ top(b)| / top_k, in [0, 1]
    top_k: int  # patches in each top set: 10% of n, at least 1


def average_ranks(values: Tensor) -> Tensor:
    """Ranks 1..n of `values` (n,), tied values sharing the mean of their ranks (float64)."""
    v = torch.as_tensor(values).detach().reshape(-1).to("cpu", torch.float64)
    uniq, inverse, counts = torch.unique(v, sorted=True, return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, 0).double()  # rank of each distinct value's last copy
    return (last - (counts.double() - 1) / 2)[inverse]


def map_agreement(a: Tensor, b: Tensor, top: float = 0.1) -> MapAgreement:
    """Spearman correlation (average ranks for ties) and top-set overlap of two maps.

    Args:
        a: (n,) or (gh, gw) one score per patch.
        b: the same shape as `a`.
        top: share of the patches in each top set; `max(1, int(top * n))` patches, chosen in
            `saliency_order` (ties by patch index).

    Returns:
        `MapAgreement(spearman, top_overlap, top_k)`.
    """
    av = torch.as_tensor(a).detach().reshape(-1).to("cpu", torch.float64)
    bv = torch.as_tensor(b).detach().reshape(-1).to("cpu", torch.float64)
    if av.shape != bv.shape:
        raise ValueError(f"the maps cover {av.numel()} and {bv.numel()} patches")
    if not 0.0 < top <= 1.0:
        raise ValueError(f"top must be in (0, 1], not {top}")
    n = av.numel()
    ra, rb = average_ranks(av), average_ranks(bv)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float(ra.square().sum()) * float(rb.square().sum()))
    rho = float((ra * rb).sum()) / denom if denom > 0 else math.nan
    kk = max(1, int(top * n))
    sa = set(saliency_order(av)[:kk].tolist())
    sb = set(saliency_order(bv)[:kk].tolist())
    return MapAgreement(spearman=rho, top_overlap=len(sa & sb) / kk, top_k=kk)


def agreement_matrix(maps: Tensor, top: float = 0.1) -> tuple[Tensor, Tensor]:
    """`map_agreement` between every pair of M maps.

    Args:
        maps: (M, n) or (M, gh, gw).

    Returns:
        spearman (M, M) and top_overlap (M, M), float64, symmetric with a unit diagonal
        (NaN Spearman for a constant map).
    """
    flat = torch.as_tensor(maps).detach().reshape(len(maps), -1)
    M = flat.shape[0]
    rho = torch.empty(M, M, dtype=torch.float64)
    over = torch.empty(M, M, dtype=torch.float64)
    for i in range(M):
        for j in range(i, M):
            r = map_agreement(flat[i], flat[j], top)
            rho[i, j] = rho[j, i] = r.spearman
            over[i, j] = over[j, i] = r.top_overlap
    return rho, over


def cascade_steps(model: VisionTransformer) -> list[str]:
    """Names of the randomisation steps: "trained", "head", "block L-1", ..., "block 0", "embedding"."""
    return ["trained", "head", *[f"block {i}" for i in reversed(range(len(model.blocks)))], "embedding"]


def _param_step(name: str) -> str:
    """The cascade step that re-initialises parameter `name`."""
    m = re.match(r"blocks\.(\d+)\.", name)
    if m:
        return f"block {int(m.group(1))}"
    if name.startswith(_EMBEDDING_PARAMS):
        return "embedding"
    return "head"  # head, head_dist, the final norm / fc_norm


def randomise_cascade(model: VisionTransformer, seed: int = 0) -> Iterator[tuple[str, VisionTransformer]]:
    """Cascading model randomisation (Adebayo et al. 2018), from the top of the model down.

    Steps (`cascade_steps`): "trained" (an unchanged copy), "head" (classifier head(s) and the
    final norm), then "block L-1" down to "block 0", then "embedding" (patch projection,
    position embedding, class/distillation/register tokens). Each step keeps everything the
    previous steps re-initialised, so the last one shares no weight with the trained model.
    The re-initialised values are those of a fresh `type(model)(model.cfg)` built under
    `torch.manual_seed(seed)` (the model's own initialisation); the global random state is
    restored afterwards.

    Args:
        model: the trained ViT; never modified.
        seed: seed of the re-initialisation.

    Yields:
        (step name, model copy): each copy is new and not changed afterwards (same device,
        dtype and train/eval mode as `model`); keep only the ones you need.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(model)(model.cfg, class_names=model.class_names)
    fresh_params = dict(fresh.named_parameters())
    current = copy.deepcopy(model)
    yield "trained", current
    for step in cascade_steps(model)[1:]:
        current = copy.deepcopy(current)
        with torch.no_grad():
            for name, p in current.named_parameters():
                if _param_step(name) == step:
                    p.copy_(fresh_params[name])
        yield step, current


@torch.no_grad()
def patch_logit_lens(model: VisionTransformer, trace: ViTTrace, image: int = 0) -> Tensor:
    """The final norm and head applied to every patch token after the embedding and each block.

    Each patch token is read as if it were the token the head reads (the [CLS] token, the
    distillation token too for a DeiT, or the pooled token of an average-pooling model), so
    depth L of a [CLS] model's `logit_lens` is the same readout applied to the class token.

    Args:
        model: the ViT that produced `trace`.
        trace: from `model.trace`.
        image: which image of the trace's batch.

    Returns:
        (L+1, n, classes) class probabilities; depth 0 is the embedding output, depth l the
        output of block l; patches in row-major order (reshape to (gh, gw) for a map).
    """
    if model.cfg.num_classes == 0:
        raise ValueError("this model has no classifier head: there are no class probabilities to read")
    k = model.num_prefix_tokens
    if trace.num_prefix_tokens != k:
        raise ValueError(f"the trace has {trace.num_prefix_tokens} prefix tokens, the model {k}: another model's trace")
    hs = trace.hidden_states[image, :, k:]  # (L+1, n, D)
    S, n, D = hs.shape
    # k+1 copies of the token: positions 0 (class), 1 (distillation) and k: (pooled) all hold it.
    seq = hs.reshape(S * n, 1, D).expand(S * n, k + 1, D).to(model.pos_embed.dtype)
    logits = model.logits_from_hidden(seq)
    return logits.float().softmax(dim=-1).reshape(S, n, -1)


# ---- the saliency maps the lab judges, and the curves of all of them at once ----

SALIENCY_METHODS = ("raw attention", "rollout", "class-specific", "occlusion", "input x gradient")
RANDOM = "random"  # the baseline's name beside the methods


@torch.no_grad()
def occlusion_sensitivity(
    model: VisionTransformer, x: Tensor, target: int, mode: str = "mean", batch_size: int = CURVE_BATCH
) -> Tensor:
    """How much the target's probability falls when each patch alone is hidden (one forward per patch).

    A patch is painted as the occlusion what-if paints it (`occlude_image`).

    Args:
        model: the ViT.
        x: (1, C, H, W) one preprocessed image.
        target: class index.
        mode: "mean" or "zero", as in `occlude_image`.
        batch_size: images per forward pass.

    Returns:
        (gh, gw) float64: p(target | x) minus p(target | x with that patch hidden); negative
        where hiding the patch helps the class.
    """
    n = _check_image(model, x, target)
    P = model.patch_size
    p = next(model.parameters())
    x = x.to(p.device, p.dtype)
    base = float(model(x).double().softmax(-1)[0, int(target)])
    drops = torch.empty(n, dtype=torch.float64)
    for start in range(0, n, batch_size):
        idx = range(start, min(start + batch_size, n))
        images = torch.cat([occlude_image(x, [i], P, mode) for i in idx])
        drops[start : start + len(idx)] = base - model(images).double().softmax(-1)[:, int(target)].cpu()
    return drops.reshape(x.shape[2] // P, x.shape[3] // P)


def input_x_gradient(model: VisionTransformer, x: Tensor, target: int) -> Tensor:
    """Input x gradient of the target's logit, summed over each patch's pixels and channels.

    `sum_{c, pixels in patch} x * d y_target / d x` (Shrikumar et al. 2016), with `x` the
    normalised model input; signed (a patch can speak against the class).

    Args:
        model: the ViT (its parameters' gradients are left untouched).
        x: (1, C, H, W) one preprocessed image.
        target: class index.

    Returns:
        (gh, gw) float64.
    """
    _check_image(model, x, target)
    p = next(model.parameters())
    xg = x.detach().to(p.device, p.dtype).clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(model(xg)[0, int(target)], xg)
    P = model.patch_size
    per_pixel = (grad * xg.detach()).sum(1)[0].double().cpu()  # (H, W)
    gh, gw = per_pixel.shape[0] // P, per_pixel.shape[1] // P
    return per_pixel.reshape(gh, P, gw, P).sum(dim=(1, 3))


def saliency_maps(
    model: VisionTransformer,
    x: Tensor,
    target: int,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
    methods: tuple[str, ...] = SALIENCY_METHODS,
) -> dict[str, Tensor]:
    """The lab's maps of one image, each (gh, gw) float64 over the patches.

    "raw attention": the last layer's [CLS] row, mean of the heads; "rollout": `rollout_cls_map`
    with the given settings; "class-specific": Chefer et al. for `target`; "occlusion":
    `occlusion_sensitivity`; "input x gradient": `input_x_gradient`.

    Args:
        model: the ViT.
        x: (1, C, H, W) one preprocessed image.
        target: class index for the class-specific, occlusion and gradient maps.
        head_fusion, discard_ratio, start_layer: the rollout's settings (0-based start layer).
        methods: which of `SALIENCY_METHODS`, in the order returned.
    """
    from .attention import class_attention_map_from_trace, rollout_cls_map

    unknown = [m for m in methods if m not in SALIENCY_METHODS]
    if unknown:
        raise ValueError(f"unknown saliency methods {unknown}; known: {', '.join(SALIENCY_METHODS)}")
    _check_image(model, x, target)
    p = next(model.parameters())
    x = x.detach().to(p.device, p.dtype)
    out: dict[str, Tensor] = {}
    tr = None
    if "class-specific" in methods:  # one forward + backward serves the attention maps too
        with torch.enable_grad():
            tr = model.trace(x, target=int(target))
    elif {"raw attention", "rollout"} & set(methods):
        with torch.no_grad():
            tr = model.trace(x)
    for m in methods:
        if m == "raw attention":
            k = tr.num_prefix_tokens
            att = tr.attentions[0, -1].detach().double().mean(0)  # (N, N)
            row = att[0, k:] if k else att[:, :].mean(0)
            out[m] = row.reshape(tr.grid).cpu()
        elif m == "rollout":
            roll = rollout_cls_map(
                tr.attentions.detach(), tr.grid, tr.num_prefix_tokens, head_fusion, discard_ratio, start_layer
            )
            out[m] = roll[0].double().cpu()
        elif m == "class-specific":
            out[m] = class_attention_map_from_trace(tr)[0].detach().double().cpu()
        elif m == "occlusion":
            out[m] = occlusion_sensitivity(model, x, target)
        else:
            out[m] = input_x_gradient(model, x, target)
    return out


class LabCurves(NamedTuple):
    """Deletion and insertion curves of several maps and of random rankings, on one image."""

    names: list[str]  # the maps, in row order
    fractions: Tensor  # (S,) hidden (deletion) or restored (insertion) share at each step
    deletion: Tensor  # (M, S) target probability
    insertion: Tensor  # (M, S)
    random_deletion: Tensor  # (R, S), one row per random seed
    random_insertion: Tensor  # (R, S)

    def areas(self) -> dict[str, tuple[float, float]]:
        """Map name (and "random": the mean over the seeds) -> (deletion area, insertion area)."""
        out = {
            name: (curve_area(d, self.fractions), curve_area(i, self.fractions))
            for name, d, i in zip(self.names, self.deletion, self.insertion)
        }
        if len(self.random_deletion):
            out[RANDOM] = (
                float(sum(curve_area(d, self.fractions) for d in self.random_deletion) / len(self.random_deletion)),
                float(sum(curve_area(i, self.fractions) for i in self.random_insertion) / len(self.random_insertion)),
            )
        return out

    def random_area_spread(self) -> tuple[Tensor, Tensor]:
        """(R,) deletion and (R,) insertion areas of the random rankings, one per seed."""
        d = torch.tensor([curve_area(c, self.fractions) for c in self.random_deletion], dtype=torch.float64)
        i = torch.tensor([curve_area(c, self.fractions) for c in self.random_insertion], dtype=torch.float64)
        return d, i


def lab_curves(
    model: VisionTransformer,
    x: Tensor,
    maps: dict[str, Tensor],
    target: int,
    random_seeds: int = 10,
    k: int = 1,
    seed: int = 0,
    batch_size: int | None = None,
) -> LabCurves:
    """`deletion_insertion_curves` of every map and of `random_seeds` random rankings, in shared batches.

    Args:
        maps: name -> (gh, gw) or (n,) map.
        random_seeds: random rankings (`random_saliencies(n, random_seeds, seed)`); 0 for none.
        k: patches per step.
    """
    n = _check_image(model, x, target)
    rows = [torch.as_tensor(m).detach().reshape(-1).double().cpu() for m in maps.values()]
    if random_seeds:
        rows += list(random_saliencies(n, random_seeds, seed))
    dele, ins = deletion_insertion_curves(model, x, torch.stack(rows), target, k=k, batch_size=batch_size)
    M = len(maps)
    return LabCurves(list(maps), step_fractions(n, k), dele[:M], ins[:M], dele[M:], ins[M:])


class LabSummary(NamedTuple):
    """The lab's measures over a set of images: per image, per method (the random mean last)."""

    names: list[str]  # the methods, then "random" (mean of the seeds)
    fractions: Tensor  # (S,)
    deletion: Tensor  # (B, M+1) deletion areas
    insertion: Tensor  # (B, M+1) insertion areas
    mean_deletion: Tensor  # (M+1, S) mean deletion curve over the images
    mean_insertion: Tensor  # (M+1, S)
    spearman: Tensor  # (B, M, M) agreement between the methods' maps (random excluded)
    top_overlap: Tensor  # (B, M, M)


def lab_summary(
    model: VisionTransformer,
    images: Tensor,
    targets: Tensor,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
    random_seeds: int = 10,
    k: int = 1,
    methods: tuple[str, ...] = SALIENCY_METHODS,
    progress: Callable[[int, int], None] | None = None,
    batch_size: int | None = None,
) -> LabSummary:
    """`saliency_maps`, `lab_curves` and `agreement_matrix` for each image of a set.

    Args:
        images: (B, C, H, W) preprocessed images.
        targets: (B,) the class each image's maps and curves follow.
        progress: called as `progress(images_done, B)` after each image (and once with 0).
        others: as `saliency_maps` and `lab_curves` (the random seeds are the same for every image).
    """
    B = images.shape[0]
    targets = torch.as_tensor(targets).long().reshape(-1)
    if B == 0 or targets.shape[0] != B:
        raise ValueError(f"lab_summary needs images and one target each, got {B} and {targets.shape[0]}")
    if not random_seeds:
        raise ValueError("lab_summary needs random rankings (random_seeds >= 1): they are the baseline")
    dele, ins, rho, over, d_curves, i_curves = [], [], [], [], [], []
    fractions = None
    if progress is not None:
        progress(0, B)
    for b in range(B):
        x, t = images[b : b + 1], int(targets[b])
        maps = saliency_maps(model, x, t, head_fusion, discard_ratio, start_layer, methods)
        c = lab_curves(model, x, maps, t, random_seeds, k, batch_size=batch_size)
        fractions = c.fractions
        areas = c.areas()
        dele.append([areas[m][0] for m in [*maps, RANDOM]])
        ins.append([areas[m][1] for m in [*maps, RANDOM]])
        d_curves.append(torch.cat([c.deletion, c.random_deletion.mean(0, keepdim=True)]))
        i_curves.append(torch.cat([c.insertion, c.random_insertion.mean(0, keepdim=True)]))
        r, o = agreement_matrix(torch.stack([m.reshape(-1) for m in maps.values()]))
        rho.append(r)
        over.append(o)
        if progress is not None:
            progress(b + 1, B)
    return LabSummary(
        [*methods, RANDOM],
        fractions,
        torch.tensor(dele, dtype=torch.float64),
        torch.tensor(ins, dtype=torch.float64),
        torch.stack(d_curves).mean(0),
        torch.stack(i_curves).mean(0),
        torch.stack(rho),
        torch.stack(over),
    )
