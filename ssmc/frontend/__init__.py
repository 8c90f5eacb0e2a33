"""Front end: `.ssm` text -> typed AST with source positions."""
from .parser import parse

__all__ = ["parse"]
