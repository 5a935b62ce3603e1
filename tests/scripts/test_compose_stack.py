"""scripts/compose_stack.py's docker helper, the one bench/compose_build.py and the compose test use too.

Only the docker client runs here (no engine is asked): the full stack is tests/e2e/test_compose_stack.py's.
"""

from __future__ import annotations

import shutil

import pytest

from scripts import compose_stack


def test_the_docker_helper_returns_the_output_or_says_what_failed() -> None:
    if shutil.which("docker") is None:
        pytest.skip("docker is not installed (apt-get install docker.io)")
    assert compose_stack.docker("--version").stdout.startswith("Docker version")
    with pytest.raises(compose_stack.StackError, match=r"`docker no-such-command` failed \(\d+\):\n.*no-such-command"):
        compose_stack.docker("no-such-command")
    assert compose_stack.docker("no-such-command", check=False).returncode != 0
