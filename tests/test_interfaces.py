"""
Every implementation of every interface, in medichat and among the tests' fakes, provides
it fully (L{verifyObject}); and every class that declares an interface is checked here.

To add an implementation, add one line to L{IMPLEMENTATIONS}: the interface and a function
that makes an instance (given the test case, for C{mktemp} and cleanups).
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
from collections.abc import Callable, Iterator
from types import ModuleType

from treq.testing import StubTreq
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm
from twisted.cred.strcred import ICheckerFactory
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from zope.interface import implementedBy
from zope.interface.interface import InterfaceClass
from zope.interface.verify import verifyObject

import medichat
import medichat.interfaces
import tests
from medichat.auth.checkers import JWTChecker, SessionCookieChecker
from medichat.auth.credentials import BearerToken, SessionCookie
from medichat.auth.realm import MedichatRealm
from medichat.carriers._budget import WriteBudget
from medichat.carriers.tcp import StompTCPFactory
from medichat.carriers.websocket import StompWebSocketFactory
from medichat.domain.cluster_presence import ClusterPresence
from medichat.domain.conversations import ConversationService
from medichat.domain.presence import InProcessPresence
from medichat.http.origins import OriginPolicy
from medichat.http.webhook_client import TreqSender
from medichat.interfaces import (
    IBearerToken,
    IBroadcast,
    ICarrier,
    IConversations,
    IEventFeed,
    IHub,
    IPresence,
    ISessionCookie,
    IStore,
    IStoreBound,
    ISubscriber,
    IWebhookSender,
)
from medichat.model import User
from medichat.pubsub.cluster import ClusterHub
from medichat.pubsub.feed import EventFeed
from medichat.pubsub.hub import InProcessHub
from medichat.stomp.destinations import route_subscription
from medichat.stomp.session import _Subscription
from medichat.store import PostgreSQLStore, SQLiteStore
from medichat.store.broadcast import PostgreSQLBroadcast
from medichat.testing import MemoryStore
from tests._broadcast import Bus, MemoryBroadcast
from tests._stomp import Client, NoConversations, make_services
from tests.domain import test_conversations, test_presence, test_webhooks
from tests.http import test_rest
from tests.pubsub import test_feed, test_hub
from tests.stomp import test_session, test_session_revalidation, test_stream

Make = Callable[[SynchronousTestCase], object]

USER = User("0be8c544-9518-4bce-8519-0eee0356989f", "c1", "customer")


def _subscription(case: SynchronousTestCase) -> object:
    """A STOMP session's subscription, on a session connected over the TCP carrier."""
    client = Client(make_services())
    client.connect()
    session = client.protocol._session
    route = route_subscription(f"/v1/topic/conversation/{USER.user_id}")
    assert session is not None and route is not None
    return _Subscription(session, "sub-0", route, "auto")


def _websocket_protocol(case: SynchronousTestCase) -> object:
    """The WebSocket carrier's protocol, built by its factory."""
    factory = StompWebSocketFactory(make_services(), OriginPolicy([]))
    return factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))


def _plugin(name: str) -> Make:
    """The C{--auth} checker factory plugin class C{name}, instantiated."""

    def make(case: SynchronousTestCase) -> object:
        module = importlib.import_module("twisted.plugins.medichat_cred")
        return getattr(module, name)()

    return make


IMPLEMENTATIONS: list[tuple[InterfaceClass, Make]] = [
    # medichat.interfaces
    (IBearerToken, lambda case: BearerToken("a.b.c")),
    (ISessionCookie, lambda case: SessionCookie("cookie")),
    (IStoreBound, lambda case: JWTChecker(secret=b"s" * 32, clock=Clock())),
    (IStoreBound, lambda case: SessionCookieChecker(3600)),
    (ICarrier, lambda case: StompTCPFactory(make_services()).buildProtocol(None)),
    (ICarrier, _websocket_protocol),
    (ISubscriber, _subscription),
    (IHub, lambda case: InProcessHub("test")),
    (IHub, lambda case: ClusterHub(InProcessHub("t"), Bus().join("t"), Clock())),
    (IBroadcast, lambda case: PostgreSQLBroadcast(
        "postgresql://postgres@127.0.0.1/none", Clock(), node_id="t"
    )),
    (IPresence, lambda case: InProcessPresence(InProcessHub("test"))),
    (IPresence, lambda case: ClusterPresence(MemoryStore(Clock()), InProcessHub("test"))),
    (IConversations, lambda case: ConversationService(
        MemoryStore(Clock()), InProcessHub("test"), Clock(), InProcessPresence(InProcessHub("t")),
        EventFeed(MemoryStore(Clock()), InProcessHub("test"), Clock()),
    )),
    (IEventFeed, lambda case: EventFeed(MemoryStore(Clock()), InProcessHub("test"), Clock())),
    (IStore, lambda case: SQLiteStore(case.mktemp(), Clock())),
    (IStore, lambda case: PostgreSQLStore("postgresql://postgres@127.0.0.1/none", Clock())),
    (IStore, lambda case: MemoryStore(Clock())),
    (IWebhookSender, lambda case: TreqSender(StubTreq(Resource()), "http://h/", Clock(), 1.0)),
    # Twisted's interfaces that medichat classes declare
    (ICredentialsChecker, lambda case: JWTChecker(secret=b"s" * 32, clock=Clock())),
    (ICredentialsChecker, lambda case: SessionCookieChecker(3600)),
    (IRealm, lambda case: MedichatRealm()),
    (IPushProducer, lambda case: WriteBudget(StringTransport())),
    (ICheckerFactory, _plugin("JWTCheckerFactory")),
    (ICheckerFactory, _plugin("SessionCheckerFactory")),
    (IPlugin, _plugin("JWTCheckerFactory")),
    (IPlugin, _plugin("SessionCheckerFactory")),
    # the tests' fakes
    (ISubscriber, lambda case: test_rest.Recorder(USER.user_id)),
    (ISubscriber, lambda case: test_conversations.Recorder(USER)),
    (ICarrier, lambda case: test_session_revalidation._Carrier()),
    (IBroadcast, lambda case: MemoryBroadcast(Bus(), "t")),
    (ISubscriber, lambda case: test_hub.Keeper()),
    (ISubscriber, lambda case: test_presence.Events()),
    (IConversations, lambda case: NoConversations()),
    (IConversations, lambda case: test_session._EveryoneTakesPart()),
    (IConversations, lambda case: test_session._StoreDown()),
    (ISubscriber, lambda case: test_feed.Keeper()),
    (IWebhookSender, lambda case: test_webhooks.Receiver()),
    (IPresence, lambda case: test_webhooks.BrokenPresence(InProcessHub("t"))),
    (IConversations, lambda case: test_stream.Interleaved(ConversationService(
        MemoryStore(Clock()), InProcessHub("test"), Clock(), InProcessPresence(InProcessHub("t")),
        EventFeed(MemoryStore(Clock()), InProcessHub("test"), Clock()),
    ))),
]
"""Each implementation, as the interface and how to make one."""


def _modules(package: ModuleType) -> Iterator[ModuleType]:
    """C{package} and every module under it, imported."""
    yield package
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        yield importlib.import_module(info.name)


def _plugin_modules() -> Iterator[ModuleType]:
    """medichat's modules in C{twisted/plugins}."""
    folder = os.path.join(os.path.dirname(os.path.dirname(__file__)), "twisted", "plugins")
    for name in sorted(os.listdir(folder)):
        if name.startswith("medichat") and name.endswith(".py"):
            yield importlib.import_module("twisted.plugins." + name[: -len(".py")])


def _declared() -> set[tuple[InterfaceClass, type]]:
    """
    Every (interface, class) pair where a class of medichat, of its plugins or of the
    tests implements one of L{medichat.interfaces}' interfaces or declares any interface
    itself.
    """
    ours = [
        value
        for value in vars(medichat.interfaces).values()
        if isinstance(value, InterfaceClass) and value.__module__ == medichat.interfaces.__name__
    ]
    modules = [*_modules(medichat), *_modules(tests), *_plugin_modules()]
    pairs: set[tuple[InterfaceClass, type]] = set()
    for module in modules:
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            for interface in implementedBy(cls).declared:
                pairs.add((interface, cls))
            for interface in ours:
                if interface.implementedBy(cls):
                    pairs.add((interface, cls))
    return pairs


class InterfaceTests(SynchronousTestCase):
    """
    L{IMPLEMENTATIONS} is complete, and each provides its interface.
    """

    def made(self) -> list[tuple[InterfaceClass, object]]:
        return [(interface, make(self)) for interface, make in IMPLEMENTATIONS]

    def test_verify(self) -> None:
        """Each implementation has every method and attribute of its interface."""
        for interface, instance in self.made():
            self.assertTrue(verifyObject(interface, instance), (interface, instance))

    def test_complete(self) -> None:
        """Every class that declares an interface is in IMPLEMENTATIONS."""
        checked = {(interface, type(instance)) for interface, instance in self.made()}
        missing = {
            f"{cls.__module__}.{cls.__qualname__} ({interface.__name__})"
            for interface, cls in _declared() - checked
        }
        self.assertEqual(missing, set())

    def test_every_interface_implemented(self) -> None:
        """Every interface of medichat.interfaces has at least one implementation here."""
        ours = {
            value
            for value in vars(medichat.interfaces).values()
            if isinstance(value, InterfaceClass)
            and value.__module__ == medichat.interfaces.__name__
        }
        self.assertEqual(ours - {interface for interface, _ in IMPLEMENTATIONS}, set())
