"""
Tests for the served OpenAPI document (C{medichat/http/openapi.json}): it is a valid
OpenAPI document, and it describes the limits the server enforces.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from typing import Any

from openapi_spec_validator import validate
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from medichat import rsql
from medichat.domain.conversations import MAX_LIMIT, encode_cursor
from medichat.errors import BadRequest
from medichat.http.rest import _idempotency_key
from medichat.model import Conversation

OPENAPI: dict[str, Any] = json.loads(
    importlib.resources.files("medichat.http").joinpath("openapi.json").read_text("utf-8")
)
METHODS = ("get", "post", "put", "delete", "patch", "options", "head")


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in OPENAPI["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def parameter(name: str) -> dict[str, Any]:
    found: dict[str, Any] = OPENAPI["components"]["parameters"][name]
    return found


def accepts_key(value: str) -> bool:
    request = DummyRequest([b""])
    request.requestHeaders.addRawHeader(b"Idempotency-Key", value.encode("ascii"))
    try:
        _idempotency_key(request)
    except BadRequest:
        return False
    return True


class ValidityTests(SynchronousTestCase):
    """
    The document validates as OpenAPI (openapi-spec-validator).
    """

    def test_valid(self) -> None:
        """No validation error, path parameters of OPTIONS operations included."""
        validate(OPENAPI)

    def test_path_parameters(self) -> None:
        """Every operation on a templated path has the id parameter, OPTIONS included."""
        for path, method, operation in operations():
            if "{id}" not in path:
                continue
            item = OPENAPI["paths"][path]
            refs = [p.get("$ref") for p in item.get("parameters", [])]
            refs += [p.get("$ref") for p in operation.get("parameters", [])]
            self.assertIn("#/components/parameters/ConversationId", refs, (path, method))


class EnforcedLimitsTests(SynchronousTestCase):
    """
    What the server enforces, the document says.
    """

    def test_query_length(self) -> None:
        """RSQL queries: at most rsql.MAX_LENGTH characters."""
        for name in ("MessageQuery", "ConversationQuery"):
            self.assertEqual(parameter(name)["schema"]["maxLength"], rsql.MAX_LENGTH)

    def test_limits(self) -> None:
        """Page sizes: 1 to MAX_LIMIT."""
        for name in ("MessageLimit", "ListLimit"):
            schema = parameter(name)["schema"]
            self.assertEqual((schema["minimum"], schema["maximum"]), (1, MAX_LIMIT))

    def test_cursor(self) -> None:
        """The cursor: URL-safe base64 without padding, at most 200 characters."""
        schema = parameter("Cursor")["schema"]
        self.assertEqual((schema["minLength"], schema["maxLength"]), (1, 200))
        cursor = encode_cursor(
            Conversation("28ccd489-f588-4d35-99a9-1e74ec2475b2", 253_402_300_799_999_999, "c", "C")
        )
        self.assertRegex(cursor, schema["pattern"])
        for bad in ("abc=", "a+b", "a/b", "a b"):
            self.assertIsNone(re.search(schema["pattern"], bad), bad)

    def test_idempotency_key(self) -> None:
        """The Idempotency-Key pattern and length accept exactly what the server does."""
        schema = parameter("IdempotencyKey")["schema"]
        samples = [
            "a", "abc-123", '"abc"', '"a b"', "a b", "~!", "a" * 255, "a" * 256,
            '"' + "a" * 255 + '"', '"' + "a" * 256 + '"', '""', '"', '" a"', "a\tb", "a\x7fb",
            '"abc', "abc\"", "x" * 300,
        ]
        for sample in samples:
            documented = (
                re.search(schema["pattern"], sample) is not None
                and schema["minLength"] <= len(sample) <= schema["maxLength"]
            )
            self.assertEqual(documented, accepts_key(sample), repr(sample))

    def test_edge_answers(self) -> None:
        """Every operation lists 400, 403, 414 and 431; the WebSocket endpoint also 426."""
        for path, method, operation in operations():
            for status in ("400", "403", "414", "431"):
                self.assertIn(status, operation["responses"], (path, method))
        chat = OPENAPI["paths"]["/v1/chat"]["get"]["responses"]
        self.assertIn("426", chat)
        self.assertIn("101", chat)
        for name, status in (("UriTooLong", 414), ("UpgradeRequired", 426),
                             ("RequestHeaderFieldsTooLarge", 431)):
            self.assertIn(name, OPENAPI["components"]["responses"], status)
