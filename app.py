"""ViT Explorer: a live Vision Transformer, opened up step by step.

Run with `streamlit run app.py`. This entry script sets up the page, draws the shared
sidebar (model and image pickers) and hands over to the selected page in pages/.
"""

from pathlib import Path

import streamlit as st

from ui.session import end_of_run, sidebar

ROOT = Path(__file__).resolve().parent

# (file, title, icon); a page whose file is absent (the Train page, until it lands) is left out.
PAGES = [
    ("pages/1_overview.py", "Overview", ":material/route:"),
    ("pages/2_patches.py", "Patches", ":material/grid_on:"),
    ("pages/3_embeddings.py", "Embeddings", ":material/scatter_plot:"),
    ("pages/4_positions.py", "Position embeddings", ":material/my_location:"),
    ("pages/5_attention.py", "Attention", ":material/visibility:"),
    ("pages/6_prediction.py", "Prediction", ":material/insights:"),
    ("pages/7_train.py", "Train", ":material/model_training:"),
]

st.set_page_config(page_title="ViT Explorer", page_icon=":material/visibility:", layout="wide")
pages = [
    st.Page(path, title=title, icon=icon, default=i == 0)
    for i, (path, title, icon) in enumerate(PAGES)
    if (ROOT / path).exists()
]
page = st.navigation(pages)
sidebar()
try:
    page.run()
finally:
    end_of_run()
