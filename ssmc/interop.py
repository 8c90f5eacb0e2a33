"""Weights from other libraries' layers into ssmc layers.

`from_transformers_mamba(mixer, cls)`: a HuggingFace transformers `MambaMixer` (the
mixer of each `MambaForCausalLM` block) as a layer of `examples/mamba_block.ssm`'s
`MambaBlock`. The correspondence (transformers name -> ssmc name; the spec computes
what Mamba computes, so the copy is exact):

    in_proj.weight [2E, D]      rows :E -> xz_proj (x branch), rows E: -> z_proj (gate)
    conv1d.weight [E, 1, K]     -> xc_conv [E, K];  conv1d.bias -> xc_conv_bias
    x_proj.weight [R + 2N, E]   rows :R -> dt_proj2, R:R+N -> B_proj, R+N: -> C_proj
    dt_proj.weight [E, R]       -> dt_proj;  dt_proj.bias -> dt_bias
    A_log [E, N]                -> A_log;    D [E] -> Dskip
    out_proj.weight [D, E]      -> y_proj
"""
from __future__ import annotations

import torch

#: transformers' MambaMixer parameter -> the MambaBlock parameters it fills (see above)
TRANSFORMERS_MAMBA_NAMES = {
    "in_proj.weight": ("xz_proj", "z_proj"),
    "conv1d.weight": ("xc_conv",),
    "conv1d.bias": ("xc_conv_bias",),
    "x_proj.weight": ("dt_proj2", "B_proj", "C_proj"),
    "dt_proj.weight": ("dt_proj",),
    "dt_proj.bias": ("dt_bias",),
    "A_log": ("A_log",),
    "D": ("Dskip",),
    "out_proj.weight": ("y_proj",),
}


def from_transformers_mamba(mixer, cls, **kwargs):
    """A `cls` layer (the `MambaBlock` class of a loaded `examples/mamba_block.ssm`) with
    the weights of transformers' `MambaMixer` `mixer`; its dims are read off the mixer.
    `kwargs` go to the constructor (`dtype=`, `device=`, `chunk_size=`...).

    The mixer must be a plain Mamba block: SiLU activation, a conv bias, no bias in the
    in- and out-projections (transformers' defaults); anything else is a ValueError
    naming what differs, since the spec would compute another layer.
    """
    cfg = mixer.config
    why = []
    if getattr(cfg, "hidden_act", "silu") != "silu":
        why.append(f"hidden_act={cfg.hidden_act!r} (the spec uses silu)")
    if not mixer.use_conv_bias:
        why.append("use_conv_bias=False (the spec's conv has a bias)")
    if mixer.use_bias:
        why.append("use_bias=True (the spec's in- and out-projections have no bias)")
    if why:
        raise ValueError("from_transformers_mamba: this MambaMixer is not examples/mamba_block.ssm's layer: "
                         + "; ".join(why))
    E, N = mixer.A_log.shape
    D = mixer.in_proj.weight.shape[1]
    K = mixer.conv1d.weight.shape[-1]
    R = mixer.dt_proj.weight.shape[1]
    layer = cls(D=D, E=E, N=N, R=R, K=K, **kwargs)
    sd = {k: v.detach() for k, v in mixer.state_dict().items()}
    x_proj = sd["x_proj.weight"]
    values = {
        "xz_proj": sd["in_proj.weight"][:E], "z_proj": sd["in_proj.weight"][E:],
        "xc_conv": sd["conv1d.weight"][:, 0, :], "xc_conv_bias": sd["conv1d.bias"],
        "dt_proj2": x_proj[:R], "B_proj": x_proj[R:R + N], "C_proj": x_proj[R + N:],
        "dt_proj": sd["dt_proj.weight"], "dt_bias": sd["dt_proj.bias"],
        "A_log": sd["A_log"], "Dskip": sd["D"], "y_proj": sd["out_proj.weight"],
    }
    own = layer.state_dict()
    missing = sorted(set(own) - set(values))
    if missing:
        raise ValueError(f"from_transformers_mamba: {cls.__name__} has parameters no MambaMixer weight fills: "
                         f"{', '.join(missing)} (is it examples/mamba_block.ssm?)")
    with torch.no_grad():
        for name, value in values.items():
            if name not in own or tuple(own[name].shape) != tuple(value.shape):
                raise ValueError(f"from_transformers_mamba: {cls.__name__}.{name} has shape "
                                 f"{tuple(own[name].shape) if name in own else None}, the mixer's weight "
                                 f"{tuple(value.shape)} (is it examples/mamba_block.ssm?)")
        layer.load_state_dict({k: v.to(own[k].dtype) for k, v in values.items()})
    return layer
