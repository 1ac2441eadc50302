"""Cross-lingual model fusion engine: URIEL weights, merges, ensembles, evolution, evaluation.

Data flows one way: data + languages -> zoo -> merge/ensemble -> evaluate -> store.
Nothing in this package imports streamlit; the dashboard is a thin view over it.
"""

__version__ = "0.1.0"
