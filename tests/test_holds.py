"""HoldTimer: held answers of one length timed by one reactor timer, on a `task.Clock`."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from farmnet.server.holds import HoldTimer


class HoldTimerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.timer = HoldTimer(self.clock, 10.0)
        self.over: list[str] = []

    def start(self, name: str):
        return self.timer.start(lambda: self.over.append(name))

    def test_holds_end_in_order_each_after_its_time(self) -> None:
        self.start("a")
        self.clock.advance(3)
        self.start("b")
        self.start("c")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # one reactor timer for all
        self.clock.advance(6.9)
        self.assertEqual(self.over, [])
        self.clock.advance(0.1)
        self.assertEqual(self.over, ["a"])
        self.clock.advance(2.9)
        self.assertEqual(self.over, ["a"])
        self.clock.advance(0.1)
        self.assertEqual(self.over, ["a", "b", "c"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.timer.active, 0)

    def test_cancelled_hold_is_not_called_and_last_cancel_leaves_no_timer(self) -> None:
        a = self.start("a")
        b = self.start("b")
        a.cancel()
        a.cancel()  # twice is once
        self.assertFalse(a.active())
        self.assertTrue(b.active())
        self.clock.advance(10)
        self.assertEqual(self.over, ["b"])
        c = self.start("c")
        c.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])  # nothing left for the reactor

    def test_timer_skips_to_the_next_live_hold(self) -> None:
        first = self.start("first")
        self.clock.advance(5)
        self.start("second")
        first.cancel()
        self.clock.advance(5)  # the first's time: nothing is due
        self.assertEqual(self.over, [])
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 15)
        self.clock.advance(5)
        self.assertEqual(self.over, ["second"])

    def test_hold_started_while_others_end(self) -> None:
        def again() -> None:
            self.over.append("a")
            self.start("a2")

        self.timer.start(again)
        self.clock.advance(10)
        self.assertEqual(self.over, ["a"])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(10)
        self.assertEqual(self.over, ["a", "a2"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
