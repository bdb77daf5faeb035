"""
The layers of medichat, read from every module's imports: a lower layer never imports a
higher one, siblings never import each other, only C{app} (and test support) imports the
store implementations, and the libraries of one edge stay at that edge.

    app > carriers > stomp | http > domain > auth | pubsub > model, errors, interfaces, ...
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator

from twisted.trial.unittest import SynchronousTestCase

import medichat

RANKS = {
    "": 0,  # medichat.model, errors, interfaces, rsql, _timers, _ratelimit
    "auth": 1,
    "pubsub": 1,
    "domain": 2,
    "stomp": 3,
    "http": 3,
    "carriers": 4,
    "app": 5,
    "testing": 5,
}
"""The rank of each layer: a module may import its own layer and any of lower rank."""

STORE_IMPORTERS = frozenset({"app", "testing", "store"})
"""The layers that may import C{medichat.store} (which itself sits on the bottom layer)."""

EDGE_LIBRARIES = {
    "twisted.web": frozenset({"http", "carriers", "app", "testing"}),
    "klein": frozenset({"http"}),
    "werkzeug": frozenset({"http"}),
    "autobahn": frozenset({"carriers", "app"}),
    "txpostgres": frozenset({"store"}),
    "psycopg2": frozenset({"store"}),
    "sqlite3": frozenset({"store", "testing"}),
    "twisted.enterprise": frozenset({"store"}),
    "prometheus_client": frozenset({"app"}),
}
"""Third-party and standard modules that belong to one edge, and the layers that may use them."""


def layer_of(module: str) -> str:
    """
    The layer of a module inside medichat: its first package below C{medichat}, C{""} for
    the modules at the top (model, errors, ...), or C{"testing"} for L{medichat.testing}.
    """
    parts = module.split(".")
    assert parts[0] == "medichat", module
    if len(parts) == 1:
        return ""
    first = parts[1]
    if first in RANKS or first == "store":
        return first
    return ""


def imported_modules(source: str, module: str) -> Iterator[str]:
    """
    Every module that C{source} (the text of C{module}) imports, relative imports resolved.
    """
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                yield ".".join([*base, *([node.module] if node.module else [])])
            elif node.module:
                yield node.module


def violations(module: str, source: str) -> list[str]:
    """
    What C{module}'s imports break of the layering rules, one sentence each.
    """
    layer = layer_of(module)
    found = []
    for target in imported_modules(source, module):
        if target == "medichat" or target.startswith("medichat."):
            if target == "medichat":
                continue
            other = layer_of(target)
            if other == layer:
                continue
            if other == "store":
                if layer not in STORE_IMPORTERS:
                    found.append(f"{module} ({layer or 'base'}) imports the store: {target}")
                continue
            if layer == "store":
                if RANKS[other] > 0:
                    found.append(f"{module} (store) imports a layer above it: {target}")
                continue
            if RANKS[other] >= RANKS[layer]:
                found.append(
                    f"{module} ({layer or 'base'}) imports {target} ({other or 'base'}), "
                    "which is not below it"
                )
            continue
        for library, allowed in EDGE_LIBRARIES.items():
            if (target == library or target.startswith(library + ".")) and layer not in allowed:
                found.append(f"{module} ({layer or 'base'}) imports {target}, an edge library")
    return found


def medichat_modules() -> Iterator[tuple[str, str]]:
    """
    C{(module name, source)} of every module of the medichat package.
    """
    root = os.path.dirname(os.path.abspath(medichat.__file__))
    for directory, _dirs, files in os.walk(root):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, os.path.dirname(root))[: -len(".py")]
            parts = relative.split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            with open(path, encoding="utf-8") as f:
                yield ".".join(parts), f.read()


class LayerTests(SynchronousTestCase):
    """
    The package keeps its layers.
    """

    def test_no_module_imports_upwards(self) -> None:
        """No medichat module imports a higher layer, a sibling, or another edge's library."""
        found = [v for module, source in medichat_modules() for v in violations(module, source)]
        self.assertEqual(found, [])

    def test_every_module_has_a_layer(self) -> None:
        """Every package below medichat is a known layer (a new one must be ranked here)."""
        packages = {
            module.split(".")[1]
            for module, _ in medichat_modules()
            if module.count(".") >= 2
        }
        self.assertEqual(packages - set(RANKS) - {"store"}, set())

    def test_detects_upward_import(self) -> None:
        """The domain importing the STOMP session is reported."""
        found = violations(
            "medichat.domain.conversations", "from medichat.stomp.session import StompSession\n"
        )
        self.assertEqual(len(found), 1)
        self.assertIn("medichat.stomp.session", found[0])

    def test_detects_sibling_import(self) -> None:
        """HTTP importing STOMP (siblings), and auth importing pubsub, are reported."""
        self.assertEqual(len(violations("medichat.http.rest", "import medichat.stomp.codec\n")), 1)
        self.assertEqual(
            len(violations("medichat.auth.checkers", "from medichat.pubsub import hub\n")), 1
        )

    def test_detects_store_import(self) -> None:
        """Only app and test support import the store implementations."""
        self.assertEqual(
            len(violations("medichat.domain.accounts", "from medichat.store import open_store\n")),
            1,
        )
        self.assertEqual(
            violations("medichat.app.tap", "from medichat.store import open_store\n"), []
        )

    def test_detects_relative_upward_import(self) -> None:
        """A relative import is resolved before it is judged."""
        found = violations("medichat.pubsub.hub", "from ..domain import presence\n")
        self.assertEqual(len(found), 1)

    def test_detects_edge_library(self) -> None:
        """The domain using twisted.web, or HTTP using txpostgres, is reported."""
        self.assertEqual(
            len(violations("medichat.domain.conversations", "from twisted.web import http\n")), 1
        )
        self.assertEqual(len(violations("medichat.http.rest", "import txpostgres\n")), 1)
        self.assertEqual(
            len(violations("medichat.stomp.session", "from prometheus_client import Counter\n")),
            1,
        )

    def test_allows_downward_imports(self) -> None:
        """Importing a lower layer, or the same one, is fine."""
        source = (
            "from medichat.model import User\n"
            "from medichat.auth.credentials import BearerToken\n"
            "from medichat.domain.accounts import Accounts\n"
            "from medichat.stomp.codec import Frame\n"
        )
        self.assertEqual(violations("medichat.stomp.session", source), [])
