"""Small shared helpers: shape checks, the CLS-row convention, PCA with a fixed sign."""

from __future__ import annotations

import torch
from torch import Tensor


def check_tokens(num_tokens: int, grid: tuple[int, int], num_prefix_tokens: int) -> tuple[int, int]:
    """Check that N = prefix + gh*gw and return the grid as ints; a clear error otherwise."""
    gh, gw = int(grid[0]), int(grid[1])
    if num_prefix_tokens < 0:
        raise ValueError(f"num_prefix_tokens must be >= 0, not {num_prefix_tokens}")
    if num_tokens != num_prefix_tokens + gh * gw:
        raise ValueError(
            f"{num_tokens} tokens do not match {num_prefix_tokens} prefix tokens + a {gh}x{gw} patch grid "
            f"({num_prefix_tokens + gh * gw} tokens)"
        )
    return gh, gw


def check_attentions(attentions: Tensor) -> None:
    """Attention maps must be (B, L, heads, N, N)."""
    if attentions.dim() != 5 or attentions.shape[-1] != attentions.shape[-2]:
        raise ValueError(f"attentions must have shape (B, L, heads, N, N), got {tuple(attentions.shape)}")


def class_row(matrix: Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> Tensor:
    """Row of the first token over the patch columns, as a map.

    Args:
        matrix: (B, N, N) token-to-token matrix (rollout, relevance).
        grid: (gh, gw).
        num_prefix_tokens: k; with k = 0 (no class token, average pooling) the mean of the
            patch rows is used, since the pooled output is the mean of the patch tokens.
            (A model with a class token but `global_pool="avg"` still gets row 0 here,
            although its head reads the patch mean.)

    Returns:
        (B, gh, gw): `matrix[:, 0, k:]` (or the patch-row mean) on the patch grid.
    """
    gh, gw = check_tokens(matrix.shape[-1], grid, num_prefix_tokens)
    k = num_prefix_tokens
    row = matrix[:, 0, k:] if k > 0 else matrix.mean(dim=1)
    return row.reshape(matrix.shape[0], gh, gw)


def pca(x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Principal components of the rows of `x`, batched over leading dims.

    Computed by a symmetric eigendecomposition of the smaller of the covariance (f x f) and
    the Gram matrix (m x m) of the centred samples, in float64 when that matrix is small.
    The sign of each component is fixed so that its entry of largest magnitude is positive,
    which makes the result deterministic (PCA alone defines components up to sign).

    Args:
        x: (..., m, f) m samples of dimension f.
        k: components wanted; at most min(m, f) are returned (more cannot exist).

    Returns:
        components (..., k', f) orthonormal rows, coordinates (..., m, k') of the centred
        samples, explained variance ratio (..., k'), with k' = min(k, m, f).
    """
    m, f = x.shape[-2], x.shape[-1]
    k = min(k, m, f)
    work = torch.float64 if min(m, f) <= 256 else torch.float32
    xc = (x - x.mean(dim=-2, keepdim=True)).to(work)
    total = xc.square().sum(dim=(-2, -1))[..., None]  # (..., 1) total variance (times m)
    if f <= m:
        vals, vecs = torch.linalg.eigh(xc.transpose(-1, -2) @ xc)  # ascending
        vals, comps = vals.flip(-1)[..., :k], vecs.flip(-1)[..., :k].transpose(-1, -2)
    else:
        vals, vecs = torch.linalg.eigh(xc @ xc.transpose(-1, -2))
        vals, u = vals.flip(-1)[..., :k], vecs.flip(-1)[..., :k]  # (..., m, k)
        comps = (xc.transpose(-1, -2) @ u).transpose(-1, -2)  # (..., k, f) = S V^T
        # QR keeps the leading (well-defined) directions and makes any from a zero eigenvalue
        # (k above the rank of the centred data) orthonormal to them instead of noise.
        q, r = torch.linalg.qr(comps.transpose(-1, -2))  # q (..., f, k)
        diag_sign = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
        comps = (q * torch.where(diag_sign == 0, torch.ones_like(diag_sign), diag_sign)[..., None, :]).transpose(-1, -2)
    peak = comps.abs().argmax(dim=-1, keepdim=True)
    sign = torch.sign(comps.gather(-1, peak))
    comps = comps * torch.where(sign == 0, torch.ones_like(sign), sign)
    ratio = vals.clamp_min(0) / total.clamp_min(torch.finfo(work).tiny)
    coords = xc @ comps.transpose(-1, -2)
    return comps.to(x.dtype), coords.to(x.dtype), ratio.to(x.dtype)


def scale01(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Min-max scale to [0, 1] over `dims`; a constant slice becomes 0.5."""
    lo = x.amin(dim=dims, keepdim=True)
    hi = x.amax(dim=dims, keepdim=True)
    rng = hi - lo
    out = (x - lo) / torch.where(rng > 0, rng, torch.ones_like(rng))
    return torch.where(rng > 0, out, torch.full_like(out, 0.5))
