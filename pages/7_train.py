"""Train: a small ViT learns CIFAR-10 live, on a background thread this browser session owns."""

import streamlit as st

from ui import training as T
from ui.page import header

header(
    "Train a ViT and watch it learn",
    "Press **Start** and a small Vision Transformer learns CIFAR-10 on this server while you watch: the loss "
    "falls, the accuracy climbs, and the structures the explorer pages show appear one by one. The **position "
    "embeddings** start as noise and organise into a grid, the **patch filters** turn from random into "
    "colour blobs and edges, and the **[CLS] token's attention** moves onto the object. When the run ends, one "
    "click makes your model the one every page explains.",
)

T.advance_comparison()  # ViT vs CNN: the CNN starts once the ViT has finished
run = T.current_run()
T.comparison_panel()
if run is not None:
    st.subheader("This session's run")
    T.run_panel(run)
else:
    T.new_run_form()
