"""``camingest`` command line (PROTOCOL.md): serve, sessions, reprocess, export, import, close.

Bad arguments or an unknown session: one line on stderr, exit status 2 (argparse's) or 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ingest import version
from ingest.config import Settings
from ingest.exceptions import IngestError, StoreBusyError
from storage.store import SessionStore


def _add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None, help="data folder (default ./data or $CAMINGEST_DATA_DIR)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="camingest", description="Record a browser camera and extract its frames.")
    parser.add_argument("--version", action="version", version=f"camingest {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8080; 0 picks a free one)")
    serve.add_argument("--workers", type=int, default=None, help="analysis worker processes (default: one per core)")
    serve.add_argument("--no-analysis", action="store_true", help="store and serve only; no decoding or landmarks")
    serve.add_argument("--token", default=None, help="access token every client must present (or $CAMINGEST_TOKEN)")
    serve.add_argument("--tls-cert", default=None, metavar="FILE", help="serve https/wss with this certificate (PEM)")
    serve.add_argument("--tls-key", default=None, metavar="FILE", help="the certificate's private key (PEM)")
    serve.add_argument("--pages", default=None, metavar="DIR",
                       help="serve your own pages from DIR at /pages/ (same origin: their io() reaches camingest)")
    _add_data(serve)

    sessions = commands.add_parser("sessions", help="list stored sessions")
    _add_data(sessions)

    reprocess = commands.add_parser("reprocess", help="landmark every frame of stored sessions on all cores")
    reprocess.add_argument("session_ids", nargs="*", metavar="SESSION_ID")
    reprocess.add_argument("--all", action="store_true", help="every stopped or failed session")
    reprocess.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    reprocess.add_argument("--cluster", default=None, metavar="ADDRESS",
                           help="run the jobs on the Dask cluster whose scheduler is ADDRESS (tcp://host:8786; "
                                "or $CAMINGEST_CLUSTER)")  # fmt: skip
    _add_data(reprocess)

    export = commands.add_parser("export", help="re-encode a session with an overlay drawn on every frame")
    export.add_argument("session_id", metavar="SESSION_ID")
    export.add_argument("--out", type=Path, required=True, help="FILE.mp4 (H.264) or FILE.webm (VP8)")
    export.add_argument("--overlay", choices=["landmarks", "lips", "none"], default="landmarks")
    _add_data(export)
    close = commands.add_parser("close", help="end a session left recording: finalize it and landmark every frame")
    close.add_argument("session_id", metavar="SESSION_ID")
    close.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    _add_data(close)
    importer = commands.add_parser("import", help="store a video file (WebM, MP4, MOV) as a session and landmark it")
    importer.add_argument("file", type=Path, metavar="FILE")
    importer.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    _add_data(importer)
    gallery = commands.add_parser("gallery", help="the people faces are identified as: add, list, remove")
    actions = gallery.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="enrol a person from face photos (one face per photo)")
    add.add_argument("name", metavar="NAME")
    add.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    _add_data(add)
    listing = actions.add_parser("list", help="the people in the gallery")
    _add_data(listing)
    remove = actions.add_parser("remove", help="forget a person: their descriptors and photos")
    remove.add_argument("name", metavar="NAME")
    _add_data(remove)
    return parser


def cmd_gallery(settings: Settings, args: argparse.Namespace) -> int:
    from ingest.analysis.stills import enrol_photos
    from ingest.server.enrolment import as_ingest_error, check_photo_count
    from storage.gallery import Gallery, GalleryError, check_name

    gallery = Gallery(settings.data_dir)
    try:
        if args.action == "list":
            people = gallery.people()
            for person in people:
                print(f"{person['name']}\t{person['images']} photo{'s' if person['images'] != 1 else ''}")
            if not people:
                print("the gallery is empty; add someone with: camingest gallery add NAME PHOTO...")
            return 0
        name = check_name(args.name)
        if args.action == "remove":
            removed = gallery.remove(name)
            print(f"removed {name} and {removed} photo{'s' if removed != 1 else ''}")
            return 0
        check_photo_count(len(args.images), settings.max_photos_per_request)
        photos = []
        for path in args.images:
            if not path.is_file():
                raise IngestError(f"{path} is not a file")
            photos.append((path.read_bytes(), path.name))
        from ingest.analysis.engine.predictor import prepare_engine

        prepare_engine(settings.landmark_engine)
        enrolled, refusal = enrol_photos(
            photos, settings.landmark_engine, settings.max_snapshot_pixels, settings.max_enrol_analysis_pixels,
            settings.descriptor_engine,
        )
        if refusal is not None:
            raise refusal
        count = gallery.add(name, enrolled)
        print(f"enrolled {name}: {count} photo{'s' if count != 1 else ''}")
        return 0
    except GalleryError as exc:
        raise as_ingest_error(exc) from None


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        data_dir=args.data,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        workers=getattr(args, "workers", None),
        analysis=False if getattr(args, "no_analysis", False) else None,
        token=getattr(args, "token", None),
        tls_cert=getattr(args, "tls_cert", None),
        tls_key=getattr(args, "tls_key", None),
        pages_dir=getattr(args, "pages", None),
        cluster=getattr(args, "cluster", None),
    )


def _open_store(settings: Settings, exclusive: bool = False) -> SessionStore:
    """The data folder's store; ``exclusive`` takes the server's lock (and repairs what a crash
    left, as a starting server does), so nothing changes under a running server."""
    if not SessionStore.found(settings.data_dir):
        raise IngestError(f"no camingest data in {settings.data_dir}")
    store = SessionStore(settings.data_dir)
    try:
        store.open(recover=exclusive)
    except StoreBusyError:
        raise IngestError(
            f"a camingest server is running on {settings.data_dir}; it ends sessions whose client is gone "
            f"after session_idle_s ({settings.session_idle_s:g} s) itself, or stop it first"
        ) from None
    return store


def cmd_close(settings: Settings, session_id: str) -> int:
    """End a session left recording (offline): as the server's idle expiry would."""
    from tqdm import tqdm

    from ingest.analysis.tracker import TrackerSettings
    from ingest.batch.local import Reprocessor

    store = _open_store(settings, exclusive=True)
    try:
        row = store.get_row(session_id)
        if not store.end_session(session_id, "close"):
            raise IngestError(f"session {session_id} is not recording (it is {row['state']})")
        with Reprocessor(store, TrackerSettings.from_settings(settings), settings.worker_count) as reprocessor:
            jobs = reprocessor.jobs(session_id)
            with tqdm(total=sum(j.end - j.start for j in jobs), unit="frame", desc=session_id) as bar:
                result = reprocessor.run(session_id, jobs, bar.update)  # also finalizes
    finally:
        store.close()
    print(f"{session_id}: closed; {result['frames']} frames, faces in {result['frames_with_faces']}")
    return 0


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


def cmd_reprocess(settings: Settings, session_ids: list[str], all_sessions: bool) -> int:
    from tqdm import tqdm

    from ingest.analysis.tracker import TrackerSettings
    from ingest.batch.local import Reprocessor

    if bool(session_ids) == all_sessions:
        raise IngestError("name SESSION_IDs or --all, not both or neither")
    store = _open_store(settings)
    try:
        if all_sessions:
            session_ids = [s["id"] for s in store.list_summaries() if s["state"] != "recording"]
        for session_id in session_ids:
            store.get_row(session_id)  # unknown ids fail before any work starts
        reprocessor: Reprocessor
        tracker = TrackerSettings.from_settings(settings)
        if settings.cluster:
            from ingest.batch.cluster import ClusterReprocessor

            reprocessor = ClusterReprocessor(store, tracker, settings.cluster)
        else:
            reprocessor = Reprocessor(store, tracker, settings.worker_count)
        failed = 0
        with reprocessor:
            plan = []
            for session_id in session_ids:
                try:
                    plan.append((session_id, reprocessor.jobs(session_id)))
                except OSError as exc:  # this session only: the others go on
                    failed += 1
                    reason = exc.strerror or type(exc).__name__
                    print(f"{session_id}: failed, its landmarks are kept: its stored stream cannot be read ({reason})",
                          file=sys.stderr)  # fmt: skip
            total = sum(job.end - job.start for _, jobs in plan for job in jobs)
            where = f" on {settings.cluster} ({reprocessor.workers} threads)" if settings.cluster else ""
            with tqdm(total=total, unit="frame", desc=f"reprocess{where}", dynamic_ncols=True) as bar:
                for session_id, result in reprocessor.run_many(plan, bar.update):
                    if "error" in result:
                        failed += 1
                        bar.write(f"{session_id}: failed, its landmarks are kept: {result['error']}")
                    else:
                        bar.write(f"{session_id}: {result['frames']} frames, faces in {result['frames_with_faces']}")
    except KeyboardInterrupt:
        print("camingest reprocess: interrupted; the previous landmarks are kept", file=sys.stderr)
        return 130
    finally:
        store.close()
    if failed:
        print(f"camingest reprocess: {failed} of {len(session_ids)} sessions failed", file=sys.stderr)
        return 1
    return 0


def cmd_import(settings: Settings, source: Path) -> int:
    from tqdm import tqdm

    from ingest.recording.importer import import_video

    if not source.is_file():
        raise IngestError(f"no such file: {source}")
    store = SessionStore(settings.data_dir)
    store.open(recover=False)
    try:
        with tqdm(total=source.stat().st_size, unit="B", unit_scale=True, desc=f"import {source.name}") as bar:
            session_id = import_video(store, source, settings.max_import_bytes, bar.update,
                                      limits=settings.reader_limits())  # fmt: skip
    finally:
        store.close()
    print(f"imported {source} as session {session_id}")
    return cmd_reprocess(settings, [session_id], False)


def cmd_export(settings: Settings, session_id: str, out: Path, overlay: str) -> int:
    from tqdm import tqdm

    from ingest.media.overlay import check_overlay
    from ingest.media.render import output_format, render

    fmt, overlay = output_format(out), check_overlay(overlay)
    store = _open_store(settings)
    try:
        row = store.get_row(session_id)
        source = store.stream_source(session_id)
        faces = store.landmark_tail(session_id).refresh().faces if overlay != "none" else {}
        tmp = out.with_name(out.name + ".tmp")
        try:
            with tqdm(total=row["frames"] or None, unit="frame", desc=f"export {out.name}", dynamic_ncols=True) as bar:
                written = render(source.path, tmp, fmt, overlay, faces, bar.update)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        store.close()
    print(f"{out}: {written} frames, overlay {overlay}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = _settings(args)
        local_analysis = not (args.command == "reprocess" and settings.cluster)  # a cluster's workers load their own
        if args.command in ("serve", "reprocess", "import", "close") and settings.analysis and local_analysis:
            from ingest.analysis.engine.predictor import prepare_engine

            prepare_engine(settings.landmark_engine)
        if args.command == "serve":
            from ingest.server.app import serve

            asyncio.run(serve(settings))
            return 0
        if args.command == "sessions":
            return cmd_sessions(settings)
        if args.command == "reprocess":
            return cmd_reprocess(settings, args.session_ids, args.all)
        if args.command == "close":
            return cmd_close(settings, args.session_id)
        if args.command == "import":
            return cmd_import(settings, args.file)
        if args.command == "export":
            return cmd_export(settings, args.session_id, args.out, args.overlay)
        if args.command == "gallery":
            return cmd_gallery(settings, args)
    except (IngestError, RuntimeError, OSError, ValueError) as exc:
        print(f"camingest {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
