"""Streamlit-side shared code of the explorer: pickers, caching, session state, messages.

Pages import from here; nothing in `vit_core` or `vit_plots` imports streamlit.
"""
