"""The container image builds and runs a short session to a clean stop (needs podman)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import REPO

IMAGE = "btc-laptop-agents-test"


def _podman_ready() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed"
    base = subprocess.run(["podman", "image", "exists", "python:3.11-slim"], capture_output=True)
    if base.returncode != 0:
        return "base image python:3.11-slim missing (run ../shared/tools/podman-sandbox.sh once)"
    return None


@pytest.mark.slow
def test_container_builds_and_runs_a_session() -> None:
    reason = _podman_ready()
    if reason:
        pytest.skip(reason)
    build = subprocess.run(
        ["podman", "build", "-q", "-t", IMAGE, str(REPO)], capture_output=True, text=True, timeout=900
    )
    assert build.returncode == 0, build.stderr[-2000:]
    run = subprocess.run(
        ["podman", "run", "--rm", IMAGE, "--source", "mock", "--duration", "0.2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "stop_reason=duration" in run.stderr
