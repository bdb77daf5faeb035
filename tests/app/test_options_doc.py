"""
docs/operations.md's "Options" section and the options of C{twistd medichat} agree: every
option of L{medichat.app.tap.Options} has one row there, every row names an option, and a
row's default column starts with the option's real default.

The format (docs/operations.md says it too): in the section between C{## Options} and the
next C{## } heading, a row is C{| `--name` | default | meaning |}.  The default column
starts with the declared default as written here by L{rendered}: C{25} for C{25.0},
C{tcp:8080} for a string, backticks optional; C{off} for a flag.  An option declared with
no default (L{None}, or an C{opt_} method) may say anything there.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

import medichat
from medichat.app.tap import Options

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(medichat.__file__))),
                   "docs", "operations.md")
_ROW = re.compile(r"^\| `--([a-z0-9-]+)` \|([^|]*)\|")


def documented_options(text: str) -> dict[str, str]:
    """
    The rows of the Options section: option name to its default column, stripped.

    @raise AssertionError: for an option with two rows, or no Options section.
    """
    match = re.search(r"^## Options\n(.*?)(?=^## )", text, re.DOTALL | re.MULTILINE)
    assert match is not None, "docs/operations.md has no '## Options' section"
    rows: dict[str, str] = {}
    for line in match.group(1).splitlines():
        row = _ROW.match(line)
        if row is None:
            continue
        name, default = row.group(1), row.group(2).strip()
        assert name not in rows, f"--{name} has two rows"
        rows[name] = default
    return rows


def declared_defaults(options: Options) -> dict[str, Any]:
    """
    Every long option of C{options} and its declared default: the value for a parameter,
    C{False} for a flag, L{None} for none (a parameter without one, or an C{opt_} method).
    """
    declared: dict[str, Any] = {}
    for name in options.longOpt:
        declared[name.rstrip("=")] = None
    for name, _short, default, *_ in options.optParameters:
        declared[name] = default
    for name, *_ in options.optFlags:
        declared[name] = False
    return declared


def rendered(default: Any) -> str:
    """A declared default as the documentation writes it."""
    if default is False:
        return "off"
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def first_word(column: str) -> str:
    """The first word of a default column, without backticks."""
    words = column.replace("`", "").split()
    return words[0] if words else ""


class OptionsDocumentedTests(SynchronousTestCase):
    """
    The Options section of docs/operations.md cannot drift from the code.
    """

    def setUp(self) -> None:
        with open(DOC, encoding="utf-8") as f:
            self.rows = documented_options(f.read())
        self.declared = declared_defaults(Options())

    def test_every_option_documented(self) -> None:
        """Every option of twistd medichat has a row."""
        self.assertEqual(sorted(set(self.declared) - set(self.rows)), [])

    def test_nothing_else_documented(self) -> None:
        """Every row names a real option."""
        self.assertEqual(sorted(set(self.rows) - set(self.declared)), [])

    def test_defaults(self) -> None:
        """Each row's default column starts with the option's declared default."""
        wrong = {
            name: (self.rows[name], rendered(default))
            for name, default in self.declared.items()
            if default is not None and name in self.rows
            and first_word(self.rows[name]) != rendered(default)
        }
        self.assertEqual(wrong, {})

    def test_reader(self) -> None:
        """The reader takes rows of the section only, and refuses an option twice."""
        text = (
            "| `--outside` | 1 | x |\n## Options\n| option | default | meaning |\n"
            "| `--a` | `7` (seven) | x |\n| `--b` | | y |\n## Next\n| `--c` | 2 | z |\n"
        )
        self.assertEqual(documented_options(text), {"a": "`7` (seven)", "b": ""})
        self.assertRaises(AssertionError, documented_options,
                          "## Options\n| `--a` | 1 | x |\n| `--a` | 1 | x |\n## End\n")
        self.assertEqual((first_word("`7` (seven)"), rendered(25.0), rendered(False)),
                         ("7", "25", "off"))
