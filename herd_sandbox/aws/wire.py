"""Request parsing and AWS wire-format responses (Query/XML, EC2 XML, JSON) for the middleware."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/[^/]+/([^/]+)/([^/,\s]+)/")
_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,17}$")

# Query-protocol XML namespaces botocore does not need but AWS sends.
_NAMESPACES = {
    "autoscaling": "http://autoscaling.amazonaws.com/doc/2011-01-01/",
    "sts": "https://sts.amazonaws.com/doc/2011-06-15/",
}


@dataclass
class ParsedRequest:
    """What the sandbox needs to know about one AWS request.

    ``protocol`` is ``"ec2"``, ``"query"`` or ``"json"``; ``params`` are the flattened Query
    parameters (``{"InstanceIds.member.1": "i-…"}``) or the decoded JSON body.
    """

    service: str
    action: str
    protocol: str
    access_key_id: str
    region: str
    params: dict[str, Any] = field(default_factory=dict)

    def instance_ids(self) -> tuple[str, ...]:
        """Every EC2 instance id appearing as a parameter value, in order, without repeats."""
        found: list[str] = []

        def walk(value: Any) -> None:
            if isinstance(value, str):
                if _INSTANCE_ID.match(value) and value not in found:
                    found.append(value)
            elif isinstance(value, dict):
                for v in value.values():
                    walk(v)
            elif isinstance(value, list):
                for v in value:
                    walk(v)

        walk(self.params)
        return tuple(found)


def parse_request(environ: dict[str, Any], body: bytes) -> ParsedRequest:
    """Identify service (SigV4 scope), action (Query ``Action`` or ``X-Amz-Target``) and parameters."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    match = _CREDENTIAL.search(auth)
    key, region, service = (match.group(1), match.group(2), match.group(3)) if match else ("", "", "")
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            params = {}
        return ParsedRequest(service, target.rsplit(".", 1)[-1], "json", key, region, params)
    params = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
    ctype = environ.get("CONTENT_TYPE", "")
    if body and "json" not in ctype:
        params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    protocol = "ec2" if service == "ec2" else "query"
    return ParsedRequest(service, str(params.get("Action", "")), protocol, key, region, params)


@dataclass
class Reply:
    """A complete HTTP response: status code, headers and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def error_code(self) -> str | None:
        """The AWS error code in this response, if it is an error response."""
        if self.status < 400:
            return None
        return error_code_of(self.headers, self.body) or f"HTTP{self.status}"


def error_code_of(headers: list[tuple[str, str]], body: bytes) -> str | None:
    """Extract an AWS error code from a JSON (``__type``) or XML (``<Code>``) error body."""
    for name, value in headers:
        if name.lower() == "x-amzn-errortype" and value:
            return value.split(":", 1)[0].rsplit("#", 1)[-1]
    text = body[:4096].decode("utf-8", "replace")
    m = re.search(r"<Code>([^<]+)</Code>", text)
    if m:
        return m.group(1)
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("__type"), str):
        return data["__type"].rsplit("#", 1)[-1]
    return None


def error_reply(req: ParsedRequest, status: int, code: str, message: str) -> Reply:
    """An error in the shape the request's protocol uses on real AWS.

    EC2: ``<Response><Errors><Error>…</Errors><RequestID>``; Query (Auto Scaling, STS…):
    ``<ErrorResponse><Error><Type>Sender</Type>…``; JSON (SSM, Secrets Manager):
    ``{"__type": code, "message": …}`` with ``x-amzn-ErrorType``.
    """
    rid = str(uuid.uuid4())
    if req.protocol == "json":
        body = json.dumps({"__type": code, "message": message}).encode()
        headers = [
            ("Content-Type", "application/x-amz-json-1.1"),
            ("x-amzn-RequestId", rid),
            ("x-amzn-ErrorType", code),
        ]
        return Reply(status, headers, body)
    if req.protocol == "ec2":
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
            f"</Error></Errors><RequestID>{rid}</RequestID></Response>"
        )
    else:
        ns = _NAMESPACES.get(req.service, "")
        xml = (
            f'<ErrorResponse xmlns="{ns}"><Error><Type>Sender</Type>'
            f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
            f"</Error><RequestId>{rid}</RequestId></ErrorResponse>"
        )
    return Reply(status, [("Content-Type", "text/xml"), ("x-amzn-RequestId", rid)], xml.encode())


def empty_result_reply(req: ParsedRequest) -> Reply:
    """A Query-protocol success with an empty ``<ActionResult/>`` (what AWS sends for void actions)."""
    rid = str(uuid.uuid4())
    ns = _NAMESPACES.get(req.service, "")
    xml = (
        f'<{req.action}Response xmlns="{ns}"><{req.action}Result/>'
        f"<ResponseMetadata><RequestId>{rid}</RequestId></ResponseMetadata></{req.action}Response>"
    )
    return Reply(200, [("Content-Type", "text/xml"), ("x-amzn-RequestId", rid)], xml.encode())


def throttle_reply(req: ParsedRequest) -> Reply:
    """The throttling error real AWS sends for this protocol.

    EC2: HTTP 503 ``RequestLimitExceeded``; Query APIs: HTTP 400 ``Throttling``; JSON APIs:
    HTTP 400 ``ThrottlingException``. botocore's retry handlers classify all three as throttling.
    """
    if req.protocol == "ec2":
        return error_reply(req, 503, "RequestLimitExceeded", "Request limit exceeded.")
    if req.protocol == "json":
        return error_reply(req, 400, "ThrottlingException", "Rate exceeded")
    return error_reply(req, 400, "Throttling", "Rate exceeded")


def access_denied_reply(req: ParsedRequest, caller: str) -> Reply:
    """The error AWS answers when the caller's IAM policy lacks the action.

    EC2: HTTP 403 ``UnauthorizedOperation``; Query APIs (Auto Scaling): HTTP 403 ``AccessDenied``;
    JSON APIs (SSM, Secrets Manager): HTTP 400 ``AccessDeniedException``. The message names the
    IAM action as AWS does (``… is not authorized to perform: ssm:GetParameter …``).
    """
    iam_action = f"{req.service}:{req.action}"
    message = (f"User: arn:aws:sts::123456789012:assumed-role/sandbox/{caller} is not authorized to perform: "
               f"{iam_action}")
    if req.protocol == "ec2":
        return error_reply(req, 403, "UnauthorizedOperation", f"You are not authorized to perform this operation. "
                                                                f"{message}")
    if req.protocol == "json":
        return error_reply(req, 400, "AccessDeniedException", message)
    return error_reply(req, 403, "AccessDenied", message)
