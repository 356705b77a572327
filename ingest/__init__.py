"""camingest: record a browser camera into a Python server and extract its frames.

Data flow, one module per step: browser -> ``protocol`` (Socket.IO events) -> ``session``
(per-session order and state) -> ``webm`` (blobs to standalone units) -> ``storage.store``
(durable chunks + SQLite index) -> ``pipeline`` (decode + landmarks in worker processes).
"""

__version__ = "0.1.0"
