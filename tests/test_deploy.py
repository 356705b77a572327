"""The service files: the systemd unit verifies (systemd-analyze, where installed) and says what
the README says; the Dockerfile (no image builder here: no daemon, no base-image registry) is
parsed and its CMD run as it would run in the container."""

from __future__ import annotations

import configparser
import json
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

UNIT = ROOT / "deploy" / "camingest.service"
DOCKERFILE = ROOT / "Dockerfile"


def unit_sections() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_systemd_unit(tmp_path):
    unit = unit_sections()
    service = unit["Service"]
    assert service["User"] == "camingest" and service["NoNewPrivileges"] == "true"
    assert service["ProtectSystem"] == "strict" and "/var/lib/camingest" in service["ReadWritePaths"]
    exec_start = service["ExecStart"].split()
    assert exec_start[1:3] == ["serve", "--host"] and exec_start[-2:] == ["--data", "/var/lib/camingest"]
    assert int(service["TimeoutStopSec"]) >= 10  # shutdown takes a few seconds with clients connected
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: the unit was parsed, not verified")
    # verify it with ExecStart pointing at this installation's camingest
    camingest = Path(sys.executable).parent / "camingest"
    copy = tmp_path / "camingest.service"
    copy.write_text(UNIT.read_text().replace("/opt/camingest/bin/camingest", str(camingest)))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    problems = [line for line in result.stderr.splitlines() if "camingest.service" in line]
    assert not problems, problems


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_structure():
    instructions = dockerfile_instructions()
    kinds = [kind for kind, _ in instructions]
    assert instructions[0][0] == "FROM" and "slim" in instructions[0][1]
    assert kinds.index("USER") < kinds.index("CMD") and dict(instructions)["USER"] == "camingest"
    assert dict(instructions)["VOLUME"] == "/data" and dict(instructions)["EXPOSE"] == "8080"
    for kind, argument in instructions:
        if kind == "COPY":
            for source in argument.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_dockerfile_cmd_serves(tmp_path):
    """The container's CMD as it runs there (port and data folder from the Dockerfile, on a free
    port here): it serves, warns that it has no token, and stops on SIGTERM."""
    cmd = json.loads(dict(dockerfile_instructions())["CMD"])
    port = free_port()
    argv = [a.replace("8080", str(port)).replace("/data", str(tmp_path / "data")) for a in cmd]
    assert argv[0] == "camingest"
    proc = subprocess.Popen([str(Path(sys.executable).parent / argv[0]), *argv[1:]], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert line.startswith(f"camingest serving http://0.0.0.0:{port}/"), line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health") as response:
            assert json.loads(response.read())["ok"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "warning: serving on 0.0.0.0 without an access token" in err
