"""Streamlit helpers shared by the pages: state (store, runner, workspace), widgets, job views.

Pages stay thin: they read the store, call the engine, and draw. Nothing here runs method logic.
"""
