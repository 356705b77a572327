"""Who is asking: roles, signed per-person tokens, the denylist, and what each role may do.

LiveKit's model: the operator holds the secret; the app's backend mints a short-lived signed
token per person with exactly the grants it needs. Here a token is a JWT (HS256, PyJWT) signed
with one of the server's keys, named by its ``kid`` header (``--secret-file``/``CAMINGEST_SECRET``:
``kid=secret`` lines; several keys verify, the first mints, so a key can be rotated without
cutting anyone off). Claims: ``role`` (``admin``: everything; ``viewer``: list, play, download,
preview, export; ``recorder``: start, chunk, snapshot, stop and resume its own sessions, and read
them only with ``"read": true``), ``sub`` (the app's id for the person, stored on every session
it starts), ``exp``, ``jti`` (what a revocation names), optional ``meta`` (merged into its
sessions' meta) and ``max_sessions`` (sessions it may start in all). ``--token`` stays the admin
token. Without either, the server is open (everyone is admin), as on a laptop.

A request is resolved to a ``Principal`` once (the HTTP middleware, ingest/server/access.py; a
Socket.IO connection at connect, kept per sid); every route and every event checks it.
Another principal's session is answered exactly as an unknown one. Refusals are ``unauthorized``
with one exact message each (wrong, expired, revoked, badly signed, an algorithm other than
HS256 including ``none``, an unknown key id, a claim missing or wrong; the role: 403), never a
traceback. The denylist is a table in the index that every node reads every
``revocation_poll_s`` (storage/tokens.py): the index rather than Redis pub/sub because it works
the same on one node with SQLite (``camingest token revoke`` while the server runs), a node that
was away catches up on what it missed (pub/sub keeps nothing), and it costs one indexed read
every half second.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web

from ingest.config import Settings
from ingest.exceptions import BadRequestError, IngestError, RoleError, UnauthorizedError
from storage.errors import StoreUnavailableError, UnknownSessionError
from storage.store import SessionStore

log = logging.getLogger("camingest.access")
ROLES = ("admin", "viewer", "recorder")
ALGORITHM = "HS256"
COOKIE_KID = "~cookie"  # the key id of the cookies' own tokens (never a configured kid: "~" is not allowed there)
KID_RE = re.compile(r"\A[A-Za-z0-9_.-]{1,64}\Z")
MIN_SECRET_BYTES = 32  # HS256's hash size: shorter keys are guessable (PyJWT warns as well)
MAX_SUB_CHARS = 200
MISSING = "this server needs its access token (Authorization: Bearer, or open a page with ?token=)"


@dataclass(frozen=True)
class Principal:
    """Who a request or a connection is: role, sub, jti, and the token's grants."""

    role: str
    sub: str | None
    jti: str | None
    source: str  # "open" (no token configured), "token" (--token), "jwt", "cookie"
    exp: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    max_sessions: int | None = None
    read: bool = False  # a recorder may read its own sessions

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def may_view(self) -> bool:
        """Every session's data (admin, viewer)."""
        return self.role in ("admin", "viewer")

    def sees(self, session_sub: str | None) -> bool:
        """Whether this principal may know the session exists (a recorder: only its own)."""
        return self.role != "recorder" or (self.sub is not None and session_sub == self.sub)

    def expired(self, now: float, leeway_s: float) -> bool:
        return self.exp is not None and now > self.exp + leeway_s

    def audit(self) -> dict[str, Any]:
        """What the audit trail says of it: never the token."""
        return {"sub": self.sub, "role": self.role, "jti": self.jti}


OPEN = Principal("admin", None, None, "open")
MASTER = Principal("admin", "admin", None, "token")


def _iso(unix: float) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- keys ---------------------------------------------------------------------------------------
def parse_keys(text: str, where: str) -> dict[str, bytes]:
    """``kid=secret`` lines (blank lines and ``#`` comments ignored), in order; a bad line raises
    ValueError naming ``where`` and the line number, never the secret."""
    keys: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        kid, sep, secret = line.partition("=")
        kid, secret = kid.strip(), secret.strip()
        if not sep or not KID_RE.match(kid):
            raise ValueError(f"{where}, line {number}: write each key as kid=secret (a key id of letters, digits, "
                             "'_', '.', '-', at most 64)")  # fmt: skip
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"{where}, line {number}: the secret of key {kid!r} has {len(secret.encode())} bytes; "
                             f"use at least {MIN_SECRET_BYTES} random bytes (e.g. python3 -c 'import secrets; "
                             "print(secrets.token_urlsafe(32))')")  # fmt: skip
        if kid in keys:
            raise ValueError(f"{where}, line {number}: key id {kid!r} is given twice")
        keys[kid] = secret.encode()
    return keys


def load_keys(settings: Settings) -> dict[str, bytes]:
    """The signing keys of ``secret_file`` then ``secret`` (blocking: reads the file)."""
    keys: dict[str, bytes] = {}
    if settings.secret_file:
        path = Path(settings.secret_file)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"--secret-file {path}: {exc.strerror or exc}") from None
        keys.update(parse_keys(text, f"--secret-file {path}"))
    if settings.secret:
        for kid, key in parse_keys(settings.secret, "CAMINGEST_SECRET").items():
            if kid in keys:
                raise ValueError(f"key id {kid!r} is in both --secret-file and CAMINGEST_SECRET")
            keys[kid] = key
    if (settings.secret_file or settings.secret) and not keys:
        raise ValueError("--secret-file / CAMINGEST_SECRET holds no key (write kid=secret lines)")
    return keys


# -- tokens -------------------------------------------------------------------------------------
def _claims_principal(claims: dict[str, Any], source: str, max_meta_bytes: int) -> Principal:
    role = claims.get("role")
    if role not in ROLES:
        raise UnauthorizedError(f"token claim role must be one of {', '.join(ROLES)} (got {str(role)[:40]!r})")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_CHARS:
        raise UnauthorizedError(f"token claim sub must be a non-empty string of at most {MAX_SUB_CHARS} characters")
    jti = claims.get("jti")
    if source == "jwt" and (not isinstance(jti, str) or not jti or len(jti) > 200):
        raise UnauthorizedError("token has no jti claim (the id a revocation names)")
    if jti is not None and not isinstance(jti, str):
        raise UnauthorizedError("token claim jti must be a string")
    meta = claims.get("meta", {})
    if not isinstance(meta, dict) or len(json.dumps(meta)) > max_meta_bytes:
        raise UnauthorizedError(f"token claim meta must be an object of at most {max_meta_bytes} bytes of JSON")
    max_sessions = claims.get("max_sessions")
    if max_sessions is not None and (isinstance(max_sessions, bool) or not isinstance(max_sessions, int)
                                     or max_sessions < 1):  # fmt: skip
        raise UnauthorizedError("token claim max_sessions must be a whole number of at least 1")
    read = claims.get("read", False)
    if not isinstance(read, bool):
        raise UnauthorizedError("token claim read must be true or false")
    return Principal(role, sub, jti, source, float(claims["exp"]), dict(meta), max_sessions, read)


class TokenAuthority:
    """Verifies and mints tokens, keeps the denylist, and reads it from the index.

    ``store`` None: minting only (the CLI's ``token create``)."""

    def __init__(self, settings: Settings, keys: dict[str, bytes], store: SessionStore | None = None) -> None:
        self.settings = settings
        self.master = settings.token
        self.keys = dict(keys)
        self.store = store
        seed = next(iter(self.keys.values()), None) or (self.master or "").encode()
        # the cookies' tokens are signed with a key of their own, derived from the server's
        self.cookie_key = hmac.new(seed, b"camingest cookie key v1", hashlib.sha256).digest() if seed else b""
        self.revoked: set[str] = set()
        self.generation = 0
        self.polled_at = 0.0  # unix time of the last successful read of the denylist
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        """Whether anyone needs a token (--token or a signing key configured)."""
        return self.master is not None or bool(self.keys)

    # -- verifying ---------------------------------------------------------------------------------
    def resolve(self, token: object, *, allow_expired: bool = False, now: float | None = None) -> Principal:
        """The principal of ``token`` (the admin token, a signed token, a cookie's token);
        UnauthorizedError with its exact message otherwise. ``allow_expired``: an expired but
        otherwise valid token is returned (its principal says it expired; a Socket.IO
        connection resuming a recording takes it)."""
        if not self.enabled:
            return OPEN
        if not isinstance(token, str) or not token:
            raise UnauthorizedError(MISSING)
        if self.master is not None and hmac.compare_digest(token.encode(), self.master.encode()):
            return MASTER
        now = time.time() if now is None else now
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise UnauthorizedError("wrong token: it is neither this server's token nor a token signed by it") from None
        alg = header.get("alg")
        if alg != ALGORITHM:
            raise UnauthorizedError(f"token algorithm {str(alg)[:20]!r} is refused: tokens are signed with {ALGORITHM}")
        kid = header.get("kid")
        if kid == COOKIE_KID and self.cookie_key:
            key, source = self.cookie_key, "cookie"
        elif not isinstance(kid, str) or not kid:
            raise UnauthorizedError("token has no kid header: a token names the key that signed it")
        elif kid not in self.keys:
            raise UnauthorizedError(f"token key id {kid[:64]!r} is not one of this server's keys (retired, or never "
                                    "configured)")  # fmt: skip
        else:
            key, source = self.keys[kid], "jwt"
        leeway = self.settings.token_leeway_s
        try:
            claims = jwt.decode(token, key, algorithms=[ALGORITHM], leeway=leeway,
                                options={"require": ["exp"], "verify_exp": False})  # fmt: skip
        except jwt.InvalidSignatureError:
            raise UnauthorizedError("token signature does not verify: it was not signed with this server's key "
                                    f"{kid!r}")  from None  # fmt: skip
        except jwt.MissingRequiredClaimError as exc:
            raise UnauthorizedError(f"token has no {exc.claim} claim") from None
        except jwt.ImmatureSignatureError:
            raise UnauthorizedError("token is not valid yet (its nbf or iat is in the future)") from None
        except jwt.PyJWTError as exc:
            raise UnauthorizedError(f"token is not valid: {str(exc)[:100]}") from None
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise UnauthorizedError("token claim exp must be a number (unix time)")
        principal = _claims_principal(claims, source, self.settings.max_meta_bytes)
        if principal.jti is not None and principal.jti in self.revoked:
            raise UnauthorizedError(f"token {principal.jti} was revoked")
        if not allow_expired and principal.expired(now, leeway):
            raise UnauthorizedError(f"token expired at {_iso(float(exp))}")
        return principal

    def check_live(self, principal: Principal) -> None:
        """Raise if ``principal``'s token was revoked since it was resolved."""
        if principal.jti is not None and principal.jti in self.revoked:
            raise UnauthorizedError(f"token {principal.jti} was revoked")

    def check_unexpired(self, principal: Principal, now: float | None = None) -> None:
        if principal.expired(time.time() if now is None else now, self.settings.token_leeway_s):
            assert principal.exp is not None
            raise UnauthorizedError(f"token expired at {_iso(principal.exp)}")

    # -- minting -------------------------------------------------------------------------------
    def mint(
        self, role: str, sub: str, ttl_s: float, meta: dict[str, Any] | None = None,
        max_sessions: int | None = None, read: bool = False, now: float | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """A new signed token and its claims, by the first key. BadRequestError naming a bad value."""
        if not self.keys:
            raise BadRequestError("this server has no signing key: give it --secret-file or CAMINGEST_SECRET")
        if role not in ROLES:
            raise BadRequestError(f"role {str(role)[:40]!r} is not one of {', '.join(ROLES)}")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_CHARS:
            raise BadRequestError(f"sub must be a non-empty string of at most {MAX_SUB_CHARS} characters")
        limit = self.settings.max_token_ttl_s
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not 1 <= ttl_s <= limit:
            given = f"{ttl_s:.0f}" if isinstance(ttl_s, int | float) and not isinstance(ttl_s, bool) else repr(ttl_s)[:40]
            raise BadRequestError(f"ttl_s {given} is not allowed: a token lives 1-{limit:.0f} seconds "
                                  "(setting max_token_ttl_s)")  # fmt: skip
        if meta is not None and (not isinstance(meta, dict) or len(json.dumps(meta)) > self.settings.max_meta_bytes):
            raise BadRequestError(f"meta must be an object of at most {self.settings.max_meta_bytes} bytes of JSON")
        if max_sessions is not None and (isinstance(max_sessions, bool) or not isinstance(max_sessions, int)
                                         or max_sessions < 1):  # fmt: skip
            raise BadRequestError("max_sessions must be a whole number of at least 1")
        if not isinstance(read, bool):
            raise BadRequestError("read must be true or false")
        now = time.time() if now is None else now
        claims: dict[str, Any] = {"role": role, "sub": sub, "jti": secrets.token_urlsafe(16), "iat": int(now),
                                  "exp": int(now + ttl_s)}  # fmt: skip
        if meta:
            claims["meta"] = meta
        if max_sessions is not None:
            claims["max_sessions"] = max_sessions
        if read:
            claims["read"] = True
        kid = next(iter(self.keys))
        return jwt.encode(claims, self.keys[kid], algorithm=ALGORITHM, headers={"kid": kid}), claims

    def cookie_token(self, principal: Principal, now: float | None = None) -> tuple[str, int]:
        """The cookie's value for ``principal`` (a short-lived token signed with the cookie key,
        never the token it was opened with) and its Max-Age."""
        now = time.time() if now is None else now
        exp = now + self.settings.cookie_ttl_s
        if principal.exp is not None:
            exp = min(exp, principal.exp)
        claims: dict[str, Any] = {"role": principal.role, "sub": principal.sub, "exp": int(exp), "iat": int(now)}
        if principal.jti is not None:
            claims["jti"] = principal.jti
        if principal.meta:
            claims["meta"] = dict(principal.meta)
        if principal.max_sessions is not None:
            claims["max_sessions"] = principal.max_sessions
        if principal.read:
            claims["read"] = True
        value = jwt.encode(claims, self.cookie_key, algorithm=ALGORITHM, headers={"kid": COOKIE_KID})
        return value, max(1, int(exp - now))

    # -- revocation ----------------------------------------------------------------------------
    def revoke(self, jti: str, by: Principal) -> bool:
        """Deny ``jti`` from now on, on every node (blocking: writes the index); False if it was
        revoked already."""
        if not isinstance(jti, str) or not re.fullmatch(r"[A-Za-z0-9_.~-]{1,200}", jti):
            raise BadRequestError("a token id (jti) is 1-200 letters, digits, '_', '-', '.', '~'")
        assert self.store is not None
        added = self.store.tokens.revoke(jti, by.sub)
        self.revoked.add(jti)  # this node: at once
        return added

    def refresh(self) -> int:
        """Read revocations the index has that this node has not seen (blocking); how many."""
        assert self.store is not None
        revocations = self.store.tokens.revoked_since(self.generation)
        for revocation in revocations:
            self.revoked.add(revocation.jti)
            self.generation = max(self.generation, revocation.generation)
        self.polled_at = time.time()
        return len(revocations)

    def start(self) -> None:
        if self.store is not None and self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll(), name="denylist poller")

    async def _poll(self) -> None:
        interval = self.settings.revocation_poll_s
        while True:
            await asyncio.sleep(interval)
            try:
                if await asyncio.to_thread(self.refresh):
                    log.info("denylist: %d tokens revoked in all (generation %d)", len(self.revoked), self.generation)
            except (StoreUnavailableError, OSError) as exc:
                log.warning("denylist not read (%s); again in %g s", exc, interval)
            except Exception:
                log.exception("denylist not read")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


AUTHORITY = web.AppKey("authority", TokenAuthority)


# -- what each principal may do --------------------------------------------------------------------
def role_error(principal: Principal, what: str, needs: str) -> RoleError:
    return RoleError(f"a {principal.role} token may not {what} (it needs {needs})")


def check_may_record(principal: Principal) -> None:
    """Start (or resume) a recording: admin or recorder."""
    if principal.role not in ("admin", "recorder"):
        raise role_error(principal, "record", "a recorder or admin token")


def check_sees(principal: Principal, session_id: str, session_sub: str | None) -> None:
    """Another principal's session is, to a recorder, an unknown one (the store's own words)."""
    if not principal.sees(session_sub):
        raise UnknownSessionError(f"unknown session {session_id!r}")


def session_meta(principal: Principal, meta: dict[str, Any]) -> dict[str, Any]:
    """A session's meta: the client's, with the token's own ``meta`` over it (the app's backend
    said it: a client cannot change it)."""
    return {**meta, **principal.meta} if principal.meta else meta


async def sessions_left(store: SessionStore, principal: Principal) -> str | None:
    """A token with ``max_sessions``: one more session counted (in the index: across nodes),
    or RoleError if it has started them all. Returns the jti counted (to give back if the
    session is not started after all), None if nothing was counted."""
    if principal.max_sessions is None or principal.jti is None:
        return None
    if not await asyncio.to_thread(store.tokens.use, principal.jti, principal.max_sessions):
        raise RoleError(f"token {principal.jti} may start {principal.max_sessions} session"
                        f"{'s' if principal.max_sessions != 1 else ''} (its max_sessions) and has started them")  # fmt: skip
    return principal.jti


def check_route(principal: Principal, method: str, route: str) -> str | None:
    """Whether ``principal`` may call ``method`` ``route`` (the aiohttp resource's canonical
    form); raises RoleError. Returns "session" when the route is a session's (its owner is
    checked next, by the caller, with ``check_sees``), else None."""
    if principal.is_admin:
        return "session" if route.startswith("/api/sessions/{session_id}") else None
    writes = method not in ("GET", "HEAD", "OPTIONS")
    name = f"{method} {route}"
    if route.startswith("/api/sessions/{session_id}"):
        if principal.role == "viewer":
            if writes and route != "/api/sessions/{session_id}/exports":
                raise role_error(principal, f"use {name}", "an admin token")
            return "session"
        return "session"  # a recorder: unknown unless its own, then read only (check_session_route)
    if route == "/api/sessions" and method == "GET":
        if principal.may_view or principal.read:
            return None
        raise role_error(principal, f"use {name}", "a viewer or admin token, or a recorder token with the read grant")
    if route in ("/", "/sessions", "/favicon.ico", "/api/me") or route.startswith("/pages"):
        return None
    if not writes and (route in ("/metrics", "/api/gallery") or route.startswith("/api/gallery/")):
        if principal.may_view:
            return None
        raise role_error(principal, f"use {name}", "a viewer or admin token")
    raise role_error(principal, f"use {name}", "an admin token")


def check_session_route(principal: Principal, method: str, route: str) -> None:
    """After ``check_sees``: a recorder reads its own sessions only with the read grant, and
    changes nothing of them over HTTP."""
    if principal.role != "recorder":
        return
    if method not in ("GET", "HEAD"):
        raise role_error(principal, f"use {method} {route}", "an admin token")
    if not principal.read:
        raise role_error(principal, f"read sessions ({method} {route})", "a recorder token with the read grant")


def request_principal(request: web.Request) -> Principal:
    """The principal the middleware resolved for this request."""
    principal = request.get("principal")
    if not isinstance(principal, Principal):
        raise IngestError("no principal resolved for this request")
    return principal
