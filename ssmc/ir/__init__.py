"""The IR: a networkx graph of immutable ops, with facts filled in by passes."""
from .graph import Graph, Op

__all__ = ["Graph", "Op"]
