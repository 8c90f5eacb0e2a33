"""What generated modules import: `from ssmc import runtime as rt`."""
from . import initializers as init
from . import torch_ops
from .module import ReferenceModule
from .torch_module import TorchModule
from .numeric import (align, block_diagonal, causal_conv, clamp, dplr, erf, expm, gelu, gelu_tanh, inv_softplus,
                      linear, matvec, maximum, minimum, phi1, phi1m, prev_state, relu, shift, sigmoid, silu, softplus,
                      solve)

__all__ = ["init", "torch_ops", "ReferenceModule", "TorchModule", "align", "block_diagonal", "causal_conv", "clamp",
           "dplr", "erf", "expm", "gelu", "gelu_tanh", "inv_softplus", "linear", "matvec", "maximum", "minimum",
           "phi1", "phi1m", "prev_state", "relu", "shift", "sigmoid", "silu", "softplus", "solve"]
