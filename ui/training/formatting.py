"""Numbers as the Train page writes them."""

from __future__ import annotations

import math


def fmt_params(n: int) -> str:
    """'1.82 M' or '15,459'."""
    return f"{n / 1e6:.2f} M" if n >= 100_000 else f"{n:,}"


def fmt_duration(s: float) -> str:
    """'45 s', '12 min', '2 h 05 min'."""
    if not math.isfinite(s):
        return "?"
    s = max(0.0, float(s))
    if s < 90:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"
