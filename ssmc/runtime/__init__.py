"""What generated modules import: `from ssmc import runtime as rt`."""
from . import initializers as init
from .module import ReferenceModule
from .numeric import (align, block_diagonal, causal_conv, dplr, expm, inv_softplus, linear, matvec, phi1,
                      phi1m, relu, sigmoid, silu, softplus, solve)

__all__ = ["init", "ReferenceModule", "align", "block_diagonal", "causal_conv", "dplr", "expm", "inv_softplus",
           "linear", "matvec", "phi1", "phi1m", "relu", "sigmoid", "silu", "softplus", "solve"]
