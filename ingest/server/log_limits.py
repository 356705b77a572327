"""The operator's log, bounded against clients: what a client's bad input costs there.

A client's bad input (a malformed packet, an oversized event, a connection that never
authenticates) is one warning line, never a traceback: tracebacks are for the server's own bugs.
Repeats are summarised: one line per client key (a connection, an address) per ``every_s``
seconds, which says how many like it were left out; and at most ``LINES_PER_S`` such lines a
second over all clients together (many addresses), the next line saying how many were dropped.
The keys remembered are bounded too (the least recently seen are forgotten first).
"""

from __future__ import annotations

import collections
import logging
import time

LINES_PER_S = 10.0  # all clients together; a burst of as many lines is allowed
MAX_KEYS = 4096


class LogLimiter:
    def __init__(self, logger: logging.Logger, every_s: float, lines_per_s: float = LINES_PER_S) -> None:
        self.logger = logger
        self.every_s = every_s
        self.lines_per_s = lines_per_s
        self._keys: collections.OrderedDict[str, list[float]] = collections.OrderedDict()  # key -> [logged at, left out]
        self._tokens = lines_per_s
        self._filled_at = time.monotonic()
        self._dropped = 0  # lines of any key left out by the overall budget since the last line
        self.lines = 0  # lines written (for the tests and the metrics)

    def warning(self, key: str, message: str, *args: object) -> bool:
        """Log ``message % args`` about client ``key`` unless it had a line within ``every_s``
        or the overall budget is spent; whether it was written."""
        now = time.monotonic()
        entry = self._keys.get(key)
        if entry is not None:
            self._keys.move_to_end(key)
            if now - entry[0] < self.every_s:
                entry[1] += 1
                return False
        self._tokens = min(self.lines_per_s, self._tokens + (now - self._filled_at) * self.lines_per_s)
        self._filled_at = now
        if self._tokens < 1:
            self._dropped += 1
            if entry is not None:
                entry[1] += 1
            return False
        self._tokens -= 1
        notes = []
        if entry is not None and entry[1]:
            notes.append(f"{entry[1]:.0f} more like it from {key} in the last {now - entry[0]:.0f} s")
        if self._dropped:
            notes.append(f"{self._dropped} lines about other clients left out")
            self._dropped = 0
        text = message % args if args else message
        self.logger.warning("%s%s", text, f" ({'; '.join(notes)})" if notes else "")
        self.lines += 1
        self._keys[key] = [now, 0.0]
        while len(self._keys) > MAX_KEYS:
            self._keys.popitem(last=False)
        return True
