"""bench/ stays runnable: every script answers ``--help``, is listed in bench/README.md with its
command, and the in-process ones run a small load to the end.

Speed itself is not asserted here (it is measured by the benches, not by timed tests); these only
catch a bench broken by a change to what it drives, as bench/masks.py once was.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
#: Modules the benches import rather than benchmarks of their own.
HELPERS = {"fake_renders.py"}
#: Small loads of the benches that need no other process.
SMALL_RUNS = [
    ["solve.py", "--jobs", "20", "--tasks", "10", "--renders", "10"],
    ["solve.py", "--jobs", "20", "--tasks", "10", "--renders", "20", "--pools", "2", "--needs"],
    ["listings.py", "--jobs", "100", "--tasks", "2", "--changes", "1000", "--repeat", "1"],
    ["parsers.py", "--mb", "1"],
    ["masks.py", "--length", "5", "--jobs", "10", "--renders", "10"],
]


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=180, check=False)


def benches() -> list[Path]:
    return sorted(path for path in BENCH.glob("*.py") if path.name not in HELPERS)


class BenchTests(SynchronousTestCase):
    def test_every_bench_answers_help(self) -> None:
        for path in [*benches(), BENCH / "fake_renders.py"]:
            result = run([str(path.relative_to(ROOT)), "--help"])
            self.assertEqual(result.returncode, 0, f"{path.name} --help: {result.stderr[-2000:]}")
            self.assertIn("usage:", result.stdout)

    def test_every_bench_is_in_the_readme_with_its_command(self) -> None:
        readme = (BENCH / "README.md").read_text()
        for path in benches():
            self.assertRegex(readme, re.escape(f"python bench/{path.name}"),
                             f"bench/README.md does not give {path.name}'s command")
        for named in set(re.findall(r"python bench/(\w+\.py)", readme)):
            self.assertTrue((BENCH / named).exists(), f"bench/README.md names bench/{named}, which is gone")

    def test_in_process_benches_run_a_small_load(self) -> None:
        for args in SMALL_RUNS:
            result = run([f"bench/{args[0]}", *args[1:]])
            self.assertEqual(result.returncode, 0, f"{' '.join(args)}: {result.stderr[-2000:]}")
