"""The explorer's pages, in order: app.py builds the navigation from them, the Overview links the steps."""

from __future__ import annotations

from typing import NamedTuple


class PageEntry(NamedTuple):
    path: str  # the page script, relative to the repository root
    title: str  # in the navigation menu
    icon: str
    step: str | None = None  # the short name of a step of the ViT (the Overview's "Where to next"), or None


PAGES = [
    PageEntry("pages/1_overview.py", "Overview", ":material/route:"),
    PageEntry("pages/2_patches.py", "Patches", ":material/grid_on:", step="Patches"),
    PageEntry("pages/3_embeddings.py", "Embeddings", ":material/scatter_plot:", step="Embeddings"),
    PageEntry("pages/4_positions.py", "Position embeddings", ":material/my_location:", step="Positions"),
    PageEntry("pages/5_attention.py", "Attention", ":material/visibility:", step="Attention"),
    PageEntry("pages/6_prediction.py", "Prediction", ":material/insights:", step="Prediction"),
    PageEntry("pages/7_train.py", "Train", ":material/model_training:"),
    PageEntry("pages/8_trust.py", "Which map to trust", ":material/fact_check:"),
    PageEntry("pages/9_compare.py", "Side by side", ":material/compare:"),
]
STEPS = [p for p in PAGES if p.step]  # the five steps, in the order the model takes them
# The Overview's "Where to next": the five steps, then training one's own model
WHERE_NEXT = [*STEPS, *(p for p in PAGES if p.path == "pages/7_train.py")]
