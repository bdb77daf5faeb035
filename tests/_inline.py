"""
Coroutine tests that never wait: L{InlineTestCase}.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

_INLINE = "_inline"
"""The attribute that marks a method already made inline."""


def _inline(function: Callable[..., Any]) -> Callable[..., Any]:
    """
    C{function}, a method, made to return only once the coroutine or L{Deferred} it
    returns has its result; one still waiting is cancelled and fails the test.
    """

    @functools.wraps(function)
    def run(self: SynchronousTestCase, *args: Any, **kwargs: Any) -> Any:
        outcome = function(self, *args, **kwargs)
        if inspect.iscoroutine(outcome):
            outcome = Deferred.fromCoroutine(outcome)
        if not isinstance(outcome, Deferred):
            return outcome
        results: list[object] = []
        outcome.addBoth(results.append)
        if not results:
            outcome.cancel()
            raise self.failureException(
                f"{function.__qualname__} waits for something that only the reactor or the "
                "passing of time would bring; a unit test must not"
            )
        (result,) = results
        if isinstance(result, Failure):
            result.raiseException()
        return result

    setattr(run, _INLINE, True)
    return run


class InlineTestCase(SynchronousTestCase):
    """
    A L{SynchronousTestCase} whose C{setUp}, C{tearDown} and test methods may be
    coroutines (C{async def}) or return L{Deferred}s, which must have their result when
    they return: with L{medichat.testing.MemoryStore}, a L{twisted.internet.task.Clock}
    and in-memory transports nothing waits for the reactor, and a test that would is an
    error rather than a slow test.  The reactor is never run.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Test methods are replaced on the class (trial's loader looks them up there),
        # including those a mixin brings.
        super().__init_subclass__(**kwargs)
        for name in dir(cls):
            if not name.startswith("test"):
                continue
            method = getattr(cls, name, None)
            if inspect.isfunction(method) and not getattr(method, _INLINE, False):
                setattr(cls, name, _inline(method))

    def __init__(self, methodName: str = "runTest") -> None:
        super().__init__(methodName)
        # Fixtures are replaced on the instance only, so that a subclass's setUp can still
        # await super().setUp() as the coroutine it is.
        for name in ("setUp", "tearDown"):
            setattr(self, name, types.MethodType(_inline(getattr(type(self), name)), self))

    def assertFailure(self, deferred: Deferred[Any], *expected: type[BaseException]) -> Any:
        """
        Like L{twisted.trial.unittest.TestCase.assertFailure}: a L{Deferred} that fires
        with the exception if C{deferred} fails with one of the C{expected} kinds, and
        fails the test otherwise.
        """

        def succeeded(result: object) -> None:
            raise self.failureException(
                f"did not catch an error, instead got {result!r}; expected {expected}"
            )

        def failed(failure: Failure) -> BaseException:
            if failure.check(*expected):
                return failure.value
            raise self.failureException(
                f"expected one of {expected}, got\n{failure.getTraceback()}"
            )

        return deferred.addCallbacks(succeeded, failed)


__all__ = ["InlineTestCase"]
