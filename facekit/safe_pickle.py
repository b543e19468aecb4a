"""Reading official checkpoints that are pickles, without ever running what the pickle asks for.

Paddle's `.pdparams` is a pickled dict name -> numpy array. A pickle can name any importable callable
(`os.system` included), so we resolve globals from a fixed allow-list of our own objects and refuse
everything else before it is called.
"""
from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from facekit.errors import UserError

_NUMPY_RECONSTRUCT = np._core.multiarray._reconstruct

# (module, name) as written in the file -> the object we hand back. Nothing is imported by name.
NUMPY_GLOBALS: Mapping[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Protocol-2 pickles written by Python 3 encode bytes through _codecs.encode(str, "latin1").
    ("_codecs", "encode"): lambda text, encoding="latin1": text.encode(encoding),
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose `find_class` only answers from an explicit allow-list."""

    def __init__(self, file: io.BufferedIOBase, allowed: Mapping[tuple[str, str], Any], source: str):
        super().__init__(file)
        self._allowed = allowed
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UserError(
                f"{self._source}: refused to load: the pickle asks for '{module}.{name}', which a "
                "checkpoint of this kind never needs (possibly malicious); nothing was executed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UserError(f"{self._source}: refused to load: unexpected persistent id {pid!r} in the pickle")


def restricted_load(path: str | Path, allowed: Mapping[tuple[str, str], Any]) -> Any:
    """Unpickle `path` resolving globals only through `allowed`; every failure is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    data = path.read_bytes()
    if not data:
        raise UserError(f"{path}: the file is empty")
    try:
        return RestrictedUnpickler(io.BytesIO(data), allowed, str(path)).load()
    except UserError:
        raise
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
        raise UserError(f"{path}: not a readable pickle (truncated or corrupt: {err.__class__.__name__}: {err})") from None


def load_pdparams(path: str | Path) -> dict[str, np.ndarray]:
    """Read a Paddle `.pdparams` (pickled dict of numpy arrays) without Paddle and without executing code."""
    state = restricted_load(path, NUMPY_GLOBALS)
    if not isinstance(state, Mapping):
        raise UserError(f"{path}: expected a dict of parameter arrays, found {type(state).__name__}")
    bad = [name for name, value in state.items() if not isinstance(value, np.ndarray)]
    if bad:
        raise UserError(f"{path}: entries that are not arrays: {', '.join(map(str, bad[:5]))}")
    return dict(state)
