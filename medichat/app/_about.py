"""
What this medichat is: its version and the versions it runs on.
"""

from __future__ import annotations

import platform

import twisted
from medichat import __version__


def version_text() -> str:
    """
    One line for C{--version}: medichat's version, then Twisted's and Python's.
    """
    return (
        f"medichat {__version__} (Twisted {twisted.__version__}, "
        f"{platform.python_implementation()} {platform.python_version()})"
    )
