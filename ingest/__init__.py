"""camingest: record a browser camera into a Python server and extract its frames.

The folders read in the order data flows (README.md, "Data flow"): ``server`` (the event loop:
Socket.IO and HTTP) -> ``recording`` (one session from start to end) -> ``live`` (the worker
processes) and ``batch`` (offline jobs) -> ``analysis`` (faces, inside the workers) -> ``media``
(bytes and PyAV); below them all ``storage`` (the data folder and its index).
"""

from __future__ import annotations

from functools import cache

__version__ = "0.1.0"


@cache
def version() -> str:
    """This camingest's version, from its installed metadata (read once per process); the one
    source the command line and the Dask workers' version check read."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("camingest")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"
