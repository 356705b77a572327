"""``camingest`` command line (PROTOCOL.md): serve, sessions, reprocess, export, import, close,
gallery, token, prune.

Bad usage: argparse's usage line and exit status 2. Anything else that goes wrong (an unknown
session, a data folder that is not one): one line on stderr, exit status 1. Progress bars are
drawn only on a terminal; log lines other than warnings only by ``serve`` (an operator's log).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ingest import version
from ingest.config import Settings
from ingest.exceptions import IngestError, StoreBusyError
from storage.store import SessionStore


def _add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None, help="data folder (default ./data or $CAMINGEST_DATA_DIR)")
    parser.add_argument("--index", default=None, metavar="URL",
                        help="the index: postgresql://USER@HOST:PORT/DB (default: DATA/index.sqlite3; $CAMINGEST_INDEX)")
    parser.add_argument("--store", default=None, metavar="URL",
                        help="session bytes in object storage: s3://BUCKET/PREFIX (default: the data folder; $CAMINGEST_STORE)")
    parser.add_argument("--s3-endpoint", default=None, metavar="URL",
                        help="the S3 API's address (SeaweedFS, MinIO; default: AWS; $CAMINGEST_S3_ENDPOINT)")


def _worker_count(raw: str) -> int:
    """``--workers``: 1 or more processes, or 0 for one per core (argparse says which flag)."""
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of processes; give 1 or more (0 = one per core)")
    return value


def _add_workers(parser: argparse.ArgumentParser, what: str = "worker processes") -> None:
    parser.add_argument("--workers", type=_worker_count, default=None, metavar="N", help=f"{what} (default: one per core)")


def _bar(**options: Any) -> Any:
    """A tqdm progress bar on stderr when it is a terminal; nothing is drawn into pipes and files
    (its ``write`` still prints)."""
    from tqdm import tqdm

    return tqdm(disable=None, dynamic_ncols=True, **options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="camingest", description="Record a browser camera and extract its frames.")
    parser.add_argument("--version", action="version", version=f"camingest {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8080; 0 picks a free one)")
    _add_workers(serve, "analysis worker processes")
    serve.add_argument("--no-analysis", action="store_true", help="store and serve only; no decoding or landmarks")
    serve.add_argument("--token", default=None, help="the admin token (or $CAMINGEST_TOKEN)")
    _add_secret(serve)
    serve.add_argument("--webhook", action="append", default=None, metavar="URL",
                       help="POST every event to URL (repeatable; or $CAMINGEST_WEBHOOKS, comma-separated)")
    serve.add_argument("--webhook-secret", default=None, metavar="SECRET",
                       help="signs the webhooks' deliveries (or $CAMINGEST_WEBHOOK_SECRET)")
    serve.add_argument("--audit-log", default=None, metavar="FILE",
                       help="append the audit trail (JSON lines) to FILE (or $CAMINGEST_AUDIT_LOG)")
    serve.add_argument("--tls-cert", default=None, metavar="FILE", help="serve https/wss with this certificate (PEM)")
    serve.add_argument("--tls-key", default=None, metavar="FILE", help="the certificate's private key (PEM)")
    serve.add_argument("--pages", default=None, metavar="DIR",
                       help="serve your own pages from DIR at /pages/ (same origin: their io() reaches camingest)")
    serve.add_argument("--redis", default=None, metavar="URL",
                       help="join a cluster of nodes over this Redis (redis://HOST:PORT/0; needs --index and --store)")
    serve.add_argument("--node-id", default=None, metavar="ID", help="this node's name in the cluster (default: host-pid)")
    serve.add_argument("--node-url", default=None, metavar="URL", help="this node's own address, for the other nodes")
    _add_data(serve)

    nodes = commands.add_parser("nodes", help="the nodes of a cluster, with their sessions, workers and load")
    nodes.add_argument("--redis", default=None, metavar="URL", help="the cluster's Redis ($CAMINGEST_REDIS)")

    sessions = commands.add_parser("sessions", help="list stored sessions")
    _add_data(sessions)

    reprocess = commands.add_parser("reprocess", help="landmark every frame of stored sessions on all cores")
    reprocess.add_argument("session_ids", nargs="*", metavar="SESSION_ID")
    reprocess.set_defaults(usage_error=reprocess.error)
    reprocess.add_argument("--all", action="store_true", help="every stopped or failed session")
    _add_workers(reprocess)
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
    _add_workers(close)
    _add_data(close)
    importer = commands.add_parser("import", help="store a video file (WebM, MP4, MOV) as a session and landmark it")
    importer.add_argument("file", type=Path, metavar="FILE")
    _add_workers(importer)
    _add_data(importer)
    migrate = commands.add_parser("migrate", help="copy a data folder's sessions and gallery into PostgreSQL + object storage")
    migrate.add_argument("--from", dest="source", type=Path, required=True, metavar="DATA",
                         help="the data folder to copy (not served meanwhile)")  # fmt: skip
    _add_data(migrate)
    gallery = commands.add_parser("gallery", help="the people faces are identified as: add, list, remove")
    actions = gallery.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="enrol a person from face photos (one face per photo)")
    add.add_argument("name", metavar="NAME")
    add.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    add.add_argument("--confirm", action="store_true",
                     help="enrol even if the face looks like someone already enrolled, or the name is another face's")  # fmt: skip
    _add_data(add)
    listing = actions.add_parser("list", help="the people in the gallery")
    _add_data(listing)
    remove = actions.add_parser("remove", help="forget a person: their descriptors and photos")
    remove.add_argument("name", metavar="NAME")
    _add_data(remove)

    token = commands.add_parser("token", help="signed tokens for the people who record or view: create, revoke")
    token_actions = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = token_actions.add_parser("create", help="print a token signed with the first key of --secret-file")
    create.add_argument("--role", required=True, choices=["admin", "viewer", "recorder"])
    create.add_argument("--sub", required=True, metavar="ID", help="the app's id for the person (stored on their sessions)")
    create.add_argument("--ttl", default="1h", metavar="AGE", help="how long it is valid: 2h, 30m, 7d (default 1h)")
    create.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                        help="merged into the meta of every session it starts (repeatable)")
    create.add_argument("--max-sessions", type=int, default=None, metavar="N", help="sessions it may start in all")
    create.add_argument("--read", action="store_true", help="a recorder token that may also read its own sessions")
    _add_secret(create)
    revoke = token_actions.add_parser("revoke", help="refuse a token (by its jti) on every server from now on")
    revoke.add_argument("jti", metavar="JTI")
    _add_data(revoke)

    prune = commands.add_parser("prune", help="delete sessions that ended long ago (held ones are kept)")
    prune.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 30d, 12h")
    prune.add_argument("--dry-run", action="store_true", help="only say which sessions would be deleted")
    _add_data(prune)
    return parser


def _add_secret(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--secret-file", default=None, metavar="FILE",
                        help="signing keys as kid=secret lines, the first mints (or $CAMINGEST_SECRET)")


def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    from ingest.recording.retention import parse_age
    from ingest.server.principals import TokenAuthority, load_keys

    if args.action == "create":
        meta = {}
        for item in args.meta:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise IngestError(f"--meta {item!r}: give it as KEY=VALUE")
            meta[key] = value
        authority = TokenAuthority(settings, load_keys(settings))
        token, claims = authority.mint(args.role, args.sub, parse_age(args.ttl), meta or None, args.max_sessions,
                                       args.read)  # fmt: skip
        print(token)
        print(f"jti {claims['jti']}, role {claims['role']}, sub {claims['sub']}, valid for {args.ttl}", file=sys.stderr)
        return 0
    store = settings.open_store()  # revoking may come before the first server
    store.open(recover=False)
    try:
        added = store.tokens.revoke(args.jti, "cli")
    finally:
        store.close()
    print(f"token {args.jti} {'revoked' if added else 'was revoked already'}: every server refuses it within "
          f"{settings.revocation_poll_s:g} s")  # fmt: skip
    return 0


def cmd_prune(settings: Settings, older_than: str, dry_run: bool) -> int:
    """Delete sessions that ended more than ``older_than`` ago, held ones kept (and named)."""
    from ingest.recording.retention import expired, parse_age
    from ingest.server.webhooks import offline_event

    age = parse_age(older_than)
    store = _open_store(settings, command="prune")
    deleted = 0
    try:
        for row in expired(store, age, settings.clock_offset_s, include_held=True):
            if row["held"]:
                print(f"{row['id']}: kept (held), ended {row['ended_at']}")
                continue
            if dry_run:
                print(f"{row['id']}: would be deleted, ended {row['ended_at']}")
                deleted += 1
                continue
            try:
                summary = store.summary(row["id"])
            except IngestError:  # deleted meanwhile (by a server's retention)
                continue
            if store.delete(row["id"]):
                deleted += 1
                offline_event(settings, store, "session.deleted", {"reason": "prune", "session": summary}, row["id"])
                print(f"{row['id']}: deleted, ended {row['ended_at']}")
    finally:
        store.close()
    verb = "would be deleted" if dry_run else "deleted"
    print(f"{deleted} session(s) that ended more than {older_than} ago {verb}")
    return 0


def cmd_gallery(settings: Settings, args: argparse.Namespace) -> int:
    from ingest.analysis.stills import enrol_photos
    from ingest.server.enrolment import check_look_alikes, check_photo_count
    from storage.gallery import GalleryError, check_name

    if args.action == "add":
        check_photo_count(len(args.images), settings.max_photos_per_request)
        name = check_name(args.name)
        photos = []
        for path in args.images:
            if not path.is_file():
                raise IngestError(f"{path} is not a file")
            photos.append((path.read_bytes(), path.name))
        store = settings.open_store()  # enrolling may start a data folder
        store.open(recover=False)
    else:
        store = _open_store(settings)
    gallery = store.gallery
    try:
        if args.action == "list":
            people = gallery.people()
            for person in people:
                count = person["images"]
                print(f"{person['name']}\t{count} photo{'s' if count != 1 else ''}")
            if not people:
                print("the gallery is empty; add someone with: camingest gallery add NAME PHOTO...")
            return 0
        if args.action == "remove":
            # a name (its key: any spelling of it), or an id as the pages show it
            found = next((p for p in gallery.people() if p["id"] == args.name), None) or gallery.find(args.name)
            if found is None:
                raise GalleryError(f"the gallery holds no person named {check_name(args.name)!r}", unknown=True)
            removed = gallery.remove(found["id"])
            count = removed["images_removed"]
            print(f"removed {removed['name']} and {count} photo{'s' if count != 1 else ''}")
            return 0
        from ingest.analysis.engine.predictor import prepare_engine

        prepare_engine(settings.landmark_engine)
        enrolled, refusal = enrol_photos(
            photos, settings.landmark_engine, settings.max_snapshot_pixels, settings.max_enrol_analysis_pixels,
            settings.descriptor_engine,
        )
        if refusal is not None:
            raise refusal
        if not args.confirm:
            check_look_alikes(gallery, name, enrolled, settings.identity_threshold, "run it again with --confirm")
        person = gallery.add(name, enrolled)
        count = person["images"]
        print(f"enrolled {person['name']}: {count} photo{'s' if count != 1 else ''}")
        return 0
    finally:
        store.close()


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        data_dir=getattr(args, "data", None),
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        workers=getattr(args, "workers", None),
        analysis=False if getattr(args, "no_analysis", False) else None,
        token=getattr(args, "token", None),
        tls_cert=getattr(args, "tls_cert", None),
        tls_key=getattr(args, "tls_key", None),
        pages_dir=getattr(args, "pages", None),
        cluster=getattr(args, "cluster", None),
        index=getattr(args, "index", None),
        store=getattr(args, "store", None),
        s3_endpoint=getattr(args, "s3_endpoint", None),
        redis=getattr(args, "redis", None) if args.command == "serve" else None,
        node_id=getattr(args, "node_id", None),
        node_url=getattr(args, "node_url", None),
        secret_file=getattr(args, "secret_file", None),
        webhooks=tuple(args.webhook) if getattr(args, "webhook", None) else None,
        webhook_secret=getattr(args, "webhook_secret", None),
        audit_log=getattr(args, "audit_log", None),
    )


def _no_data(settings: Settings) -> str:
    where = settings.data_dir.resolve()
    return f"no camingest data folder at {where}; give the folder camingest serve uses with --data DIR"


def _open_store(settings: Settings, exclusive: bool = False, command: str = "") -> SessionStore:
    """The data folder's store; ``exclusive`` takes the server's lock (and repairs what a crash
    left, as a starting server does), so nothing changes under a running server."""
    if not SessionStore.found(settings.data_dir, settings.index):
        raise IngestError(_no_data(settings))
    store = settings.open_store()
    try:
        store.open(recover=exclusive, holder=f"camingest {command}, pid {os.getpid()}")
    except StoreBusyError:
        held_by = store.lock_holder()
        raise IngestError(
            f"a camingest server{f' ({held_by})' if held_by else ''} is running on {settings.data_dir}; it ends "
            f"sessions whose client is gone after session_idle_s ({settings.session_idle_s:g} s) itself, or stop it first"
        ) from None
    return store


def cmd_close(settings: Settings, session_id: str) -> int:
    """End a session left recording (offline): as the server's idle expiry would."""
    from ingest.analysis.tracker import TrackerSettings
    from ingest.batch.local import Reprocessor

    store = _open_store(settings, exclusive=True, command="close")
    try:
        row = store.get_row(session_id)
        if not store.end_session(session_id, "close"):
            raise IngestError(f"session {session_id} is not recording (it is {row['state']})")
        with Reprocessor(store, TrackerSettings.from_settings(settings), settings.worker_count) as reprocessor:
            jobs = reprocessor.jobs(session_id)
            with _bar(total=sum(j.end - j.start for j in jobs), unit="frame", desc=session_id) as bar:
                result = reprocessor.run(session_id, jobs, bar.update)  # also finalizes
    finally:
        store.close()
    print(f"{session_id}: closed; {result['frames']} frames, faces in {result['frames_with_faces']}")
    return 0


def cmd_sessions(settings: Settings) -> int:
    store = _open_store(settings, command="sessions")
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
    """Re-landmark sessions. One that cannot be (it failed while recording, its stream does not
    read) is skipped and named; the others are done; the exit status is 1 if any was skipped."""
    from ingest.analysis.tracker import TrackerSettings
    from ingest.batch.local import Reprocessor

    store = _open_store(settings, command="reprocess")
    failed: list[str] = []
    try:
        if all_sessions:
            session_ids = [s["id"] for s in store.list_summaries() if s["state"] != "recording"]
            if not session_ids:
                print(f"no stopped or failed sessions in {settings.data_dir}")
                return 0
        rows = {session_id: store.get_row(session_id) for session_id in session_ids}  # unknown ids: before any work
        reprocessor: Reprocessor
        tracker = TrackerSettings.from_settings(settings)
        if settings.cluster:
            from ingest.batch.cluster import ClusterReprocessor

            reprocessor = ClusterReprocessor(store, tracker, settings.cluster)
        else:
            reprocessor = Reprocessor(store, tracker, settings.worker_count)
        with reprocessor:
            plan = []
            # planning reads every stream once (where each frame lies): its own bar, in bytes
            with _bar(total=sum(row["bytes"] for row in rows.values()), unit="B", unit_scale=True,
                      desc="reading the streams") as reading:  # fmt: skip
                for session_id, row in rows.items():
                    before = reading.n
                    problem = None
                    if row["state"] == "failed" and not row["frames"]:
                        problem = f"it failed while recording ({row['error'] or 'no reason recorded'}) and has no frames"
                    else:
                        try:
                            plan.append((session_id, reprocessor.jobs(session_id, reading.update)))
                        except IngestError as exc:  # this session only: the others go on
                            problem = exc.message
                        except OSError as exc:
                            problem = f"its stored stream cannot be read ({exc.strerror or type(exc).__name__})"
                    if problem is not None:
                        failed.append(session_id)
                        reading.write(f"{session_id}: skipped: {problem}", file=sys.stderr)
                    reading.update(row["bytes"] - (reading.n - before))
            total = sum(job.end - job.start for _, jobs in plan for job in jobs)
            where = f" on {settings.cluster} ({reprocessor.workers} threads)" if settings.cluster else ""
            with _bar(total=total, unit="frame", desc=f"reprocess{where}") as bar:
                for session_id, result in reprocessor.run_many(plan, bar.update):
                    if "error" in result:
                        failed.append(session_id)
                        bar.write(f"{session_id}: failed, its landmarks are kept: {result['error']}", file=sys.stderr)
                    else:
                        bar.write(f"{session_id}: {result['frames']} frames, faces in {result['frames_with_faces']}")
    except KeyboardInterrupt:
        print("camingest reprocess: interrupted; the previous landmarks are kept", file=sys.stderr)
        return 130
    finally:
        store.close()
    if failed:
        done = len(session_ids) - len(failed)
        print(f"camingest reprocess: {len(failed)} of {len(session_ids)} sessions failed ({', '.join(failed)}); "
              f"{done} reprocessed", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def cmd_import(settings: Settings, source: Path) -> int:
    from ingest.recording.importer import import_video

    if not source.is_file():
        raise IngestError(f"no such file: {source}")
    store = settings.open_store()
    store.open(recover=False)
    try:
        with _bar(total=source.stat().st_size, unit="B", unit_scale=True, desc=f"import {source.name}") as bar:
            session_id = import_video(store, source, settings.max_import_bytes, bar.update,
                                      limits=settings.reader_limits())  # fmt: skip
    finally:
        store.close()
    print(f"imported {source} as session {session_id}")
    return cmd_reprocess(settings, [session_id], False)


def cmd_export(settings: Settings, session_id: str, out: Path, overlay: str) -> int:
    from ingest.media.overlay import check_overlay
    from ingest.media.render import output_format, render

    fmt, overlay = output_format(out), check_overlay(overlay)
    store = _open_store(settings, command="export")
    try:
        row = store.get_row(session_id)
        if not row["frames"]:
            why = f"it failed while recording: {row['error']}" if row["state"] == "failed" and row["error"] else "it has no video frames"
            raise IngestError(f"session {session_id} cannot be exported: {why}")
        source = store.stream_source(session_id)
        faces = store.landmark_tail(session_id).refresh().faces if overlay != "none" else {}
        tmp = out.with_name(out.name + ".tmp")
        try:
            with _bar(total=row["frames"], unit="frame", desc=f"export {out.name}") as bar:
                written = render(source.path, tmp, fmt, overlay, faces, bar.update)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        store.close()
    print(f"{out}: {written} frames, overlay {overlay}")
    return 0


def cmd_nodes(redis_url: str | None) -> int:
    """List the nodes of the cluster whose Redis is ``redis_url``."""
    import redis

    url = redis_url or os.environ.get("CAMINGEST_REDIS")
    if not url:
        raise IngestError("name the cluster's Redis: --redis redis://HOST:PORT/0 (or CAMINGEST_REDIS)")
    from ingest.server.cluster import KEY

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2, decode_responses=True)
        entries = [json.loads(raw) for key in client.scan_iter(KEY + "*") if (raw := client.get(key))]
    except redis.RedisError as exc:
        raise IngestError(f"cannot reach Redis at {url} ({exc})") from None
    print(f"{'node':<32} {'url':<28} {'sessions':>8} {'workers':>7} {'busy':>4} {'load':>5} version")
    for entry in sorted(entries, key=lambda e: e["id"]):
        print(f"{entry['id']:<32} {entry.get('url', ''):<28} {entry.get('sessions', 0):>8} {entry.get('workers', 0):>7} "
              f"{entry.get('busy_workers', 0):>4} {entry.get('load', 0):>5.2f} {entry.get('version', '')}")  # fmt: skip
    print(f"{len(entries)} node(s)")
    return 0


def cmd_migrate(settings: Settings, source_dir: Path) -> int:
    """Copy ``source_dir`` into the index and object storage the settings name (resumable)."""
    from tqdm import tqdm

    from storage.migrate import migrate, sizes

    if settings.index is None or settings.store is None:
        raise IngestError("migrate copies into PostgreSQL and object storage: give --index postgresql://... and --store s3://...")
    if not SessionStore.found(source_dir):
        raise IngestError(f"no camingest data in {source_dir}")
    source = SessionStore(source_dir)
    try:
        source.open(recover=True)  # its lock: no server may change it meanwhile
    except StoreBusyError:
        raise IngestError(f"a camingest server is running on {source_dir}; stop it, then migrate") from None
    target = settings.open_store()
    try:
        target.open(recover=False)
        with tqdm(total=sizes(source), unit="B", unit_scale=True, desc="migrate") as bar:
            report = migrate(source, target, bar.update)
    finally:
        target.close()
        source.close()
    print(f"migrated {len(report.copied)} sessions ({len(report.skipped)} already there, checked) and "
          f"{report.people} gallery people into {settings.index.split('@')[-1]} and {settings.store}")  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "reprocess" and bool(args.session_ids) == args.all:
        args.usage_error("name SESSION_IDs or --all, not both or neither")  # exit 2, as argparse
    # serve keeps an operator's log on stderr; the other commands say only what goes wrong
    level = logging.INFO if args.command == "serve" else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        status = _run(args)
        sys.stdout.flush()  # here, where a closed pipe can be told from other errors
        return status
    except BrokenPipeError:
        # the reader went away (`camingest sessions | head`): as other tools, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE
    except (IngestError, RuntimeError, OSError, ValueError) as exc:
        print(f"camingest {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    sock = None
    if args.command == "serve":  # the port first: in use, nothing else is started or created
        from ingest.server.app import listen_socket, tls_context
        from ingest.server.principals import load_keys

        tls_context(settings)
        load_keys(settings)  # a bad key file is said before anything starts
        sock = listen_socket(settings)
    local_analysis = not (args.command == "reprocess" and settings.cluster)  # a cluster's workers load their own
    if args.command in ("serve", "reprocess", "import", "close") and settings.analysis and local_analysis:
        from ingest.analysis.engine.predictor import prepare_engine

        prepare_engine(settings.landmark_engine)
    if args.command == "serve":
        from ingest.server.app import serve

        asyncio.run(serve(settings, sock))
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
    if args.command == "nodes":
        return cmd_nodes(args.redis)
    if args.command == "migrate":
        return cmd_migrate(settings, args.source)
    if args.command == "token":
        return cmd_token(settings, args)
    if args.command == "prune":
        return cmd_prune(settings, args.older_than, args.dry_run)
    return 2


if __name__ == "__main__":
    sys.exit(main())
