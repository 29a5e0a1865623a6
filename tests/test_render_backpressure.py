"""A task that writes output faster than the server takes it is slowed down, not cut:
real server and render processes, a real task writing 20 MiB as fast as it can."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from farmnet.client import connect
from farmnet.testing import ProcessFarm

LINES = 2_800_000  # `seq 1 LINES`: 20.3 MiB


class BackPressureTests(TestCase):
    timeout = 180

    async def test_fast_output_arrives_whole_and_unmarked(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="farmnet-backpressure-"))
        self.addCleanup(shutil.rmtree, base, True)
        config = base / "server.yaml"
        config.write_text("server:\n  stats:\n    enabled: false\n  store:\n    output_max_bytes: 67108864\n")
        farm = ProcessFarm(reactor, base)
        self.addCleanup(farm.stop)
        await farm.start_server("--config", str(config))
        await farm.start_render("r1")
        client = await connect(reactor, farm.endpoint, "anna", timeout=60)
        self.addCleanup(client.aclose)
        job_id, _ = await client.submit({"job": {"name": "chatty", "blocks": [
            {"name": "b", "command": f"seq 1 {LINES}", "parser": "none"}]}})
        job = await client.wait(job_id)
        self.assertEqual(job["state"], "DON")
        expected = "".join(f"{i}\n" for i in range(1, LINES + 1)).encode()
        self.assertGreater(len(expected), 20 << 20)
        output = await client.output(job_id, 0, 0)
        self.assertEqual(output.count(b"[farmnet:"), 0)  # no "dropped while the server was away"
        self.assertEqual(len(output), len(expected))
        self.assertTrue(output == expected, "the output differs from what the task wrote")
