"""The IMDS client's bounds, token rules and typed properties, against the strict fake."""

from __future__ import annotations

import pytest

from herd_agent.discovery import imds as paths
from herd_agent.discovery.imds import (
    MAX_BODY,
    MAX_USER_DATA,
    ImdsBadAnswer,
    ImdsError,
    RebalanceRecommendation,
    ScheduledEvent,
    SpotAction,
)
from herd_agent.errors import ExitCode
from tests.fakes import FakeImds


def test_strict_fake_fails_on_a_path_it_was_not_told_about() -> None:
    client = FakeImds().answer(paths.INSTANCE_ID, "i-12345678").client()
    assert client.instance_id() == "i-12345678"
    with pytest.raises(AssertionError, match="unexpected IMDS request GET /latest/meta-data/local-ipv4"):
        client.local_ipv4()


def test_spot_notice_is_typed() -> None:
    fake = FakeImds().answer(paths.SPOT_INSTANCE_ACTION, {"action": "stop", "time": "2026-12-02T06:00:00Z"})
    assert fake.client().spot_instance_action() == SpotAction("stop", 1796191200.0)
    assert FakeImds().missing(paths.SPOT_INSTANCE_ACTION).client().spot_instance_action() is None


@pytest.mark.parametrize("body, problem", [
    (b"not json", "not JSON"),
    (b'["terminate"]', "a JSON list, not an object"),
    (b'"terminate"', "a JSON str, not an object"),
    (b'{"action": "terminate", "time": 1796191200}', "time is a int"),
    (b'{"action": "terminate", "time": "soon"}', "not an RFC 3339 time"),
    (b'{"action": "terminate", "time": "2026-12-02T06:00:00"}', "has no time zone"),
    (b'{"action": "explode", "time": "2026-12-02T06:00:00Z"}', "action is not one of"),
    (b'{"time": "2026-12-02T06:00:00Z"}', "action is not one of"),
    (b"\xff\xfe", "not UTF-8"),
    (b"{" + b" " * MAX_BODY + b"}", "larger than 65536 bytes"),
])
def test_malformed_spot_notice_raises_bad_answer(body: bytes, problem: str) -> None:
    client = FakeImds().answer(paths.SPOT_INSTANCE_ACTION, body).client()
    with pytest.raises(ImdsBadAnswer, match=problem) as err:
        client.spot_instance_action()
    assert err.value.exit_code == ExitCode.DATA and err.value.path == paths.SPOT_INSTANCE_ACTION


@pytest.mark.parametrize("body, ok", [
    ("InService", True), ("Terminated\n", True), ("Warmed:Pending:Wait", True),
    ("Terminated; rm -rf /", False), ("In Service", False), ("x" * 100, False), ("Terminated\nInService", False),
])
def test_target_lifecycle_state_must_be_a_state_word(body: str, ok: bool) -> None:
    client = FakeImds().answer(paths.TARGET_LIFECYCLE_STATE, body).client()
    if ok:
        assert client.target_lifecycle_state() == body.strip()
    else:
        with pytest.raises(ImdsBadAnswer, match="not a lifecycle state word"):
            client.target_lifecycle_state()


def test_scheduled_events_are_typed_and_shapes_checked() -> None:
    entry = {"NotBefore": "21 Jan 2019 09:00:43 GMT", "Code": "system-reboot", "Description": "reboot",
             "EventId": "instance-event-0d59937288b749b32", "NotAfter": "21 Jan 2019 09:17:23 GMT", "State": "active"}
    assert FakeImds().answer(paths.SCHEDULED_EVENTS, [entry]).client().scheduled_events() == [
        ScheduledEvent("instance-event-0d59937288b749b32", "system-reboot", "active", "21 Jan 2019 09:00:43 GMT",
                       "reboot")]
    for bad, problem in (({"Code": "x"}, "a JSON dict, not a list"), (["x"], "an entry is a JSON str"),
                         ([{"Code": "x"}], "EventId is missing"), ([{"EventId": 7, "Code": "x"}], "EventId is a int")):
        with pytest.raises(ImdsBadAnswer, match=problem):
            FakeImds().answer(paths.SCHEDULED_EVENTS, bad).client().scheduled_events()


def test_rebalance_is_typed() -> None:
    fake = FakeImds().answer(paths.REBALANCE, {"noticeTime": "2026-12-02T06:00:00Z"})
    assert fake.client().rebalance_recommendation() == RebalanceRecommendation(1796191200.0)
    with pytest.raises(ImdsBadAnswer, match="noticeTime is a list"):
        FakeImds().answer(paths.REBALANCE, {"noticeTime": []}).client().rebalance_recommendation()


@pytest.mark.parametrize("token", [b"abc\r\nX-Injected: 1", b"abc def", b"", b"a" * 1025])
def test_a_token_with_line_breaks_or_spaces_is_refused(token: bytes) -> None:
    fake = FakeImds(token_body=token).answer(paths.INSTANCE_ID, "i-12345678")
    with pytest.raises(ImdsBadAnswer, match=paths.TOKEN_PATH):
        fake.client().instance_id()
    assert ("GET", paths.INSTANCE_ID) not in fake.requests  # the bad token was never sent


def test_401_gets_a_new_token_and_retries_once() -> None:
    fake = FakeImds().answer(paths.INSTANCE_ID, "i-12345678")
    client = fake.client()
    assert client.instance_id() == "i-12345678" and client.token_fetches == 1
    fake.revoke()
    assert client.instance_id() == "i-12345678"
    assert client.token_fetches == 2


def test_user_data_is_bounded_at_one_mebibyte() -> None:
    data = b"#!/bin/sh\n" + b"#" * (MAX_USER_DATA - 10)
    assert FakeImds().answer(paths.USER_DATA, data).client().user_data() == data
    with pytest.raises(ImdsBadAnswer, match="larger than 1048576 bytes"):
        FakeImds().answer(paths.USER_DATA, data + b"#").client().user_data()


def test_identity_document_fields_are_type_checked() -> None:
    doc = {"instanceId": "i-12345678", "region": "us-east-1", "availabilityZone": "us-east-1a",
           "privateIp": ["10.0.0.1"]}
    with pytest.raises(ImdsBadAnswer, match="privateIp is a list, not a string"):
        FakeImds().answer(paths.IDENTITY_DOCUMENT, doc).client().identity_document()
    with pytest.raises(ImdsBadAnswer, match="a JSON list, not an object"):
        FakeImds().answer(paths.IDENTITY_DOCUMENT, [doc]).client().identity_document()


def test_a_required_path_that_is_missing_is_an_error_with_exit_65() -> None:
    with pytest.raises(ImdsError) as err:
        FakeImds().missing(paths.INSTANCE_ID).client().instance_id()
    assert err.value.exit_code == ExitCode.DATA


def test_instance_tags_are_bounded_in_number() -> None:
    fake = FakeImds().answer(paths.TAGS, "\n".join(f"k{i}" for i in range(51)))
    with pytest.raises(ImdsBadAnswer, match="51 tag keys"):
        fake.client().tags()
    fake = FakeImds().answer(paths.TAGS, "Role\nbad/key").answer(f"{paths.TAGS}/Role", "node")
    with pytest.raises(ImdsBadAnswer, match="tag key"):
        fake.client().tags()
    assert FakeImds().answer(paths.TAGS, "Role\n").answer(f"{paths.TAGS}/Role", "node").client().tags() == {
        "Role": "node"}
