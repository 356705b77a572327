"""``camingest`` command line (PROTOCOL.md): serve, sessions, reprocess, export.

Bad arguments or an unknown session: one line on stderr, exit status 2 (argparse's) or 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ingest.config import Settings
from ingest.exceptions import IngestError
from storage.store import SessionStore


def _add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None, help="data folder (default ./data or $CAMINGEST_DATA_DIR)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="camingest", description="Record a browser camera and extract its frames.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8080; 0 picks a free one)")
    serve.add_argument("--workers", type=int, default=None, help="analysis worker processes (default: one per core)")
    serve.add_argument("--no-analysis", action="store_true", help="store and serve only; no decoding or landmarks")
    _add_data(serve)

    sessions = commands.add_parser("sessions", help="list stored sessions")
    _add_data(sessions)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        data_dir=args.data,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        workers=getattr(args, "workers", None),
        analysis=False if getattr(args, "no_analysis", False) else None,
    )


def _open_store(settings: Settings) -> SessionStore:
    if not (settings.data_dir / "index.sqlite3").exists():
        raise IngestError(f"no camingest data in {settings.data_dir}")
    store = SessionStore(settings.data_dir)
    store.open(recover=False)
    return store


def cmd_sessions(settings: Settings) -> int:
    store = _open_store(settings)
    try:
        rows = store.list_summaries()
    finally:
        store.close()
    print(f"{'id':<24} {'state':<9} {'created (UTC)':<24} {'chunks':>6} {'MB':>8} {'frames':>7} {'seconds':>8}")
    for s in rows:
        print(
            f"{s['id']:<24} {s['state']:<9} {s['created_at']:<24} {s['chunks']:>6} "
            f"{s['bytes'] / 1e6:>8.2f} {s['frames']:>7} {s['duration_ms'] / 1000:>8.1f}"
        )
    print(f"{len(rows)} session(s) in {settings.data_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = _settings(args)
        if args.command == "serve":
            from ingest.server import serve

            asyncio.run(serve(settings))
            return 0
        if args.command == "sessions":
            return cmd_sessions(settings)
    except (IngestError, RuntimeError, OSError, ValueError) as exc:
        print(f"camingest {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
