"""The IMDS client over real HTTP against the sandbox's IMDSv2 emulator: token renewal after a
401, size bounds that never read an oversized body, tokens with CR/LF refused."""

from __future__ import annotations

import pytest

from herd_agent.discovery import imds as paths
from herd_agent.discovery.imds import ImdsBadAnswer, ImdsClient
from herd_sandbox.aws.imds import Fault, Identity, ImdsServer

IID = "i-0abc1234def567890"


class Source:
    """The live facts of one made-up instance."""

    def identity(self, instance_id: str) -> Identity:
        return Identity(instance_id, "us-east-1", "us-east-1a", "127.0.0.1", "m7g.large", "ami-12345678",
                        "123456789012", "ip-10-0-0-1.ec2.internal", "02:00:00:00:00:01", "2026-12-02T05:00:00Z")

    def tags(self, instance_id: str) -> dict[str, str]:
        return {}

    def target_lifecycle_state(self, instance_id: str) -> str | None:
        return "InService"

    def user_data(self, instance_id: str) -> bytes | None:
        return None


@pytest.fixture
def server():
    s = ImdsServer(IID, "127.0.0.1", Source()).start()
    yield s
    s.stop()


def test_a_revoked_token_is_renewed_on_the_401(server: ImdsServer) -> None:
    """issue 12: fails when the 401 → new-token path is disabled."""
    client = ImdsClient(server.url, token_ttl_s=21600, attempts=1)
    assert client.instance_id() == IID and client.token_fetches == 1
    assert server.revoke_tokens() == 1
    assert client.instance_id() == IID
    assert client.token_fetches == 2
    assert client.target_lifecycle_state() == "InService" and client.token_fetches == 2


def test_an_oversized_answer_is_refused_and_the_client_recovers(server: ImdsServer) -> None:
    server.inject_fault(Fault(path=paths.SPOT_INSTANCE_ACTION, body=b"[" + b" " * (8 << 20) + b"]", remaining=1))
    client = ImdsClient(server.url, attempts=1)
    with pytest.raises(ImdsBadAnswer, match="larger than 65536 bytes"):
        client.spot_instance_action()
    assert client.spot_instance_action() is None  # a fresh connection, the real answer (404)


@pytest.mark.parametrize("token", [b"abc\r\nX-Injected: 1", b"abc\ndef", b" "])
def test_a_token_with_line_breaks_is_refused(server: ImdsServer, token: bytes) -> None:
    server.inject_fault(Fault(path=paths.TOKEN_PATH, body=token, remaining=1))
    client = ImdsClient(server.url, attempts=1)
    with pytest.raises(ImdsBadAnswer, match="visible ASCII"):
        client.instance_id()
    assert client.instance_id() == IID


def test_identity_overrides_are_served_verbatim(server: ImdsServer) -> None:
    server.override_identity(local_hostname="ip-10-0-0-1\nevil", private_ip="127.0.77.50 evil.example.com")
    client = ImdsClient(server.url, attempts=1)
    assert client.identity_document().private_ip == "127.0.77.50 evil.example.com"
    assert client.local_ipv4() == "127.0.77.50 evil.example.com"
    assert client.local_hostname() == "ip-10-0-0-1\nevil"
    with pytest.raises(ValueError, match="unknown identity fields"):
        server.override_identity(mac="x")
