"""Third-party progress output (coremltools' per-op conversion bars, its MIL pass lists, onnxscript's
optimizer passes) stays out of the user's terminal unless `distilswap --verbose` (or DISTILSWAP_VERBOSE=1)
asks for it."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterable, Iterator

VERBOSE = "DISTILSWAP_VERBOSE"


def configure_logging(verbose: bool, packages: Iterable[str]) -> None:
    """Info lines of our `packages` as plain messages; other libraries' only from WARNING up (onnxscript logs
    each optimizer pass at INFO), all of them with --verbose."""
    logging.basicConfig(format="%(message)s")
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    for name in packages:
        logging.getLogger(name).setLevel(logging.INFO)


@contextlib.contextmanager
def quiet_third_party(*loggers: str) -> Iterator[None]:
    """Silence stdout/stderr and the named loggers (below ERROR) for the duration, unless verbose."""
    if os.environ.get(VERBOSE):
        yield
        return
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
