"""
Tests for the value objects' direct copies (L{User.at}, L{Message.with_seq},
L{AccessEntry.of_customer}, L{Conversation.after_message}): each must equal
C{attrs.evolve} with the fields it changes changed, whatever fields the class has.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from medichat.model import AccessEntry, Conversation, Message, User


def _every_field_set(cls: type) -> Any:
    """
    An instance of C{cls} whose every field holds a value of its own, none of them a
    default (the classes do not check types, so text does for all).
    """
    return cls(**{field.name: f"{field.name}-value" for field in attrs.fields(cls)})


class CopiesTests(SynchronousTestCase):
    """
    A copy made field by field keeps every other field as it was.
    """

    def test_user_at(self) -> None:
        """
        L{User.at} is C{evolve(user, address=...)}.
        """
        user = _every_field_set(User)
        self.assertEqual(user.at("192.0.2.7"), attrs.evolve(user, address="192.0.2.7"))
        self.assertEqual(user.at(None), attrs.evolve(user, address=None))

    def test_message_with_seq(self) -> None:
        """
        L{Message.with_seq} is C{evolve(message, seq=...)}.
        """
        message = _every_field_set(Message)
        self.assertEqual(message.with_seq(42), attrs.evolve(message, seq=42))

    def test_access_of_customer(self) -> None:
        """
        L{AccessEntry.of_customer} is C{evolve(entry, customer_id=...)}.
        """
        entry = _every_field_set(AccessEntry)
        self.assertEqual(entry.of_customer("c"), attrs.evolve(entry, customer_id="c"))
        self.assertEqual(entry.of_customer(None), attrs.evolve(entry, customer_id=None))

    def test_conversation_after_message(self) -> None:
        """
        L{Conversation.after_message} moves the last activity forward only, reopens for
        a customer, keeps every other field, and is L{None} when neither moves.
        """
        conversation = attrs.evolve(_every_field_set(Conversation), last_activity=10)
        self.assertEqual(conversation.after_message(20, False),
                         attrs.evolve(conversation, last_activity=20))
        self.assertEqual(conversation.after_message(20, True),
                         attrs.evolve(conversation, last_activity=20, status="open"))
        self.assertEqual(conversation.after_message(5, True),
                         attrs.evolve(conversation, status="open"))
        self.assertIsNone(conversation.after_message(10, False))
        self.assertIsNone(attrs.evolve(conversation, status="open").after_message(5, True))
