"""Awkward arguments for the fuzz suite.

A ``Case`` draws the arguments of one call.  It is one of three modes:

- ``clean``: every argument is valid, only its representation varies (dtype,
  byte order, strides, negative strides, Fortran order, unaligned memory,
  read-only or zero-stride views, nested lists).  The call must succeed.
- ``fault``: at most one argument is broken in one way (see the kinds
  below); the call must raise the exception that kind documents.
- ``chaos``: any argument may be broken; any documented exception is fine.

Arrays are drawn as a seed, a shape and a few switches, then made with
NumPy's generator: fast, and hypothesis still shrinks the switches.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
from hypothesis import strategies as st

# Fault kinds and the exception each must raise when it is the only fault.
MANDATED = {
    "wrong_type": TypeError,  # None, str, dict, object() where an array is due
    "bad_dtype": TypeError,  # bool, complex, object, str, datetime arrays
    "float_ids": TypeError,  # floats where integer ids are due
    "ndim": ValueError,  # too few or too many axes
    "mismatch": ValueError,  # a size that must equal another argument's
    "bad_value": ValueError,  # an id, size or parameter out of its range
    "nonfinite": ValueError,  # NaN or inf where the entry refuses them
}
# Faults with no single documented outcome: a correct result or any
# documented exception.
LOOSE = ("empty", "huge", "loose")
DOCUMENTED = (TypeError, ValueError, MemoryError)

FLOAT_FAULTS = ("wrong_type", "bad_dtype", "ndim", "nonfinite", "huge", "empty")
ID_FAULTS = ("wrong_type", "bad_dtype", "float_ids", "ndim", "bad_value", "empty")

INT_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
FLOAT_DTYPES = [np.float16, np.float32, np.float64]
WRONG_OBJECTS = [None, "features", b"\x00\x01", {"a": 1}, object(), {1, 2}]
LAYOUTS = ("c", "c", "fortran", "strided", "reversed", "unaligned", "readonly", "broadcast", "list")

_MODES = st.sampled_from(["clean", "clean", "fault", "fault", "fault", "chaos"])


class Case:
    """The arguments of one fuzzed call and the faults put into them."""

    def __init__(self, draw, mode: Optional[str] = None) -> None:
        self.draw = draw
        self.mode = draw(_MODES) if mode is None else mode
        self.faults: list[tuple[str, str]] = []
        self.tracked: list[np.ndarray] = []  # every array handed out (refcount checks)

    # ------------------------------------------------------------- faults

    def fault(self, name: str, kinds: Sequence[str]) -> Optional[str]:
        """The fault to put into argument `name` (None: keep it valid)."""
        if not kinds or self.mode == "clean":
            return None
        if self.mode == "fault" and self.faults:
            return None
        if not self.draw(st.integers(0, 2)) == 0:
            return None
        kind = self.draw(st.sampled_from(list(kinds)))
        self.faults.append((name, kind))
        return kind

    def unfault(self, name: str, kind: str) -> None:
        """Forget a fault that could not be applied (e.g. NaN in an empty array)."""
        if (name, kind) in self.faults:
            self.faults.remove((name, kind))

    def loosen(self, name: str) -> None:
        """Faults of `name` no longer decide the outcome (e.g. NaN in an
        image that an index leaves out of the batch)."""
        self.faults = [(n, "loose" if n == name else k) for n, k in self.faults]

    def expected(self, nonfinite_raises: bool = True):
        """(exception classes allowed, success allowed) for the faults."""
        kinds = [k if nonfinite_raises or k != "nonfinite" else "loose" for _, k in self.faults]
        if not kinds:
            return (), True
        if len(kinds) == 1 and kinds[0] in MANDATED:
            return (MANDATED[kinds[0]],), False
        return DOCUMENTED, True

    @property
    def clean(self) -> bool:
        return not self.faults

    # ---------------------------------------------------------- drawing

    def seed(self) -> int:
        return self.draw(st.integers(0, 2**32 - 1))

    def dim(self, lo: int = 1, hi: int = 6) -> int:
        return self.draw(st.integers(lo, hi))

    def floats(self, name: str, shape: Sequence[int], *, ndims: Sequence[int] = (),
               kinds: Sequence[str] = FLOAT_FAULTS, optional: bool = False,
               scale: float = 1.0, ints_ok: bool = True, lists: bool = True) -> Any:
        """A real-valued array argument of `shape` (``ndims``: the numbers
        of axes the entry accepts, for the ``ndim`` fault)."""
        kinds = [k for k in kinds if not (k == "ndim" and not ndims)]
        kind = self.fault(name, kinds)
        if kind == "wrong_type":
            objs = [o for o in WRONG_OBJECTS if not (optional and o is None)]
            return self.draw(st.sampled_from(objs))
        shape = list(shape)
        if kind == "ndim":
            shape = self._bad_ndim(shape, ndims)
        if kind == "empty":
            if not shape:
                self.unfault(name, kind)
            else:
                shape[self.draw(st.integers(0, len(shape) - 1))] = 0
        rng = np.random.default_rng(self.seed())
        style = self.draw(st.sampled_from(["normal", "normal", "zeros", "const", "wide"]))
        x = np.array(rng.standard_normal(shape) * scale, dtype=np.float64)
        if style == "zeros":
            x[...] = 0.0
        elif style == "const":
            x[...] = scale
        elif style == "wide":
            x *= 10.0 ** rng.integers(-3, 4, size=x.shape)
        if kind in ("nonfinite", "huge"):
            if x.size == 0:
                self.unfault(name, kind)
            else:
                special = [np.nan, np.inf, -np.inf] if kind == "nonfinite" else [3e38, -3e38, 1e30]
                n = int(rng.integers(1, min(x.size, 4) + 1))
                flat = x.reshape(-1)
                flat[rng.choice(x.size, n, replace=False)] = rng.choice(special, n)
        if kind == "bad_dtype":
            return self._bad_dtype(x)
        if kind in ("nonfinite", "huge"):
            dtype = self.draw(st.sampled_from([np.float32, np.float64]))
        else:
            choices = FLOAT_DTYPES + (INT_DTYPES if ints_ok else [])
            dtype = self.draw(st.sampled_from(choices))
        with np.errstate(invalid="ignore", over="ignore"):
            if np.dtype(dtype).kind in "iu":
                info = np.iinfo(dtype)
                x = np.asarray(np.clip(np.round(x * 3), max(info.min, -100), min(info.max, 100)))
            a = x.astype(dtype)
        return self._layout(a, lists, keep_values=kind is not None)

    def ids(self, name: str, shape: Sequence[int], lo: int, hi: int, *,
            also: Sequence[int] = (), ndims: Sequence[int] = (),
            kinds: Sequence[str] = ID_FAULTS, optional: bool = False,
            dtypes: Optional[Sequence[Any]] = None, lists: bool = True) -> Any:
        """An integer array of ids in [lo, hi] (or one of `also`)."""
        kinds = [k for k in kinds if not (k == "ndim" and not ndims)]
        kind = self.fault(name, kinds)
        if kind == "wrong_type":
            objs = [o for o in WRONG_OBJECTS if not (optional and o is None)]
            return self.draw(st.sampled_from(objs))
        shape = list(shape)
        if kind == "ndim":
            shape = self._bad_ndim(shape, ndims)
        if kind == "empty":
            if not shape:
                self.unfault(name, kind)
            else:
                shape[self.draw(st.integers(0, len(shape) - 1))] = 0
        rng = np.random.default_rng(self.seed())
        pool = np.array(list(range(lo, min(hi, lo + 40) + 1)) + [hi] + list(also), dtype=np.int64)
        style = self.draw(st.sampled_from(["any", "any", "one", "few"]))
        if style == "one":
            pool = pool[rng.integers(0, pool.size, 1)]
        elif style == "few":
            pool = pool[rng.integers(0, pool.size, 3)]
        x = np.array(rng.choice(pool, size=shape), dtype=np.int64)
        if kind == "bad_value":
            if x.size == 0:
                self.unfault(name, kind)
            else:
                bad = [v for v in (lo - 1, hi + 1, -1, hi + 1000, 2**31 - 1, -(2**31))
                       if (v < lo or v > hi) and v not in also]
                x.reshape(-1)[rng.integers(0, x.size)] = rng.choice(bad)
        if kind == "bad_dtype":
            return self._bad_dtype(x)
        if kind == "float_ids":
            with np.errstate(over="ignore"):
                return self._layout(x.astype(self.draw(st.sampled_from(FLOAT_DTYPES))), False)
        lo_v, hi_v = int(x.min(initial=0)), int(x.max(initial=0))
        fits = [d for d in (dtypes or INT_DTYPES)
                if np.iinfo(d).min <= lo_v and hi_v <= np.iinfo(d).max]
        return self._layout(x.astype(self.draw(st.sampled_from(fits))), lists,
                            keep_values=kind is not None)

    def size2(self, name: str, lo: int = 1, hi: int = 24, optional: bool = False) -> Any:
        """A spatial size: an int or a pair (H, W) as a tuple, list or
        NumPy integers (`optional`: None is valid too)."""
        kind = self.fault(name, ["wrong_type", "bad_value"])
        if kind == "wrong_type":
            wrong = [2.5, "8", None, True, {1: 2}, (1.5, 2), (True, 2)]
            return self.draw(st.sampled_from([w for w in wrong if not (optional and w is None)]))
        if kind == "bad_value":
            return self.draw(st.sampled_from(
                [0, -3, (0, 4), (4, -1), (1,), (1, 2, 3), 2**62, (2**31, 2**31), (2**62, 2**62),
                 (1, 2**63 - 1)]))
        H, W = self.draw(st.integers(lo, hi)), self.draw(st.integers(lo, hi))
        form = self.draw(st.sampled_from(["int", "tuple", "list", "numpy"]))
        if form == "int":
            return H
        if form == "list":
            return [H, W]
        if form == "numpy":
            return np.array([H, W], dtype=self.draw(st.sampled_from([np.int32, np.int64, np.uint16])))
        return (H, W)

    def number(self, name: str, lo: float, hi: float, *, integer: bool = False,
               bad: Sequence[Any] = (), wrong: Sequence[Any] = ("x", None, [1.0])) -> Any:
        """A scalar parameter in [lo, hi]; faults draw from `bad` (values
        out of range: ValueError) and `wrong` (wrong types: TypeError)."""
        kinds = (["bad_value"] if bad else []) + (["wrong_type"] if wrong else [])
        kind = self.fault(name, kinds)
        if kind == "bad_value":
            return self.draw(st.sampled_from(list(bad)))
        if kind == "wrong_type":
            return self.draw(st.sampled_from(list(wrong)))
        if integer:
            v = self.draw(st.integers(int(lo), int(hi)))
            return self.draw(st.sampled_from([v, np.int64(v), np.int32(v)])) if v <= 2**31 - 1 else v
        return self.draw(st.floats(lo, hi, allow_nan=False))

    # ---------------------------------------------------------- helpers

    def _bad_ndim(self, shape: list, ndims: Sequence[int]) -> list:
        bad = [n for n in range(0, 7) if n not in ndims]
        n = self.draw(st.sampled_from(bad))
        out = shape[-n:] if n and n <= len(shape) else list(shape)
        while len(out) < n:
            out = [self.draw(st.integers(1, 3))] + out
        return out[:n] if n else []

    def _bad_dtype(self, x: np.ndarray) -> np.ndarray:
        kind = self.draw(st.sampled_from(["bool", "complex", "object", "str", "datetime"]))
        with np.errstate(invalid="ignore", over="ignore"):
            if kind == "bool":
                return x != 0
            if kind == "complex":
                return x.astype(np.complex64)
            if kind == "object":
                return x.astype(object)
            if kind == "str":
                return x.astype("U6")
            return np.nan_to_num(x).astype(np.int64).astype("datetime64[s]")

    def _layout(self, a: np.ndarray, lists: bool = True, keep_values: bool = False) -> Any:
        """The same values in another representation (`keep_values`: no
        zero-stride view, which would repeat the first row)."""
        out = self._represent(a, lists, keep_values)
        if isinstance(out, np.ndarray):
            self.tracked.append(out)
        return out

    def _represent(self, a: np.ndarray, lists: bool, keep_values: bool) -> Any:
        if self.draw(st.integers(0, 3)) == 0 and a.dtype.itemsize > 1:
            a = a.astype(a.dtype.newbyteorder())
        layout = self.draw(st.sampled_from(LAYOUTS))
        if layout == "fortran" and a.ndim:  # (asfortranarray makes a 0-d array 1-d)
            return np.asfortranarray(a)
        if layout == "strided" and a.ndim:
            ax = self.draw(st.integers(0, a.ndim - 1))
            big = np.repeat(a, 2, axis=ax)
            return big[(slice(None),) * ax + (slice(None, None, 2),)]
        if layout == "reversed" and a.ndim:
            ax = self.draw(st.integers(0, a.ndim - 1))
            flipped = np.ascontiguousarray(np.flip(a, ax))
            return np.flip(flipped, ax)
        if layout == "unaligned" and a.dtype.itemsize > 1 and a.dtype.kind in "iuf":
            raw = np.zeros(a.nbytes + 1, np.uint8)
            out = raw[1:].view(a.dtype).reshape(a.shape)
            np.copyto(out, a)
            return out
        if layout == "readonly":
            a = a.copy()
            a.flags.writeable = False
            return a
        if layout == "broadcast" and a.ndim and a.shape[0] > 0 and not keep_values:
            return np.broadcast_to(a[:1], a.shape)
        if layout == "list" and lists and 0 < a.size <= 64 and a.dtype.kind in "iuf" and a.dtype.isnative:
            return a.tolist()
        return a


def as_float64(x: Any) -> np.ndarray:
    """The values an argument holds, as float64 (for the twins)."""
    return np.asarray(x, dtype=np.float64)
