"""
Tests for L{tests._inline.InlineTestCase}: coroutine tests run without the reactor, and a
test that would wait fails at once.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.trial.reporter import TestResult
from twisted.trial.unittest import SynchronousTestCase

from tests._inline import InlineTestCase


def _run(case: SynchronousTestCase) -> TestResult:
    result = TestResult()
    case.run(result)
    return result


class InlineTestCaseTests(SynchronousTestCase):
    """
    L{InlineTestCase} runs fixtures and tests that are coroutines or return Deferreds.
    """

    def test_coroutines_run(self) -> None:
        """A coroutine setUp (awaiting its base's) and test run, in order, and pass."""
        calls: list[str] = []

        class Base(InlineTestCase):
            async def setUp(self) -> None:
                calls.append("base")
                await succeed(None)

        class Sample(Base):
            async def setUp(self) -> None:
                await super().setUp()
                calls.append("setUp")

            async def test_it(self) -> None:
                calls.append(await succeed("test"))

            async def tearDown(self) -> None:
                calls.append("tearDown")

        result = _run(Sample("test_it"))
        self.assertEqual((result.successes, result.errors, result.failures), (1, [], []))
        self.assertEqual(calls, ["base", "setUp", "test", "tearDown"])

    def test_waiting_fails(self) -> None:
        """A test awaiting a Deferred that has not fired fails, and the Deferred is cancelled."""
        never: Deferred[None] = Deferred()
        cancelled: list[bool] = []
        never.addErrback(lambda f: cancelled.append(f.check(CancelledError) is not None))

        class Sample(InlineTestCase):
            async def test_it(self) -> None:
                await never

        result = _run(Sample("test_it"))
        self.assertEqual(len(result.failures), 1)
        self.assertIn("waits for something", str(result.failures[0][1].value))
        self.assertEqual(cancelled, [True])

    def test_errors_propagate(self) -> None:
        """An exception raised in a coroutine test is an error of that kind."""

        class Sample(InlineTestCase):
            async def test_it(self) -> None:
                raise ZeroDivisionError()

            def test_deferred(self) -> Deferred[None]:
                return fail(KeyError("k"))

        for name, kind in [("test_it", ZeroDivisionError), ("test_deferred", KeyError)]:
            result = _run(Sample(name))
            self.assertEqual(len(result.errors), 1, name)
            self.assertTrue(result.errors[0][1].check(kind), name)

    def test_assert_failure(self) -> None:
        """assertFailure gives the expected exception and fails on anything else."""
        case = InlineTestCase()
        error = self.successResultOf(case.assertFailure(fail(KeyError("k")), KeyError))
        self.assertIsInstance(error, KeyError)
        self.failureResultOf(case.assertFailure(succeed(1), KeyError), self.failureException)
        self.failureResultOf(
            case.assertFailure(fail(ValueError()), KeyError), self.failureException
        )
