"""`camingest token create` and `camingest token revoke` (issue 24), against a real server on
loopback: a minted token is signed with the first key and carries what was asked; a revocation
from the command line, while the server runs on the same data folder, is refused by the server
within revocation_poll_s; bad input gets one line naming it, exit status 1."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import jwt

from tests.client import run, wait_until
from tests.conftest import ROOT
from tests.tokens import ADMIN, KEYS, call, keyfile, refusal


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ingest.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=120)  # fmt: skip


def test_token_create_and_revoke_from_the_command_line(server_factory, tmp_path):
    keys = str(keyfile(tmp_path, **KEYS))
    data = tmp_path / "data"
    before = time.time()
    created = cli("token", "create", "--role", "recorder", "--sub", "p-cli", "--ttl", "2h", "--meta", "study=s1",
                  "--meta", "site=lyon", "--max-sessions", "3", "--read", "--secret-file", keys)  # fmt: skip
    assert created.returncode == 0, created.stderr
    (token,) = created.stdout.splitlines()
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "kid": "k1", "typ": "JWT"}  # the first key mints
    claims = jwt.decode(token, KEYS["k1"], algorithms=["HS256"])
    assert {k: claims[k] for k in ("role", "sub", "meta", "max_sessions", "read")} == {
        "role": "recorder", "sub": "p-cli", "meta": {"study": "s1", "site": "lyon"}, "max_sessions": 3, "read": True}
    assert int(before) + 7200 <= claims["exp"] <= time.time() + 7200
    jti = claims["jti"]
    assert created.stderr == f"jti {jti}, role recorder, sub p-cli, valid for 2h\n"

    server = server_factory("--no-analysis", "--token", ADMIN, "--secret-file", keys, data=data)
    gone = refusal(f"token {jti} was revoked")

    async def scenario() -> None:
        status, me = await call("GET", server.url + "/api/me", token)
        assert (status, me["role"], me["sub"], me["jti"], me["read"]) == (200, "recorder", "p-cli", jti, True)
        revoked = cli("token", "revoke", jti, "--data", str(data))  # the server holds the data folder meanwhile
        assert (revoked.returncode, revoked.stdout, revoked.stderr) == (
            0, f"token {jti} revoked: every server refuses it within 0.5 s\n", "")  # fmt: skip

        async def refused() -> bool:
            return await call("GET", server.url + "/api/me", token) == (401, gone)

        await wait_until(refused, "the server refusing the token revoked from the command line")

    run(scenario())
    again = cli("token", "revoke", jti, "--data", str(data))
    assert (again.returncode, again.stdout) == (0, f"token {jti} was revoked already: every server refuses it within "
                                                   "0.5 s\n")  # fmt: skip


def test_token_create_refuses_bad_input_in_one_line(tmp_path):
    keys = str(keyfile(tmp_path, **KEYS))
    cases = {
        ("--meta", "study"): "camingest token: --meta 'study': give it as KEY=VALUE\n",
        ("--ttl", "2 hours"): "camingest token: '2 hours' is not an age; write it as a number and a unit: 30d, 12h, "
                              "90m, 45s\n",
        ("--ttl", "90d"): "camingest token: ttl_s 7776000 is not allowed: a token lives 1-2592000 seconds (setting "
                          "max_token_ttl_s)\n",
        ("--max-sessions", "0"): "camingest token: max_sessions must be a whole number of at least 1\n",
    }
    for extra, message in cases.items():
        done = cli("token", "create", "--role", "recorder", "--sub", "p", "--secret-file", keys, *extra)
        assert (done.returncode, done.stdout, done.stderr) == (1, "", message), extra
    no_key = cli("token", "create", "--role", "viewer", "--sub", "p")
    assert (no_key.returncode, no_key.stderr) == (
        1, "camingest token: this server has no signing key: give it --secret-file or CAMINGEST_SECRET\n")  # fmt: skip
    short = tmp_path / "short"
    short.write_text("k1=tooshort\n")
    weak = cli("token", "create", "--role", "viewer", "--sub", "p", "--secret-file", str(short))
    assert weak.returncode == 1 and weak.stderr.startswith(
        f"camingest token: --secret-file {short}, line 1: the secret of key 'k1' has 8 bytes; use at least 32")
    assert "tooshort" not in weak.stderr  # the message names the key, never the secret
    usage = cli("token", "create", "--role", "root", "--sub", "p", "--secret-file", keys)
    assert usage.returncode == 2 and "invalid choice: 'root'" in usage.stderr
