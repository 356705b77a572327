"""The server's side of one analysis worker process.

A ``WorkerHandle`` starts the process (spawned: the server has threads, never fork it) and owns a
sender and a receiver thread, so the event loop never blocks on the pipe: requests are queued to
the sender, replies are handed to the loop with ``call_soon_threadsafe``. It knows what the
worker has in hand (``outstanding``, ``awaiting``), so that a worker's death can be answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import threading
from collections.abc import Callable

from ingest.analysis.tracker import TrackerSettings
from ingest.live.messages import AnalyseImage, Exit, RecolourImage, Reply, Request, RunJob, answered
from ingest.live.worker import worker_main

# snapshots get full detection at upsample 1: one image, accuracy first
SNAPSHOT_UPSAMPLE = 1


class WorkerHandle:
    def __init__(
        self,
        index: int,
        settings: TrackerSettings,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[WorkerHandle, Reply], None],
        on_exit: Callable[[WorkerHandle], None],
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=worker_main,
            args=(child, settings, SNAPSHOT_UPSAMPLE),
            name=f"camingest-worker-{index}",
            daemon=True,
        )
        self.process.start()
        child.close()
        self.index = index
        self.sessions = 0  # live sessions assigned (sticky)
        self.outstanding = 0  # messages sent whose reply has not come back (event-loop thread only)
        # snapshots, try-on images and fill jobs sent, not answered, by key: failed with CRASHED
        # if the worker dies
        self.awaiting: dict[tuple[str, int], AnalyseImage | RecolourImage | RunJob] = {}
        self.closing = False
        self._exit_sent = False
        self._on_exit = on_exit
        # bounded by construction: at most one unit per session plus one snapshot or try-on image
        self._outbox: queue.Queue[Request] = queue.Queue()
        self._loop = loop
        self._on_message = on_message
        threading.Thread(target=self._send_loop, name=f"worker-{index}-send", daemon=True).start()
        threading.Thread(target=self._recv_loop, name=f"worker-{index}-recv", daemon=True).start()

    @property
    def idle(self) -> bool:
        """Nothing in hand and not closing."""
        return self.outstanding == 0 and not self.closing

    def send(self, request: Request) -> None:
        if answered(request):
            self.outstanding += 1
            if isinstance(request, AnalyseImage | RecolourImage | RunJob):
                self.awaiting[request.key] = request
        self._outbox.put_nowait(request)

    def _send_loop(self) -> None:
        while True:
            message = self._outbox.get()
            try:
                self.conn.send(message)
            except (BrokenPipeError, OSError):
                return
            if isinstance(message, Exit):
                return

    def _recv_loop(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):  # the process ended: killed, crashed, or closed by us
                if not self.closing:
                    self.process.join(5)  # reaped, for its exit code (this thread, not the loop)
                    with contextlib.suppress(RuntimeError):
                        self._loop.call_soon_threadsafe(self._on_exit, self)
                return
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                self._loop.call_soon_threadsafe(self._on_message, self, message)

    def request_exit(self) -> None:
        self.closing = True
        if not self._exit_sent:  # once: the sender thread ends with it
            self._exit_sent = True
            self.send(Exit())

    def close(self, timeout: float = 5.0) -> None:
        self.request_exit()
        self.process.join(timeout)
        if self.process.is_alive():  # stuck in native code; it ignores SIGTERM (live/worker.py)
            self.process.kill()
            self.process.join(timeout)
