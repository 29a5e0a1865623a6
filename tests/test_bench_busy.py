"""bench/busy.py keeps working: a few seconds of a small busy farm (a real server, fake
renders in a child process, a monitor), and every figure the issue asks for is printed.
The figures themselves are the bench's business, not a test's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import TestCase

ROOT = Path(__file__).resolve().parent.parent


class BusyBenchTests(TestCase):
    def test_small_busy_farm_reports_every_figure(self) -> None:
        result = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "busy.py"), "--renders", "50", "--procs", "1",
             "--seconds", "4", "--warmup", "1", "--mean", "0.5", "--monitors", "1", "--no-stats"],
            capture_output=True, text=True, timeout=150, cwd=ROOT, stdin=subprocess.DEVNULL)
        out = result.stdout
        self.assertEqual(result.returncode, 0, out + result.stderr)
        for figure in ("server CPU", "server RSS", "tasks finished", "finish -> next start", "store lag",
                       "monitors", "load average"):
            self.assertIn(figure, out)
        finished = int(re.search(r"tasks finished +\d+ per second \((\d+) in the window\)", out)[1])
        self.assertGreater(finished, 50)  # 50 renders, tasks of 0.5 s on average, for 4 s: ~400
        starts = int(re.search(r"p99 [0-9.]+ ms, max \d+ ms \((\d+) starts\)", out)[1])
        self.assertGreater(starts, 50)
        events = float(re.search(r"monitors +(\d+) events/s", out)[1])
        self.assertGreater(events, 0)
        self.assertIn("0 in the window", out.split("reconnections", 1)[1].splitlines()[0])
