"""ViT Explorer: a live Vision Transformer, opened up step by step.

Run with `streamlit run app.py`. This entry script sets up the page, draws the shared
sidebar (model and image pickers, and the forward pass every page shows) and hands over
to the selected page in pages/.
"""

import streamlit as st

from ui.lessons import end_of_run as end_of_lesson_run
from ui.lessons import lesson_panel, mark_panel_drawn
from ui.navigation import sections
from ui.session import end_of_run, sidebar
from vit_core.limits import current_limits

# Classroom mode (VIT_EXPLORER_PUBLIC=1, docs/serving.md): a failing page shows a short message,
# never a traceback with server paths. current_limits() also stops a mistyped cap at start-up.
if current_limits().public:
    st.set_option("client.showErrorDetails", "none")
st.set_page_config(page_title="ViT Explorer", page_icon=":material/visibility:", layout="wide")
page = st.navigation(
    {
        section: [st.Page(p.path, title=p.title, icon=p.icon, default=p.path == "pages/1_overview.py") for p in pages]
        for section, pages in sections().items()
    }
)
try:
    lesson_side, lesson_main = st.sidebar.container(), st.container()  # a running lesson's panel, above the rest
    lesson_panel(sidebar(), page.title, lesson_side, lesson_main)
    mark_panel_drawn()
    page.run()
finally:
    end_of_lesson_run()
    end_of_run()
