"""ViT Explorer: a live Vision Transformer, opened up step by step.

Run with `streamlit run app.py`. This entry script sets up the page, draws the shared
sidebar (model and image pickers, and the forward pass every page shows) and hands over
to the selected page in pages/.
"""

import streamlit as st

from ui.navigation import PAGES
from ui.session import end_of_run, sidebar

st.set_page_config(page_title="ViT Explorer", page_icon=":material/visibility:", layout="wide")
page = st.navigation([st.Page(p.path, title=p.title, icon=p.icon, default=i == 0) for i, p in enumerate(PAGES)])
try:
    sidebar()
    page.run()
finally:
    end_of_run()
