"""``camingest`` with BlockBuster watching its event loop: the way the tests start every server.

    python -m tests.blocking_server serve --port 0 --data DIR ...

BlockBuster (the tool aiohttp's own test suite uses) wraps the blocking functions of the standard
library (file reads and writes, os.stat and friends, time.sleep, sqlite3, blocking sockets,
contended locks) so that a call to one of them *from the thread running an event loop* is
caught; the same calls from worker threads and processes are not (asyncio.get_running_loop()
says whether a loop runs in the calling thread). It is activated here before anything else is
imported, so no module holds an unwrapped reference.

BlockBuster raises BlockingError at the call. A server is not a test: a raise inside a Socket.IO
handler becomes a missing ack (the test times out far from the cause) and an ``except Exception``
could swallow it. So here each caught call is *reported* instead: one ``BlockingError`` block on
stderr (the server log) with the call and the stack that made it, once per distinct stack, and
the call then goes on as it would have. tests/conftest.py fails every test whose server log
gained such a block (``blocking_calls``), at its teardown.

ALLOWED below lists, with why, the only places where a blocking call on the loop is accepted.
CAMINGEST_BLOCKBUSTER=off runs the server without any of this (to measure what it costs).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import traceback
from typing import Any

import blockbuster.blockbuster as bb

MARK = "BlockingError"  # what conftest looks for in the log

# (file name ending, functions) in whose frames a blocking call on the loop is accepted
ALLOWED: list[tuple[str, set[str]]] = [
    # aiohttp's StaticResource resolves and stats its directory once, when the routes are built
    # (ingest/server/routes.py add_routes, from build_app): start-up, before the server listens
    ("aiohttp/web_urldispatcher.py", {"__init__"}),
    # NOT third-party, and not fixed here: an analysis worker process is spawned on the loop
    # (multiprocessing's spawn: fork+exec and a pipe write, 4-8 ms here), at start-up before the
    # server listens (LivePipeline.__init__) and when a worker died and is replaced
    # (LivePipeline._worker_exited). Left to ingest/live/ (issue 17.3): the replacement has to
    # stay atomic with moving the dead worker's sessions, snapshots and fill jobs.
    ("ingest/live/handle.py", {"__init__"}),
]

_seen: set[tuple[tuple[str, int], ...]] = set()
_lock = threading.Lock()  # taken only after the check ran (never contended on the loop's behalf)


def _report(func_name: str) -> None:
    stack = traceback.extract_stack()[:-2]  # without this function and the wrapper
    key = tuple((f.filename, f.lineno or 0) for f in stack)
    with _lock:
        if key in _seen:
            return
        _seen.add(key)
    lines = "".join(traceback.format_list(stack[-16:]))
    sys.stderr.write(f"{MARK}: blocking call to {func_name} on the event loop thread\n{lines}")
    sys.stderr.flush()


def reports_in(text: str) -> list[str]:
    """The reports in a server log: each its line, then the stack's (indented) lines."""
    return re.findall(rf"^{MARK}: .*\n(?:  .*\n)*", text, re.MULTILINE)


def _reporting_wrap(
    modules: Any, excluded: Any, func: Any, func_name: str, can_block_functions: Any, can_block_predicate: Any
) -> Any:
    """BlockBuster's own checker, with each BlockingError reported and the call then made."""
    checker = _original_wrap(modules, excluded, func, func_name, [*can_block_functions, *ALLOWED], can_block_predicate)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return checker(*args, **kwargs)
        except bb.BlockingError:  # raised before func ran
            bb._skip.value = True  # as in BlockBuster: what runs below (our report, func) is not checked
            try:
                _report(func_name)
                return func(*args, **kwargs)
            finally:
                bb._skip.value = False

    return wrapper


_original_wrap = bb._wrap_blocking


def activate() -> bb.BlockBuster:
    bb._wrap_blocking = _reporting_wrap  # BlockBusterFunction.activate() builds its checker with it
    buster = bb.BlockBuster()  # every module: the loop thread must not block, whoever calls
    buster.activate()
    return buster


def main() -> int:
    if os.environ.get("CAMINGEST_BLOCKBUSTER") != "off":
        activate()
    from ingest.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
