"""The autouse guards: an unplanned subprocess or a non-loopback connection fails a unit test."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).resolve().parents[1] / "conftest.py").read_text()


def test_unplanned_subprocess_fails_with_advice(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import subprocess
        def test_spawns():
            subprocess.run(["true"])
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*unplanned subprocess*FakeRunner*allow_subprocess*"])


def test_non_loopback_connection_fails(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import socket
        def test_connects():
            s = socket.socket()
            s.settimeout(0.1)
            s.connect(("192.0.2.1", 80))
        def test_loopback_is_fine():
            srv = socket.socket(); srv.bind(("127.0.0.9", 0)); srv.listen(1)
            c = socket.create_connection(srv.getsockname(), timeout=5)
            c.close(); srv.close()
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*tried to connect to 192.0.2.1:80*loopback*"])
