"""
Tests for L{medichat.model.compact_json} and L{medichat.model.event_json}: the JSON text
of events, answers and webhooks, from one encoder made once.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from medichat import model
from medichat.model import compact_json, event_json

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


class CompactJSONTests(SynchronousTestCase):
    def test_text(self) -> None:
        """
        No spaces, the keys in their order, non-ASCII characters as they are, and what
        JSON must escape escaped.
        """
        value = {"z": "Zoë \u2603", "a": [1, None, True], "q": 'say "hi"\n'}
        self.assertEqual(
            compact_json(value),
            '{"z":"Zoë \u2603","a":[1,null,true],"q":"say \\"hi\\"\\n"}',
        )
        self.assertEqual(event_json(value), compact_json(value))

    @given(_JSON)
    def test_same_as_dumps(self, value: Any) -> None:
        """
        Whatever the value, the text C{json.dumps} gives with the same options, which
        reads back as the value.
        """
        text = compact_json(value)
        self.assertEqual(text, json.dumps(value, separators=(",", ":"), ensure_ascii=False))
        self.assertEqual(event_json(value), text)
        # NaN is not equal to itself: compare the texts of what it reads back as.
        self.assertEqual(compact_json(json.loads(text)), text)

    def test_refuses_what_json_cannot_hold(self) -> None:
        """
        A value JSON cannot hold fails as C{json.dumps} does, a circular one (which
        medichat never builds) with C{RecursionError}, and the next call works.
        """
        self.assertRaises(TypeError, compact_json, {"when": object()})
        circular: list[Any] = []
        circular.append(circular)
        self.assertRaises(RecursionError, compact_json, circular)
        self.assertEqual(compact_json({"ok": 1}), '{"ok":1}')

    def test_without_the_c_encoder(self) -> None:
        """Where json has no C encoder, the same text from the JSONEncoder."""
        value = {"z": "Zoë", "n": [1.5, None]}
        expected = compact_json(value)
        self.patch(model, "_encode_compact", None)
        self.assertEqual(compact_json(value), expected)
        self.assertEqual(event_json(value), expected)
