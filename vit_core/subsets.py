"""Class-balanced subsets of a labelled dataset: the data budgets (1k, 5k, ...) of a run."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def balanced_subset(
    labels: Tensor | np.ndarray | list[int], size: int, seed: int = 0, num_classes: int | None = None
) -> Tensor:
    """Indices of `size` examples, as many of each class as possible.

    Every class gets `size // K` examples; the remaining `size % K` go one each to the first
    classes of a seeded order of the classes. Within a class the examples are the first ones
    of a seeded permutation of that class's indices. Each class has its own random stream
    (from `seed` and the class index), so a class's picks do not depend on the other classes.

    Nested: for the same labels and seed, the subset of a smaller size is contained in the
    subset of a larger one (each class's count never decreases with `size`, and takes a prefix
    of the same permutation), so the 1k subset lies inside the 5k subset.

    Args:
        labels: (N,) integer class indices.
        size: examples wanted, 1 <= size <= N.
        seed: non-negative integer; the same seed gives the same subset.
        num_classes: K, balance over classes 0..K-1 (each must occur); default: the classes
            that occur in `labels`.

    Returns:
        (size,) int64 indices into `labels`, sorted ascending (for `ImageDataset.subset`).

    Raises:
        ValueError: size outside [1, N], a negative seed, or a class with fewer examples than
            its share (the message names the largest size every class can fill).
    """
    y = torch.as_tensor(labels).reshape(-1).cpu().numpy()
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, not {y.dtype}")
    N = int(y.size)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= N:
        raise ValueError(f"size must be an integer in [1, {N}] (the number of labelled examples), not {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    classes = np.unique(y) if num_classes is None else np.arange(num_classes)
    counts = np.array([(y == c).sum() for c in classes])
    K = len(classes)
    share, extra = divmod(int(size), K)
    order = np.random.default_rng((int(seed), 0)).permutation(K)  # who gets the remainder
    wanted = np.full(K, share)
    wanted[order[:extra]] += 1
    short = [int(c) for c, have, want in zip(classes, counts, wanted) if have < want]
    if short:
        reachable = _largest_balanced_size(counts, order)
        raise ValueError(
            f"a balanced subset of {size} needs {share}-{share + (extra > 0)} examples per class, and class(es) "
            f"{short} have fewer ({counts.min()} in the smallest class); the largest balanced size here is {reachable}"
        )
    picks = []
    for c, want in zip(classes, wanted):
        members = np.flatnonzero(y == c)
        perm = np.random.default_rng((int(seed), 1, int(c))).permutation(members.size)
        picks.append(members[perm[:want]])
    return torch.from_numpy(np.sort(np.concatenate(picks))).long()


def _largest_balanced_size(counts: np.ndarray, order: np.ndarray) -> int:
    """The largest size whose per-class shares every class can fill."""
    K = len(counts)
    share = int(counts.min())  # every class can give this many
    extra = 0
    for k in order:  # the remainder goes to classes in this order; stop at the first that is full
        if counts[k] <= share:
            break
        extra += 1
    return share * K + min(extra, K - 1)
