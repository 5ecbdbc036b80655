"""Serving recipes: Streamlit replicas behind nginx (serve_replicas.py)."""
