"""The explorer's pages, in order: app.py builds the navigation from them, the Overview links the steps."""

from __future__ import annotations

from typing import NamedTuple


class PageEntry(NamedTuple):
    path: str  # the page script, relative to the repository root
    title: str  # in the navigation menu
    icon: str
    step: str | None = None  # the short name of a step of the ViT (the Overview's "Where to next"), or None
    section: str = "Inside a ViT"  # the group of the navigation menu it is listed under


LESSONS_PATH = "pages/11_lessons.py"

PAGES = [
    PageEntry("pages/1_overview.py", "Overview", ":material/route:", section="Start"),
    PageEntry(LESSONS_PATH, "Lessons", ":material/school:", section="Start"),
    PageEntry("pages/2_patches.py", "Patches", ":material/grid_on:", step="Patches"),
    PageEntry("pages/3_embeddings.py", "Embeddings", ":material/scatter_plot:", step="Embeddings"),
    PageEntry("pages/4_positions.py", "Position embeddings", ":material/my_location:", step="Positions"),
    PageEntry("pages/5_attention.py", "Attention", ":material/visibility:", step="Attention"),
    PageEntry("pages/6_prediction.py", "Prediction", ":material/insights:", step="Prediction"),
    PageEntry("pages/7_train.py", "Train", ":material/model_training:", section="Train and experiment"),
    PageEntry("pages/10_experiments.py", "ViT vs CNN", ":material/science:", section="Train and experiment"),
    PageEntry("pages/8_trust.py", "Which map to trust", ":material/fact_check:", section="Which map to trust"),
    PageEntry("pages/9_compare.py", "Side by side", ":material/compare:", section="Which map to trust"),
]
STEPS = [p for p in PAGES if p.step]  # the five steps, in the order the model takes them
# The Overview's "Where to next": the five steps, then training one's own model
WHERE_NEXT = [*STEPS, *(p for p in PAGES if p.path == "pages/7_train.py")]


def sections() -> dict[str, list[PageEntry]]:
    """The navigation menu's groups, in order, each with its pages in order."""
    out: dict[str, list[PageEntry]] = {}
    for p in PAGES:
        out.setdefault(p.section, []).append(p)
    return out
