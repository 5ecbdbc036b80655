"""Plain loop-based references for tests/test_analysis*.py.

Every function here recomputes a definition from ALGORITHMS.md with Python for-loops over
nested lists of floats (double precision), with no vectorised tensor operation, so that it
shares no code and no reshapes with vit_core.analysis. Where a definition needs an
eigendecomposition (PCA), the covariance matrix is built by loops and only its
eigendecomposition is delegated to numpy (float64).
"""

from __future__ import annotations

import math

import numpy as np


def zeros(*shape):
    if len(shape) == 1:
        return [0.0] * shape[0]
    return [zeros(*shape[1:]) for _ in range(shape[0])]


def matmul(a, b):
    n, m, p = len(a), len(b), len(b[0])
    out = zeros(n, p)
    for i in range(n):
        for j in range(p):
            s = 0.0
            for t in range(m):
                s += a[i][t] * b[t][j]
            out[i][j] = s
    return out


def identity(n):
    out = zeros(n, n)
    for i in range(n):
        out[i][i] = 1.0
    return out


def patchify(img, P):
    """img [B][C][H][W] -> [B][n][C*P*P], patch (i, j) at i*gw + j, features (c, p1, p2)."""
    B, C, H, W = len(img), len(img[0]), len(img[0][0]), len(img[0][0][0])
    gh, gw = H // P, W // P
    out = zeros(B, gh * gw, C * P * P)
    for b in range(B):
        for i in range(gh):
            for j in range(gw):
                for c in range(C):
                    for p1 in range(P):
                        for p2 in range(P):
                            out[b][i * gw + j][c * P * P + p1 * P + p2] = img[b][c][i * P + p1][j * P + p2]
    return out


def shuffle_image(img, perm, P):
    """Output patch slot i shows input patch perm[i]."""
    B, C, H, W = len(img), len(img[0]), len(img[0][0]), len(img[0][0][0])
    gw = W // P
    out = zeros(B, C, H, W)
    for b in range(B):
        for slot, src in enumerate(perm):
            si, sj = divmod(slot, gw)
            ti, tj = divmod(src, gw)
            for c in range(C):
                for p1 in range(P):
                    for p2 in range(P):
                        out[b][c][si * P + p1][sj * P + p2] = img[b][c][ti * P + p1][tj * P + p2]
    return out


def occlude_image(img, patches, P, mode):
    B, C, H, W = len(img), len(img[0]), len(img[0][0]), len(img[0][0][0])
    gw = W // P
    out = [[[list(row) for row in ch] for ch in im] for im in img]
    for b in range(B):
        for c in range(C):
            if mode == "mean":
                total = 0.0
                for y in range(H):
                    for x in range(W):
                        total += img[b][c][y][x]
                fill = total / (H * W)
            else:
                fill = 0.0
            for p in patches:
                i, j = divmod(p, gw)
                for y in range(i * P, i * P + P):
                    for x in range(j * P, j * P + P):
                        out[b][c][y][x] = fill
    return out


def mean_attention_distance(att, grid, P, k):
    """att [B][L][h][N][N] -> [L][h] pixels."""
    gh, gw = grid
    B, L, H = len(att), len(att[0]), len(att[0][0])
    n = gh * gw
    out = zeros(L, H)
    for b in range(B):
        for l in range(L):
            for h in range(H):
                per_query = 0.0
                for q in range(n):
                    row = att[b][l][h][k + q]
                    total = 0.0
                    for t in range(n):
                        total += row[k + t]
                    acc = 0.0
                    qi, qj = divmod(q, gw)
                    for t in range(n):
                        ti, tj = divmod(t, gw)
                        acc += row[k + t] / total * math.sqrt((qi - ti) ** 2 + (qj - tj) ** 2) * P
                    per_query += acc
                out[l][h] += per_query / n / B
    return out


def fuse(heads, fusion):
    H, N = len(heads), len(heads[0])
    out = zeros(N, N)
    for i in range(N):
        for j in range(N):
            vals = [heads[h][i][j] for h in range(H)]
            if fusion == "mean":
                out[i][j] = sum(vals) / H
            elif fusion == "max":
                out[i][j] = max(vals)
            else:
                out[i][j] = min(vals)
    return out


def rollout(att, fusion="mean", discard_ratio=0.0, start_layer=0, k=1, keepdim=True):
    """att [B][L][h][N][N] -> [B][N][N]. keepdim=False reproduces the column-broadcast bug."""
    B, L, N = len(att), len(att[0]), len(att[0][0][0])
    n = N - k
    n_drop = int(discard_ratio * n)
    out = []
    for b in range(B):
        joint = identity(N)
        for l in range(start_layer, L):
            a = fuse(att[b][l], fusion)
            for i in range(N):
                order = sorted(range(k, N), key=lambda t, i=i: a[i][t])
                for t in order[:n_drop]:
                    a[i][t] = 0.0
            for i in range(N):
                a[i][i] = 0.5 * a[i][i] + 0.5
                for j in range(N):
                    if j != i:
                        a[i][j] = 0.5 * a[i][j]
            sums = [sum(a[i]) for i in range(N)]
            for i in range(N):
                for j in range(N):
                    # the bug divides entry (i, j) by the sum of row j
                    a[i][j] = a[i][j] / (sums[i] if keepdim else sums[j])
            joint = matmul(a, joint)
        out.append(joint)
    return out


def chefer(att, grads, reverse_pairing=False):
    """R = I; R += mean_h(clamp(grad[l] * A[l], 0)) @ R. reverse_pairing pairs A[l] with grad[L-1-l]."""
    B, L, H, N = len(att), len(att[0]), len(att[0][0]), len(att[0][0][0])
    out = []
    for b in range(B):
        rel = identity(N)
        for l in range(L):
            g = grads[b][L - 1 - l] if reverse_pairing else grads[b][l]
            abar = zeros(N, N)
            for i in range(N):
                for j in range(N):
                    s = 0.0
                    for h in range(H):
                        s += max(g[h][i][j] * att[b][l][h][i][j], 0.0)
                    abar[i][j] = s / H
            upd = matmul(abar, rel)
            for i in range(N):
                for j in range(N):
                    rel[i][j] += upd[i][j]
        out.append(rel)
    return out


def cls_row_map(mat, grid, k):
    gh, gw = grid
    out = zeros(len(mat), gh, gw)
    for b in range(len(mat)):
        for i in range(gh):
            for j in range(gw):
                out[b][i][j] = mat[b][0][k + i * gw + j]
    return out


def last_layer_heads(att, grid, k, mass=None):
    gh, gw = grid
    B, H = len(att), len(att[0][-1])
    out = zeros(B, H, gh, gw)
    for b in range(B):
        for h in range(H):
            row = [att[b][-1][h][0][k + t] for t in range(gh * gw)]
            keep = [True] * len(row)
            if mass is not None:
                total = sum(row)
                order = sorted(range(len(row)), key=lambda t, row=row: -row[t])
                held = 0.0
                keep = [False] * len(row)
                for t in order:
                    if held >= mass * total:
                        break
                    keep[t] = True
                    held += row[t]
            for t in range(len(row)):
                i, j = divmod(t, gw)
                out[b][h][i][j] = row[t] if keep[t] else 0.0
    return out


def entropy(att):
    B, L, H, N = len(att), len(att[0]), len(att[0][0]), len(att[0][0][0])
    out = zeros(L, H)
    for b in range(B):
        for l in range(L):
            for h in range(H):
                tot = 0.0
                for q in range(N):
                    for t in range(N):
                        p = att[b][l][h][q][t]
                        if p > 0:
                            tot -= p * math.log(p)
                out[l][h] += tot / N / B
    return out


def cosine_matrix(rows):
    n = len(rows)
    norms = [math.sqrt(sum(v * v for v in r)) for r in rows]
    out = zeros(n, n)
    for i in range(n):
        for j in range(n):
            out[i][j] = sum(rows[i][t] * rows[j][t] for t in range(len(rows[i]))) / (norms[i] * norms[j])
    return out


def pca(samples, k):
    """Loop-built covariance, numpy eigh; sign: largest-magnitude entry positive.

    Returns components [k][f], centred coordinates [m][k], explained variance ratios [k].
    """
    m, f = len(samples), len(samples[0])
    mean = [sum(samples[s][c] for s in range(m)) / m for c in range(f)]
    cen = [[samples[s][c] - mean[c] for c in range(f)] for s in range(m)]
    cov = zeros(f, f)
    for a in range(f):
        for b in range(a, f):
            v = 0.0
            for s in range(m):
                v += cen[s][a] * cen[s][b]
            cov[a][b] = cov[b][a] = v
    vals, vecs = np.linalg.eigh(np.array(cov))
    order = np.argsort(vals)[::-1][:k]
    comps = []
    for idx in order:
        vec = [float(x) for x in vecs[:, idx]]
        big = max(range(f), key=lambda c, vec=vec: abs(vec[c]))
        if vec[big] < 0:
            vec = [-x for x in vec]
        comps.append(vec)
    total = sum(float(v) for v in vals)
    ratios = [float(vals[idx]) / total for idx in order]
    coords = [[sum(cen[s][c] * comps[j][c] for c in range(f)) for j in range(len(comps))] for s in range(m)]
    return comps, coords, ratios


def minmax(values):
    lo, hi = min(values), max(values)
    return [(v - lo) / (hi - lo) for v in values]


def softmax(xs):
    top = max(xs)
    ex = [math.exp(x - top) for x in xs]
    s = sum(ex)
    return [e / s for e in ex]


def linear(w, b, x):
    """w [out][in], b [out] or None, x [in]."""
    out = []
    for o in range(len(w)):
        s = b[o] if b is not None else 0.0
        for i in range(len(x)):
            s += w[o][i] * x[i]
        out.append(s)
    return out


def layer_norm(x, weight, bias, eps):
    mu = sum(x) / len(x)
    var = sum((v - mu) ** 2 for v in x) / len(x)
    return [(v - mu) / math.sqrt(var + eps) * weight[i] + bias[i] for i, v in enumerate(x)]
