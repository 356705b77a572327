"""S3-compatible object storage (``--store s3://BUCKET/PREFIX``, ``--s3-endpoint URL``): AWS S3,
SeaweedFS, MinIO, Ceph RGW. boto3 with AWS's standard credential chain.

Keys, under the prefix:

    sessions/<id>/segments/<first_seq:08d>-<last_seq:08d>   acknowledged chunks first..last, concatenated
    sessions/<id>/recording.webm                             the seekable remux, after stop
    sessions/<id>/landmarks.jsonl, landmarks.meta.json
    sessions/<id>/snapshots/<snapshot_id>.<ext>, <snapshot_id>.landmarks.json
    gallery/<image file>                                     enrolment photos

A segment's key names its chunks, so a retried upload writes the same object (a PUT replaces an
object whole: readers see the old one or the new one). ``segment_chain`` is the one rule that
says which segments make a session's stream (used to fetch it back, and by ``SegmentMap``, which
maps byte runs of the stream to ranges of those objects for readers elsewhere: Dask workers).
Calls fail fast when the store cannot be reached (two attempts, 2 s to connect, 10 s to read):
uploads retry on their own schedule, off every acknowledgement's path. Errors are the store's:
``StoreUnavailableError`` when the store cannot be reached or refuses (5xx, throttling) or no
credentials are found, ``FileNotFoundError`` for a missing key. Each ``ObjectStore`` looks its
credentials up itself (a boto3 session of its own).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from storage.errors import IndexWriteError, StoreUnavailableError

SEGMENT_RE = re.compile(r"segments/(\d{8})-(\d{8})$")
Segment = tuple[int, int, str, int]  # (first_seq, last_seq, key, size), as listed
Range = tuple[str, int, int]  # (key, start, end): bytes start..end-1 of that object


def segment_name(first: int, last: int) -> str:
    return f"segments/{first:08d}-{last:08d}"


def segment_chain(
    session_id: str, segments: Iterable[Segment], extents: dict[int, tuple[int, int]], durable_seq: int
) -> list[tuple[str, int, int]]:
    """(key, offset in the raw stream, size) of the segments whose concatenation is the session's
    raw stream through ``durable_seq``, in stream order. From seq 0, at each seq the segment that
    reaches furthest without passing ``durable_seq`` (an upload that a lease change interrupted may
    have left another beside it) and whose size is what the index says of its chunks
    (``extents``: seq -> (offset, size)). A seq no such segment starts at is a gap: never serve a
    stream that is not the one acknowledged (``IndexWriteError``)."""
    by_first: dict[int, list[tuple[int, str, int]]] = {}
    for first, last, key, size in segments:
        by_first.setdefault(first, []).append((last, key, size))
    chain: list[tuple[str, int, int]] = []
    expected = 0
    while expected <= durable_seq:
        start = extents.get(expected, (-1, 0))[0]
        fitting = []
        for last, key, size in by_first.get(expected, []):
            end = extents.get(last)
            if last <= durable_seq and end is not None and start >= 0 and size == end[0] + end[1] - start:
                fitting.append((last, key, size))
        if not fitting:
            raise IndexWriteError(0, f"object storage has no segment of {session_id} from seq {expected}")
        last, key, size = max(fitting)
        chain.append((key, start, size))
        expected = last + 1
    return chain


@dataclass(frozen=True)
class StoreLocation:
    """``s3://BUCKET/PREFIX`` and the endpoint: picklable, so a Dask worker can read by itself."""

    bucket: str
    prefix: str  # "" or ending in "/"
    endpoint: str | None = None

    @classmethod
    def parse(cls, url: str, endpoint: str | None = None) -> StoreLocation:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"--store {url!r} is not s3://BUCKET/PREFIX")
        prefix = parsed.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return cls(parsed.netloc, prefix, endpoint)

    def session_key(self, session_id: str, name: str) -> str:
        return f"{self.prefix}sessions/{session_id}/{name}"

    def describe(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"


@dataclass(frozen=True)
class SegmentMap:
    """Where a session's durable raw stream lies in object storage (its ``segment_chain``), so
    that a reader elsewhere can fetch byte runs of it with ranged GETs (picklable)."""

    location: StoreLocation
    segments: tuple[tuple[str, int, int], ...]  # (key, offset in the raw stream, size), in stream order

    @property
    def durable_bytes(self) -> int:
        """Bytes of the raw stream in the chain (from 0)."""
        if not self.segments:
            return 0
        _, offset, size = self.segments[-1]
        return offset + size

    def ranges(self, runs: Iterable[tuple[int, int]]) -> list[Range] | None:
        """The object ranges whose bytes, concatenated in order, are the bytes of ``runs``
        ((offset, length) in the raw stream) concatenated; a run across two segments gives two.
        None if a run is not wholly durable (the caller reads the bytes where they are)."""
        starts = [offset for _, offset, _ in self.segments]
        durable = self.durable_bytes
        out: list[Range] = []
        for offset, length in runs:
            if offset < 0 or length < 0 or offset + length > durable:
                return None
            position, end = offset, offset + length
            index = bisect.bisect_right(starts, position) - 1
            while position < end:
                key, segment_start, size = self.segments[index]
                upto = min(end, segment_start + size)
                out.append((key, position - segment_start, upto - segment_start))
                position, index = upto, index + 1
        return out


def _client(location: StoreLocation) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": "path"},
        # recent boto3 sends CRC32 checksums by default, which several S3-compatible stores refuse
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=2,
        read_timeout=10,
        retries={"total_max_attempts": 2, "mode": "standard"},  # total: botocore's max_attempts counts retries
    )
    # a session of its own: credentials are looked up for this client (boto3's default session
    # keeps the first it found for the life of the process)
    return boto3.session.Session().client("s3", endpoint_url=location.endpoint, config=config)


class ObjectStore:
    def __init__(self, location: StoreLocation) -> None:
        self.location = location
        self._s3 = _client(location)

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return fn(Bucket=self.location.bucket, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(f"{what}: no such object") from exc
            if status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout"):
                raise StoreUnavailableError(f"object storage refused to {what} ({code or status})") from exc
            raise StoreUnavailableError(f"object storage refused to {what}: {code} {status}") from exc
        except NoCredentialsError as exc:  # nothing in AWS's standard chain on this machine
            raise StoreUnavailableError(
                f"no credentials to {what} in object storage: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or another source of AWS's standard credential chain) on this machine"
            ) from exc
        except BotoCoreError as exc:  # connection refused, timeouts, DNS
            raise StoreUnavailableError(f"object storage cannot be reached to {what} ({type(exc).__name__})") from exc

    def put(self, key: str, data: bytes) -> None:
        self._call(f"store {key}", self._s3.put_object, Key=key, Body=data)

    def put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as body:
            self._call(f"store {key}", self._s3.put_object, Key=key, Body=body)

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """The object's bytes, or bytes ``start``..``end`` (inclusive) of it."""
        extra = {} if start is None else {"Range": f"bytes={start}-{'' if end is None else end}"}
        response = self._call(f"read {key}", self._s3.get_object, Key=key, **extra)
        data: bytes = response["Body"].read()
        return data

    def download(self, key: str, path: Path) -> None:
        path.write_bytes(self.get(key))

    def keys(self, prefix: str) -> list[tuple[str, int]]:
        """(key, size) of every object under ``prefix``, in key order."""
        out: list[tuple[str, int]] = []
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call(f"list {prefix}", self._s3.list_objects_v2, Prefix=prefix, **extra)
            out += [(item["Key"], int(item["Size"])) for item in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return out
            token = page.get("NextContinuationToken")

    def delete_prefix(self, prefix: str) -> int:
        keys = [key for key, _ in self.keys(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            self._call(f"delete {prefix}", self._s3.delete_objects, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def segments(self, session_id: str) -> list[tuple[int, int, str, int]]:
        """(first_seq, last_seq, key, size) of a session's segments, in seq order."""
        found = []
        for key, size in self.keys(self.location.session_key(session_id, "segments/")):
            match = SEGMENT_RE.search(key)
            if match:
                found.append((int(match.group(1)), int(match.group(2)), key, size))
        return sorted(found)


@dataclass(frozen=True)
class ObjectStoreSettings:
    """How the store uses object storage (from the server's settings)."""

    url: str  # s3://BUCKET/PREFIX
    endpoint: str | None = None  # SeaweedFS, MinIO...; None: AWS
    segment_s: float = 5.0
    segment_bytes: int = 8 * 1024 * 1024
    local_cache_bytes: int = 20 * 1024 * 1024 * 1024
    evict_quiet_s: float = 60.0  # a session read here this recently stays in the cache
