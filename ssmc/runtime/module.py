"""The torch.nn.Module that every generated NumPy-reference class extends.

The generated class supplies tables (dims, inputs, state, output, params) and the math
(`_init_<param>` and `_direction`); this base class does what is the same for every
spec: dims, parameter registration and initialization, input validation, scan
orders (reverse, bidirectional, cross2d) by permuting time, merging, `step()`.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
from torch import nn

from ..dims import eval_dim
from ..errors import ShapeError
from . import initializers as _init

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def resolve_dims(cls, given: dict) -> dict[str, int]:
    """Every dim's value: given as a keyword, else its default expression over earlier dims."""
    names = [d for d, _ in cls.DIMS]
    unknown = [k for k in given if k not in names]
    if unknown:
        raise TypeError(f"{cls.__name__}() got an unexpected keyword '{unknown[0]}'; its dims are "
                        + ", ".join(names))
    env: dict[str, int] = {}
    for name, tree in cls.DIMS:
        if name in given and given[name] is not None:
            v = given[name]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{cls.__name__}(): dim {name} must be an int, got {v!r}")
            v = Fraction(int(v))
        else:
            try:
                v = eval_dim(tree, env)
            except ZeroDivisionError:
                raise ValueError(f"{cls.__name__}(): dim {name} divides by zero with {env}") from None
            except OverflowError:
                raise ValueError(f"{cls.__name__}(): dim {name} is too large with {env}") from None
            if v.denominator != 1:
                raise ValueError(f"{cls.__name__}(): dim {name} = {v} is not an integer with {env}")
        if v <= 0:
            raise ValueError(f"{cls.__name__}(): dim {name} must be positive, got {v}")
        env[name] = int(v)
    return env


def _shape(dims, d) -> tuple[int, ...]:
    return tuple(d[x] for x in dims)


def _describe(name, dims, d, lead="batch, length") -> str:
    inner = ", ".join(f"{x}={d[x]}" for x in dims)
    return f"({lead}{', ' if inner else ''}{inner})"


class ReferenceModule(nn.Module):
    """Base of generated float64 NumPy reference modules (no autograd)."""

    NAME = ""
    DESCRIPTION = None
    SOURCE = None
    BACKEND = "numpy"
    DIMS: tuple = ()
    INPUTS: tuple = ()
    STATE: tuple = ()
    OUTPUT: tuple = ()
    PARAMS: tuple = ()
    CONVS: tuple = ()
    SCAN: dict = {}
    ALGORITHM = ""

    def __init__(self, *, seed: int | None = None, generator: torch.Generator | None = None,
                 dtype: torch.dtype | None = None, device=None, **dims):
        super().__init__()
        self.dims = resolve_dims(type(self), dims)
        self._dtype = dtype or torch.float32
        if self._dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{type(self).__name__}(): dtype must be torch.float32 or torch.float64")
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self.directions = self.SCAN["directions"]
        self._copies = len(self.directions) if self.SCAN.get("params") == "separate" else 0
        self.reset_parameters(seed=seed, generator=generator, _register=True)

    # --- parameters ------------------------------------------------------------
    def _param_shape(self, entry) -> tuple[int, ...]:
        name, kind, info = entry
        d = self.dims
        if kind == "param":
            return _shape(info["dims"], d)
        if kind in ("linear_weight", "linear_bias"):
            out = math.prod(_shape(info["out"], d))
            return (out, math.prod(_shape(info["in"], d))) if kind == "linear_weight" else (out,)
        k = info["K"] if isinstance(info["K"], int) else d[info["K"]]
        ch = _shape(info["channels"], d)
        return ch + (k,) if kind == "conv_weight" else ch

    def _draw(self, entry, gen) -> np.ndarray:
        name, kind, info = entry
        d = self.dims
        if kind == "param":
            value = getattr(self, f"_init_{name}")(d, gen)
            value = np.broadcast_to(value, self._param_shape(entry)).copy()
            return value.astype(np.complex128 if info["complex"] else np.float64)
        if kind == "linear_weight":
            out, inn = self._param_shape(entry)
            return _init.linear_weight(out, inn, gen)
        if kind == "linear_bias":
            out = self._param_shape(entry)[0]
            return _init.linear_bias(out, math.prod(_shape(info["in"], d)), gen)
        ch = _shape(info["channels"], d)
        k = self._param_shape(entry)[-1]
        return _init.conv_weight(ch, k, gen) if kind == "conv_weight" else _init.conv_bias(ch, k, gen)

    @torch.no_grad()
    def reset_parameters(self, seed: int | None = None, generator: torch.Generator | None = None,
                         _register: bool = False) -> None:
        """(Re)draw every parameter from its initializer, deterministically for a seed."""
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(0 if seed is None else int(seed))
        for entry in self.PARAMS:
            name, kind, info = entry
            if self._copies:
                value = np.stack([self._draw(entry, generator) for _ in range(self._copies)])
            else:
                value = self._draw(entry, generator)
            cplx = np.iscomplexobj(value)
            dt = self._dtype if not cplx else (torch.complex64 if self._dtype == torch.float32 else torch.complex128)
            # np.array keeps 0-d arrays 0-d (ascontiguousarray would make them 1-d).
            t = torch.from_numpy(np.array(value, order="C")).to(dtype=dt, device=self._device)
            if _register:
                if info.get("frozen"):
                    self.register_buffer(name, t)
                else:
                    setattr(self, name, nn.Parameter(t))
            else:
                getattr(self, name).copy_(t)

    # --- array policy: how tensors become the arrays `_direction` computes on -------
    # The NumPy reference computes on float64 / complex128 numpy arrays, detached;
    # the torch backend overrides these hooks to stay in torch (and in autograd).
    def _params(self, direction: int, compute) -> dict:
        out = {}
        for name, _, _ in self.PARAMS:
            t = getattr(self, name).detach().cpu()
            t = t.to(torch.complex128 if t.is_complex() else torch.float64)
            a = t.numpy()
            out[name] = a[direction] if self._copies else a
        return out

    def _compute_dtype(self, dtype: torch.dtype):
        return torch.float64

    def _to_array(self, t, compute, complex_: bool = False):
        return t.detach().cpu().to(torch.complex128 if complex_ else torch.float64).numpy()

    def _from_array(self, a) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self._device)

    def _take(self, a, perm):
        return a[:, perm]

    def _put_back(self, a, perm):
        back = np.empty_like(a)
        back[:, perm] = a
        return back

    def _stack(self, arrays):
        return np.stack(arrays, axis=-1)

    @staticmethod
    def _is_complex(a) -> bool:
        return bool(np.iscomplexobj(a))

    # --- inputs ----------------------------------------------------------------
    def _check(self, what: str, t, want: tuple, dims_text: str):
        cls = type(self).__name__
        if not isinstance(t, torch.Tensor):
            raise ShapeError(f"{cls}: {what} must be a torch.Tensor of shape {dims_text}, got {type(t).__name__}")
        if t.dtype not in _FLOATS:
            raise ShapeError(f"{cls}: {what} must be float16, bfloat16, float32 or float64 of shape {dims_text}, "
                             f"got {t.dtype}")
        if tuple(t.shape) != want:
            raise ShapeError(f"{cls}: {what} must have shape {dims_text}, got {tuple(t.shape)}")
        if t.device != self._device:
            raise ShapeError(f"{cls}: {what} must be on {self._device}, got {t.device}")

    def _inputs(self, u, kw: dict, d: dict, single: bool):
        cls = type(self).__name__
        names = [n for n, _ in self.INPUTS]
        extra = [k for k in kw if k not in names[1:]]
        if extra:
            raise TypeError(f"{cls}: unexpected keyword '{extra[0]}'; extra inputs are: "
                            + (", ".join(names[1:]) or "none"))
        out = {}
        lead = "batch" if single else "batch, length"
        first = u
        if not isinstance(first, torch.Tensor) or first.dim() < (1 if single else 2):
            name, dims = self.INPUTS[0]
            raise ShapeError(f"{cls}: {name} must be a torch.Tensor of shape {_describe(name, dims, d, lead)}, got "
                             + (str(tuple(first.shape)) if isinstance(first, torch.Tensor) else type(first).__name__))
        b = first.shape[0]
        L = None if single else first.shape[1]
        if not single and L < 1:
            raise ShapeError(f"{cls}: the sequence is empty (length 0)")
        for i, (name, dims) in enumerate(self.INPUTS):
            t = u if i == 0 else kw.get(name)
            if t is None:
                raise TypeError(f"{cls}: missing input '{name}' of shape {_describe(name, dims, d, lead)}")
            want = (b,) + (() if single else (L,)) + _shape(dims, d)
            self._check(name, t, want, _describe(name, dims, d, lead if i == 0 else
                                                 ("batch" if single else f"batch={b}, length={L}")))
        compute = self._compute_dtype(first.dtype)
        for i, (name, _) in enumerate(self.INPUTS):
            out[name] = self._input_array(name, u if i == 0 else kw[name], compute)
        return out, first.dtype, b, L

    def _input_array(self, name: str, t, compute):
        """Input `name` as the array the generated code computes with."""
        return self._to_array(t, compute)

    def _state_in(self, state, b: int, d: dict, compute=None):
        sname, sdims, scplx = self.STATE
        cls = type(self).__name__
        want_x = (b,) + _shape(sdims, d)
        parts = state if self.CONVS else (state,)
        if self.CONVS and (not isinstance(state, (tuple, list)) or len(state) != 1 + len(self.CONVS)):
            raise ShapeError(f"{cls}: the state is a tuple (x, conv tails...) of {1 + len(self.CONVS)} tensors; "
                             f"use init_state() or return_state=True to get one")
        x = parts[0]
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != want_x:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(f"{cls}: the state {sname} must have shape (batch, "
                             + ", ".join(f"{n}={d[n]}" for n in sdims) + f"), got {got}")
        if x.is_complex() and not scplx:
            raise ShapeError(f"{cls}: the state {sname} is real, got a complex tensor")
        out = [self._to_array(x, compute, complex_=scplx)]
        for (wname, ch, k), tail in zip(self.CONVS, parts[1:]):
            kk = k if isinstance(k, int) else d[k]
            want = (b, kk - 1) + _shape(ch, d)
            if not isinstance(tail, torch.Tensor) or tuple(tail.shape) != want:
                raise ShapeError(f"{cls}: the conv tail of {wname} must have shape {want}")
            out.append(self._to_array(tail, compute))
        return tuple(out)

    def _state_out(self, state):
        ts = tuple(self._from_array(s) for s in state)
        return ts if self.CONVS else ts[0]

    # --- the public API ----------------------------------------------------------
    def init_state(self, batch: int, dtype: torch.dtype = torch.float64):
        """The zero state for `batch` sequences (with zero conv tails if the spec has conv)."""
        sname, sdims, scplx = self.STATE
        d = self.dims
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        x = torch.zeros((batch,) + _shape(sdims, d), dtype=cdtype if scplx else dtype, device=self._device)
        if not self.CONVS:
            return x
        tails = [torch.zeros((batch, (k if isinstance(k, int) else d[k]) - 1) + _shape(ch, d),
                             dtype=dtype, device=self._device) for _, ch, k in self.CONVS]
        return (x, *tails)

    def _orders(self, L: int, d: dict):
        """One permutation of time per direction (None: identity)."""
        order = self.SCAN["order"]
        if order == "causal":
            return [None]
        if order == "reverse":
            return [np.arange(L)[::-1]]
        if order == "bidirectional":
            return [None, np.arange(L)[::-1]]
        rows, cols = d[self.SCAN["rows"]], d[self.SCAN["cols"]]
        if rows * cols != L:
            raise ShapeError(f"{type(self).__name__}: cross2d needs length = {self.SCAN['rows']} * "
                             f"{self.SCAN['cols']} = {rows} * {cols} = {rows * cols}, got {L}")
        grid = np.arange(L).reshape(rows, cols)
        row_major = grid.reshape(-1)
        col_major = grid.T.reshape(-1)
        return [row_major, row_major[::-1], col_major, col_major[::-1]]

    def forward(self, u, *, initial_state=None, return_state: bool = False, cu_seqlens=None, **kw):
        """y = layer(u); with return_state=True, (y, final state).

        cu_seqlens: for a packed batch u of shape (1, total, ...), the cumulative sequence
        lengths [0, l1, l1 + l2, ..., total]; each sequence is scanned on its own (no state
        crosses a boundary; a reverse scan starts at each sequence's own last token), and
        initial_state / the returned state have one row per sequence.
        """
        if cu_seqlens is not None:
            return self._forward_packed(u, cu_seqlens, initial_state, return_state, kw)
        d = dict(self.dims)
        sc = self.SCAN
        if sc["order"] == "cross2d":
            for key in (sc["rows"], sc["cols"]):
                if key in kw:
                    d[key] = int(kw.pop(key))
        inputs, dtype, b, L = self._inputs(u, kw, d, single=False)
        multi = len(self.directions) > 1
        if multi and (initial_state is not None or return_state):
            raise ValueError(f"{type(self).__name__}: initial_state and return_state need a causal or reverse "
                             f"scan; this one is {sc['order']}")
        compute = self._compute_dtype(dtype)
        state = self._state_in(initial_state, b, d, compute) if initial_state is not None else None
        ys = []
        final = None
        for i, perm in enumerate(self._orders(L, d)):
            p = self._params(i if self._copies else 0, compute)
            self._perm = perm
            ins = {k: (v if perm is None else self._take(v, perm)) for k, v in inputs.items()}
            self._dir_index = i
            y, final = self._direction(p, d, ins, state, return_state)
            ys.append(y if perm is None else self._put_back(y, perm))
        yt = self._result(self._merge(ys), dtype)
        if return_state:
            return yt, self._state_out(final)
        return yt

    def _forward_packed(self, u, cu_seqlens, initial_state, return_state, kw):
        cls = type(self).__name__
        if not isinstance(u, torch.Tensor) or u.dim() < 2 or u.shape[0] != 1:
            raise ShapeError(f"{cls}: with cu_seqlens, {self.INPUTS[0][0]} must be a packed batch of shape "
                             f"(1, total length, ...), got "
                             + (str(tuple(u.shape)) if isinstance(u, torch.Tensor) else type(u).__name__))
        bounds = [int(v) for v in torch.as_tensor(cu_seqlens).reshape(-1).tolist()]
        total = u.shape[1]
        if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != total or any(
                b <= a for a, b in zip(bounds, bounds[1:])):
            raise ShapeError(f"{cls}: cu_seqlens must rise strictly from 0 to the total length {total}, "
                             f"got {bounds}")
        spans = list(zip(bounds, bounds[1:]))
        n = len(spans)
        parts = None
        if initial_state is not None:
            parts = initial_state if isinstance(initial_state, (tuple, list)) else (initial_state,)
            if any(not isinstance(p, torch.Tensor) or p.shape[0] != n for p in parts):
                raise ShapeError(f"{cls}: with cu_seqlens, initial_state needs one row per sequence ({n})")
        # Sequences of equal length run together as one batch.
        groups: dict[int, list[int]] = {}
        for i, (a, b) in enumerate(spans):
            groups.setdefault(b - a, []).append(i)
        ys: list = [None] * n
        finals: list = [None] * n
        for length, members in groups.items():
            def gather(t):
                return torch.cat([t[:, spans[i][0]:spans[i][1]] for i in members], dim=0)
            state = None
            if parts is not None:
                rows = torch.as_tensor(members, device=parts[0].device)
                picked = tuple(p.index_select(0, rows) for p in parts)
                state = picked if self.CONVS else picked[0]
            out = self.forward(gather(u), initial_state=state, return_state=return_state,
                               **{k: gather(v) if isinstance(v, torch.Tensor) and v.dim() >= 2 else v
                                  for k, v in kw.items()})
            y, final = out if return_state else (out, None)
            for j, i in enumerate(members):
                ys[i] = y[j: j + 1]
                if return_state:
                    finals[i] = tuple(f[j: j + 1] for f in (final if self.CONVS else (final,)))
        y = torch.cat(ys, dim=1)
        if not return_state:
            return y
        stacked = tuple(torch.cat([f[k] for f in finals], dim=0) for k in range(len(finals[0])))
        return y, (stacked if self.CONVS else stacked[0])

    def _result(self, y, dtype: torch.dtype) -> torch.Tensor:
        """The output tensor in the input's dtype (its complex counterpart if complex)."""
        if self._is_complex(y):
            dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        return self._from_array(y).to(dtype)

    def _merge(self, ys):
        if len(ys) == 1:
            return ys[0]
        merge = self.SCAN["merge"]
        if merge == "add":
            return sum(ys[1:], ys[0])
        if merge == "mean":
            return sum(ys[1:], ys[0]) / len(ys)
        return self._stack(ys)

    def step(self, u_t, state, **kw):
        """One token, u_t (batch, *input dims) -> (y_t, new state); or several new tokens,
        u_t (batch, T, *input dims) -> (y (batch, T, ...), new state). The state keeps its size."""
        if self.SCAN["order"] != "causal":
            raise ValueError(f"{type(self).__name__}: step() needs a causal scan; this one is {self.SCAN['order']}")
        d = self.dims
        if isinstance(u_t, torch.Tensor) and u_t.dim() == 2 + len(self.INPUTS[0][1]):
            return self.forward(u_t, initial_state=state, return_state=True, **kw)
        inputs, dtype, b, _ = self._inputs(u_t, kw, d, single=True)
        compute = self._compute_dtype(dtype)
        st = self._state_in(state, b, d, compute)
        p = self._params(0, compute)
        self._dir_index = 0
        y, final = self._direction(p, d, {k: v[:, None] for k, v in inputs.items()}, st, True)
        return self._result(y[:, 0], dtype), self._state_out(final)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.dims.items()) + f", backend={self.BACKEND}"
