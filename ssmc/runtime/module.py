"""The torch.nn.Module that every generated NumPy-reference class extends.

The generated class supplies tables (dims, inputs, state, output, params) and the math
(`_init_<param>` and `_direction`); this base class does what is the same for every
spec: dims, parameter registration and initialization, input validation, scan
orders (reverse, bidirectional, cross2d) by permuting time, merging, `step()`.
"""
from __future__ import annotations

import math
import re
import sys
from fractions import Fraction

import numpy as np
import torch
from torch import nn

from ..dims import eval_dim
from ..errors import ShapeError
from . import initializers as _init

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_COMPLEX = (torch.complex64, torch.complex128)


def _real_class(dtype: torch.dtype) -> torch.dtype:
    """A complex input's precision class: complex64 computes like float32, complex128 like
    float64 (Decision (24))."""
    return {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(dtype, dtype)


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
    # A block-diagonal state matrix needs its dim split into equal blocks (the compiler
    # checked the defaults; dims given here may break that).
    for name, blocks in cls.BLOCKS:
        k = env[blocks] if isinstance(blocks, str) else blocks
        if env[name] % k:
            count = f"{blocks} = {k}" if isinstance(blocks, str) else f"{k}"
            raise ValueError(f"{cls.__name__}(): dim {name} = {env[name]} is not divisible by the block count of "
                             f"its block_diagonal state matrix (blocks = {count})")
    return env


def _shape(dims, d) -> tuple[int, ...]:
    return tuple(d[x] for x in dims)


def _describe(name, dims, d, lead="batch, length") -> str:
    inner = ", ".join(f"{x}={d[x]}" for x in dims)
    return f"({lead}{', ' if inner else ''}{inner})"


def _boundaries(cls: str, cu_seqlens, total: int) -> list[int]:
    """cu_seqlens as a list of ints rising strictly from 0 to `total`: an integer tensor
    (any device but meta) or a sequence of ints; anything else is one ShapeError."""
    want = f"cu_seqlens must rise strictly from 0 to the total length {total}, as a 1-d integer tensor or a list of ints"
    if isinstance(cu_seqlens, torch.Tensor):
        if cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype.is_complex or cu_seqlens.dtype == torch.bool:
            raise ShapeError(f"{cls}: {want}; got a {cu_seqlens.dtype} tensor")
        if cu_seqlens.dim() != 1 or cu_seqlens.is_meta:
            raise ShapeError(f"{cls}: {want}; got a tensor of shape {tuple(cu_seqlens.shape)} on {cu_seqlens.device}")
        bounds = [int(v) for v in cu_seqlens.tolist()]
    elif isinstance(cu_seqlens, np.ndarray) and cu_seqlens.ndim == 1 and cu_seqlens.dtype.kind in "iu":
        bounds = [int(v) for v in cu_seqlens.tolist()]
    elif isinstance(cu_seqlens, (list, tuple)) and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in cu_seqlens):
        bounds = [int(v) for v in cu_seqlens]
    else:
        shown = repr(cu_seqlens)
        raise ShapeError(f"{cls}: {want}; got {shown if len(shown) <= 80 else shown[:77] + '...'}")
    if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != total or any(b <= a for a, b in zip(bounds, bounds[1:])):
        raise ShapeError(f"{cls}: {want}; got {bounds}")
    return bounds


def _grid_size(cls: str, name: str, v) -> int:
    """A cross2d rows or cols size given to forward(): a positive int (or 0-d integer
    tensor), never truncated from a float."""
    if isinstance(v, torch.Tensor) and v.dim() == 0 and not v.is_meta and not (
            v.dtype.is_floating_point or v.dtype.is_complex or v.dtype == torch.bool):
        v = int(v.item())
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ShapeError(f"{cls}: {name} (a cross2d size) must be a positive int, got {v!r}")
    return int(v)


def _rebuild(spec: tuple, qualname: str, module: str = ""):
    """An empty instance of class `qualname` of the module compiled from `spec` (spec text,
    file name, backend): the first half of unpickling a layer; pickle then restores its
    state (parameters, dims, attributes) with __setstate__. `module` is the name of the
    module the layer's class was in: in the same process (a deepcopy) that module itself,
    if it still holds that spec, so the copy has the original's class."""
    from ..api import module_for_spec
    mod = sys.modules.get(module)
    if mod is None or getattr(mod, "__ssmc_spec__", None) != tuple(spec):
        text, filename, backend = spec
        mod = module_for_spec(text, filename, backend)
    cls = getattr(mod, qualname)
    return cls.__new__(cls)


class ReferenceModule(nn.Module):
    """Base of generated float64 NumPy reference modules (no autograd)."""

    NAME = ""
    DESCRIPTION = None
    SOURCE = None
    BACKEND = "numpy"
    DIMS: tuple = ()
    INPUTS: tuple = ()
    # The inputs declared `complex` (they take complex64 / complex128 tensors).
    COMPLEX_INPUTS: tuple = ()
    STATE: tuple = ()
    # A block with several states: ((name, dims, complex), ...) in declaration order; the
    # carried state is then a tuple of them (then the conv tails), never a bare tensor.
    STATES: tuple = ()
    OUTPUT: tuple = ()
    PARAMS: tuple = ()
    CONVS: tuple = ()
    READS_PREV_STATE = False
    BLOCKS: tuple = ()
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
        # Per tensor, whether it has the leading direction axis: the scan's `params =`,
        # unless the spec set it for that tensor (its table row then says "separate").
        scan_separate = self.SCAN.get("params") == "separate" and len(self.directions) > 1
        self._separate = {name: bool(info.get("separate", scan_separate)) if len(self.directions) > 1 else False
                          for name, _, info in self.PARAMS}
        self._copies = len(self.directions) if any(self._separate.values()) else 0
        self.reset_parameters(seed=seed, generator=generator, _register=True)

    # --- pickling ----------------------------------------------------------------
    def __reduce_ex__(self, protocol):
        # A class from ssmc.load / ssmc.loads lives in a module made at run time, which no
        # other process (nor pickle's import by name) can find: such a layer pickles as its
        # spec (text, file name, backend) and class name, recompiled when it is unpickled
        # (the cache makes that fast; in the same process the loaded module is reused),
        # plus the state every nn.Module pickles (parameters, buffers, dims, attributes).
        # A class written to a file (`ssmc compile -o`) or a subclass defined in an
        # importable module pickles by reference as usual.
        spec = getattr(sys.modules.get(type(self).__module__), "__ssmc_spec__", None)
        if spec is None:
            return super().__reduce_ex__(protocol)
        return _rebuild, (spec, type(self).__qualname__, type(self).__module__), self.__getstate__()

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
        # The fan-in is the width K (for the bias too, whose shape has no K; channels may be none).
        k = info["K"] if isinstance(info["K"], int) else d[info["K"]]
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
            if self._separate[name]:
                value = np.stack([self._draw(entry, generator) for _ in range(self._copies)])
            else:
                value = self._draw(entry, generator)
            cplx = np.iscomplexobj(value)
            dt = self._dtype if not cplx else (torch.complex64 if self._dtype == torch.float32 else torch.complex128)
            # np.array keeps 0-d arrays 0-d (ascontiguousarray would make them 1-d).
            t = torch.from_numpy(np.array(value, order="C")).to(dtype=dt, device=self._device)
            if _register:
                # Straight into the tables, not through setattr / register_buffer: a spec's
                # name may also be a method or attribute of the module (forward, to, training,
                # directions, ...), and it stays the state_dict key all the same (see __setattr__).
                if info.get("frozen"):
                    self._buffers[name] = t
                else:
                    self._parameters[name] = nn.Parameter(t)
            else:
                self._tensor(name).copy_(t)

    def _tensor(self, name: str) -> torch.Tensor:
        """The param (or frozen buffer) the spec calls `name`, whatever the module's own
        attribute of that name is."""
        t = self._parameters.get(name)
        return t if t is not None else self._buffers[name]

    def __setattr__(self, name: str, value) -> None:
        # A spec's param may share its name with a plain attribute (training,
        # directions, chunk_size, ...): the attribute lives in __dict__, the param in _parameters or
        # _buffers, and assigning one never replaces or unregisters the other.
        if any(name == p for p, _, _ in type(self).PARAMS):
            if isinstance(value, nn.Parameter) and name in self._parameters:
                self._parameters[name] = value
                return
            if isinstance(value, torch.Tensor) and name in self._buffers:
                self._buffers[name] = value
                return
            if not isinstance(value, torch.Tensor):
                object.__setattr__(self, name, value)
                return
        super().__setattr__(name, value)

    # torch's versions go through getattr, which finds the module's own attribute first.
    def get_parameter(self, target: str) -> nn.Parameter:
        """The parameter `target` (a spec's param by its name, even one like `forward`)."""
        t = self._parameters.get(target)
        return t if t is not None else super().get_parameter(target)

    def get_buffer(self, target: str) -> torch.Tensor:
        """The buffer `target` (a frozen param by its name, even one like `training`)."""
        t = self._buffers.get(target)
        return t if t is not None else super().get_buffer(target)

    # --- array policy: how tensors become the arrays `_direction` computes on -------
    # The NumPy reference computes on float64 / complex128 numpy arrays, detached;
    # the torch backend overrides these hooks to stay in torch (and in autograd).
    def _params(self, direction: int, compute) -> dict:
        out = {}
        for name, _, _ in self.PARAMS:
            t = self._tensor(name).detach().cpu()
            t = t.to(torch.complex128 if t.is_complex() else torch.float64)
            a = t.numpy()
            out[name] = a[direction] if self._separate[name] else a
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
    def _sync_device(self) -> None:
        """Make `_device` the device inputs and states must be on (the torch backend
        follows its parameters)."""

    def _check(self, what: str, t, want: tuple, dims_text: str, cplx: bool = False):
        cls = type(self).__name__
        if not isinstance(t, torch.Tensor):
            raise ShapeError(f"{cls}: {what} must be a torch.Tensor of shape {dims_text}, got {type(t).__name__}")
        if cplx and t.dtype not in _COMPLEX:
            raise ShapeError(f"{cls}: {what} is declared complex: it must be complex64 or complex128 of shape "
                             f"{dims_text}, got {t.dtype}")
        if not cplx and t.dtype in _COMPLEX:
            raise ShapeError(f"{cls}: {what} is real (declare `input {what}[...] complex` for complex values): it "
                             f"must be float16, bfloat16, float32 or float64, got {t.dtype}")
        if not cplx and t.dtype not in _FLOATS:
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
                                                 ("batch" if single else f"batch={b}, length={L}")),
                        cplx=name in self.COMPLEX_INPUTS)
        dtype = _real_class(first.dtype)
        compute = self._compute_dtype(dtype)
        for i, (name, _) in enumerate(self.INPUTS):
            out[name] = self._input_array(name, u if i == 0 else kw[name], compute)
        return out, dtype, b, L

    def _input_array(self, name: str, t, compute):
        """Input `name` as the array the generated code computes with (complex ones in the
        complex dtype of the compute dtype)."""
        return self._to_array(t, compute, complex_=name in self.COMPLEX_INPUTS)

    def _states(self) -> tuple:
        return self.STATES or (self.STATE,)

    def _tupled(self) -> bool:
        """Whether the carried state is a tuple (several states or conv tails) or a tensor."""
        return bool(self.CONVS) or len(self._states()) > 1

    def _check_state(self, state, b: int, d: dict) -> tuple:
        """The parts of a given state (the states, conv tails...), each checked for its type,
        shape, dtype and device against what the module would make (one line each)."""
        states = self._states()
        cls = type(self).__name__
        wants = []
        for sname, sdims, scplx in states:
            inner = ", ".join(f"{n}={d[n]}" for n in sdims)
            wants.append((f"the state {sname}", (b,) + _shape(sdims, d), f"(batch, {inner})", scplx))
        for wname, ch, k, *cplx in self.CONVS:
            kk = k if isinstance(k, int) else d[k]
            want = (b, kk - 1) + _shape(ch, d)
            kind = "prev" if re.search(r"_prev\d*$", wname) else "conv"
            wants.append((f"the {kind} tail of {wname}", want, str(want), bool(cplx and cplx[0])))
        if self._tupled() and (not isinstance(state, (tuple, list)) or len(state) != len(wants)):
            what = ", ".join(s[0] for s in states) if len(states) > 1 else "x"
            what += ", conv tails..." if self.CONVS else ""
            shapes = "" if len(states) == 1 else " of shapes " + ", ".join(text for _, _, text, _ in wants)
            raise ShapeError(f"{cls}: the state is a tuple ({what}) of {len(wants)} tensors{shapes}; "
                             f"use init_state() or return_state=True to get one")
        parts = tuple(state) if self._tupled() else (state,)
        for (what, want, text, cplx), t in zip(wants, parts):
            floats = "float16, bfloat16, float32 or float64" + (" (or complex64, complex128)" if cplx else "")
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != want:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ShapeError(f"{cls}: {what} must have shape {text}, got {got}")
            if t.is_complex() and not cplx:
                raise ShapeError(f"{cls}: {what} is real, got a complex tensor ({t.dtype})")
            if not (t.dtype in _FLOATS or (cplx and t.dtype in (torch.complex64, torch.complex128))):
                raise ShapeError(f"{cls}: {what} must be {floats}, got {t.dtype}")
            if t.device != self._device:
                raise ShapeError(f"{cls}: {what} must be on {self._device}, got {t.device}")
        return parts

    def _state_in(self, state, b: int, d: dict, compute=None):
        parts = self._check_state(state, b, d)
        states = self._states()
        # A tail is complex where its CONVS entry says so (prev of a complex value).
        cplx = tuple(st[2] for st in states) + tuple(bool(c[3:] and c[3]) for c in self.CONVS)
        return tuple(self._to_array(t, compute, complex_=cplx[i]) for i, t in enumerate(parts))

    def _check_init_state(self, batch, dtype) -> None:
        cls = type(self).__name__
        if isinstance(batch, (bool, np.bool_)) or not isinstance(batch, (int, np.integer)) or batch < 0:
            raise ShapeError(f"{cls}.init_state(): batch must be an int >= 0, got {batch!r}")
        if dtype not in _FLOATS:
            raise ShapeError(f"{cls}.init_state(): dtype must be float16, bfloat16, float32 or float64 "
                             f"(a complex state takes the matching complex dtype), got {dtype!r}")

    def _state_out(self, state):
        ts = tuple(self._from_array(s) for s in state)
        return ts if self._tupled() else ts[0]

    # --- the public API ----------------------------------------------------------
    def init_state(self, batch: int, dtype: torch.dtype = torch.float64):
        """The zero state for `batch` sequences (with zero conv tails if the spec has conv)."""
        self._check_init_state(batch, dtype)
        d = self.dims
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        xs = [torch.zeros((batch,) + _shape(sdims, d), dtype=cdtype if scplx else dtype, device=self._device)
              for _, sdims, scplx in self._states()]
        if not self._tupled():
            return xs[0]
        tails = [torch.zeros((batch, (k if isinstance(k, int) else d[k]) - 1) + _shape(ch, d),
                             dtype=cdtype if cplx and cplx[0] else dtype, device=self._device)
                 for _, ch, k, *cplx in self.CONVS]
        return (*xs, *tails)

    def _orders(self, L: int, d: dict):
        """One permutation of time per direction (None: identity)."""
        order = self.SCAN["order"]
        if order in ("causal", "global"):
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

    def forward(self, u, /, *, initial_state=None, return_state: bool = False, cu_seqlens=None, **kw):
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
        grid = {}
        if sc["order"] == "cross2d":
            for key in (sc["rows"], sc["cols"]):
                if key in kw:
                    d[key] = grid[key] = _grid_size(type(self).__name__, key, kw.pop(key))
        inputs, dtype, b, L = self._inputs(u, kw, d, single=False)
        multi = len(self.directions) > 1
        if multi and (initial_state is not None or return_state):
            raise ValueError(f"{type(self).__name__}: initial_state and return_state need a causal or reverse "
                             f"scan; this one is {sc['order']}")
        compute = self._compute_dtype(dtype)
        state = self._state_in(initial_state, b, d, compute) if initial_state is not None else None
        if b == 0:
            return self._empty_batch(
                lambda u1, st, kw1: self.forward(u1, initial_state=st, return_state=return_state, **kw1, **grid),
                u, initial_state, kw)
        ys = []
        final = None
        for i, perm in enumerate(self._orders(L, d)):
            p = self._params(i, compute)
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
        total = u.shape[1]
        bounds = _boundaries(cls, cu_seqlens, total)
        spans = list(zip(bounds, bounds[1:]))
        n = len(spans)
        parts = None
        if initial_state is not None:
            # One row per sequence, checked whole (the groups below pick rows from it).
            self._sync_device()
            parts = self._check_state(initial_state, n, self.dims)
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
                state = picked if self._tupled() else picked[0]
            out = self.forward(gather(u), initial_state=state, return_state=return_state,
                               **{k: gather(v) if isinstance(v, torch.Tensor) and v.dim() >= 2 else v
                                  for k, v in kw.items()})
            y, final = out if return_state else (out, None)
            for j, i in enumerate(members):
                ys[i] = y[j: j + 1]
                if return_state:
                    finals[i] = tuple(f[j: j + 1] for f in (final if self._tupled() else (final,)))
        y = torch.cat(ys, dim=1)
        if not return_state:
            return y
        stacked = tuple(torch.cat([f[k] for f in finals], dim=0) for k in range(len(finals[0])))
        return y, (stacked if self._tupled() else stacked[0])

    def _empty_batch(self, call, u, state, kw):
        """An empty batch: `call` on one row of zeros, joined to the (empty, checked) inputs
        and state so autograd still reaches them, and none of its rows kept. Every backend and
        algorithm then gives outputs and states of the right shape, dtype and device."""
        def pad(t):
            return torch.cat([t, t.new_zeros((1,) + tuple(t.shape[1:]))], dim=0)

        if state is not None:
            state = tuple(pad(p) for p in state) if self._tupled() else pad(state)
        out = call(pad(u), state, {k: pad(v) for k, v in kw.items()})

        def cut(o):
            return tuple(cut(x) for x in o) if isinstance(o, tuple) else o[:0]
        return cut(out)

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

    def step(self, u_t, /, state, **kw):
        """One token, u_t (batch, *input dims) -> (y_t, new state); or several new tokens,
        u_t (batch, T, *input dims) -> (y (batch, T, ...), new state). The state keeps its size."""
        if self.SCAN["order"] == "global":
            raise ValueError(f"{type(self).__name__}: step() needs a causal scan; this one is global, whose every "
                             f"output reads the state after the whole sequence (call forward() on all of it)")
        if self.SCAN["order"] != "causal":
            raise ValueError(f"{type(self).__name__}: step() needs a causal scan; this one is {self.SCAN['order']}")
        d = self.dims
        if isinstance(u_t, torch.Tensor) and u_t.dim() == 2 + len(self.INPUTS[0][1]):
            return self.forward(u_t, initial_state=state, return_state=True, **kw)
        inputs, dtype, b, _ = self._inputs(u_t, kw, d, single=True)
        compute = self._compute_dtype(dtype)
        st = self._state_in(state, b, d, compute)
        if b == 0:
            return self._empty_batch(lambda u1, st1, kw1: self.step(u1, st1, **kw1), u_t, state, kw)
        p = self._params(0, compute)
        self._dir_index = 0
        y, final = self._direction(p, d, {k: v[:, None] for k, v in inputs.items()}, st, True)
        return self._result(y[:, 0], dtype), self._state_out(final)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.dims.items()) + f", backend={self.BACKEND}"
