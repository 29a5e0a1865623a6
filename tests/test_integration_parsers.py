"""CGRU's services and parsers on a real farm: a server (AMP and Afanasy ports) and a render on
127.0.0.1, tasks printing their programs' real output (tests/data/parsers), watched through the
client library, the CLI and the Afanasy port."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from test_afanasy import get, send
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from farmnet.client import FarmClient, connect
from farmnet.testing import ProcessFarm, wait_until

DATA = Path(__file__).parent / "data" / "parsers"


def prints(sample: str, upto: str | None = None) -> str:
    """A shell command printing a sample (the part before the line holding ``upto``, if given)."""
    text = (DATA / sample).read_text()
    if upto is not None:
        text = text[: text.index(upto)]
    return f"printf '%s' {shlex.quote(text)}"


class ParserFarmTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="farmnet-parsers-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        config = self.base / "server.yaml"
        config.write_text("server:\n  stats:\n    enabled: false\n"
                          "  scheduling:\n    known_services: [studio_tool]\n")
        self.farm = ProcessFarm(reactor, self.base)
        self.addCleanup(self.farm.stop)
        await self.farm.start_server("--config", str(config), "--afanasy", "tcp:0:interface=127.0.0.1")
        address = self.base / "server-store" / "afanasy.address"
        await wait_until(reactor, address.exists, 10, "the Afanasy listener")
        self.afanasy_port = int(address.read_text().strip().rsplit(":", 1)[1])
        await self.farm.start_render("r1")
        self.client: FarmClient = await connect(reactor, self.farm.endpoint, "anna")
        self.addCleanup(self.client.close)

    async def cli(self, *args: str) -> tuple[int, str, str]:
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "farmnet.cli", *args, "--server", self.farm.endpoint, "--user", "anna"],
            env=dict(os.environ), path=str(self.base))
        return code, out.decode(), err.decode()

    async def task(self, job_id: int, block: int = 0) -> dict[str, Any]:
        return (await self.client.tasks(job_id, block))[0]

    async def test_nuke_progress_per_frame_then_done(self) -> None:
        """A nuke block naming no parser gets the nuke service's: "Frame N (i of n)" lines move the
        task's progress and frame while it runs."""
        gate = self.base / "gate"
        command = (f"{prints('nuke.txt', upto='Writing /shots/sq010/sh020/render/sh020_comp_v012.0103')}; "
                   f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.05; done; "
                   f"{prints('nuke.txt')} | tail -n 5")
        job_id, warnings = await self.client.submit({"job": {"name": "comp", "blocks": [{
            "name": "comp", "service": "nuke", "parser": "", "command": command,
            "frame_first": 101, "frame_last": 104, "frames_per_task": 4}]}})
        self.assertEqual(warnings, [])

        async def halfway() -> bool:
            task = await self.task(job_id)
            return (task["state"], task["progress"], task["frame"]) == ("RUN", 50, 2)

        await wait_until(reactor, halfway, 60, "the nuke task at frame 2 of 4")
        [[progress]] = (await send(self.afanasy_port, get("jobs", ids=[job_id], mode="progress")))[0][
            "job_progress"]["progress"]
        self.assertEqual((progress["per"], progress["frm"]), (50, 2))  # Afanasy's task progress keys
        gate.touch()
        code, _, err = await self.cli("wait", str(job_id))
        self.assertEqual(code, 0, err)
        task = await self.task(job_id)
        self.assertEqual((task["state"], task["progress"], task["warning"]), ("DON", 100, ""))

    async def test_parser_error_stops_and_fails_a_run_that_would_exit_0(self) -> None:
        """As Afanasy's render: the first error line stops the task (no waiting for the sleep), and
        the run is an error although the command would exit 0."""
        command = f"{prints('nuke_error.txt')}; sleep 60; exit 0"
        job_id, _ = await self.client.submit({"job": {"name": "broken comp", "blocks": [{
            "name": "comp", "service": "nuke", "parser": "nuke", "errors_retries": 0,
            "tasks": [{"name": "all", "command": command}]}]}})
        code, _, _ = await self.cli("wait", str(job_id))
        self.assertEqual(code, 1)
        task = await self.task(job_id)
        self.assertEqual((task["state"], task["errors_count"]), ("ERR", 1))
        self.assertLess(task["time_done"] - task["time_started"], 30)
        output = await self.client.output(job_id, 0, 0)
        self.assertIn(b"nuke parser found an error: Read1: Node execution error: "
                      b"/plates/sh020_plate.0102.exr", output)

    async def test_warning_flags_a_done_task(self) -> None:
        """mantra's texture warning: the task is done and flagged (farmnet tasks: WRN and the line;
        the Afanasy port: WRN in its state)."""
        job_id, _ = await self.client.submit({"job": {"name": "fx", "blocks": [{
            "name": "mantra", "service": "hbatch_mantra", "parser": "hbatch_mantra",
            "command": prints("hbatch_mantra.txt"), "frame_first": 1, "frame_last": 2,
            "frames_per_task": 2}]}})
        code, _, err = await self.cli("wait", str(job_id))
        self.assertEqual(code, 0, err)
        task = await self.task(job_id)
        self.assertEqual(task["state"], "DON")
        self.assertIn("Unable to load texture '/proj/tex/missing_diffuse.rat'", task["warning"])
        code, out, err = await self.cli("tasks", str(job_id))
        self.assertEqual(code, 0, err)
        self.assertIn("DON WRN", out)
        self.assertIn("warning: task 0.0: mantra: Unable to load texture", out)
        [[progress]] = (await send(self.afanasy_port, get("jobs", ids=[job_id], mode="progress")))[0][
            "job_progress"]["progress"]
        self.assertEqual(progress["state"], " DON WRN")

    async def test_bad_result_fails_the_run(self) -> None:
        """aerender that rendered nothing (no PROGRESS line) exits 0: Afanasy's bad result, an error."""
        job_id, _ = await self.client.submit({"job": {"name": "ae", "blocks": [{
            "name": "ae", "service": "afterfx", "parser": "afterfx", "errors_retries": 0,
            "tasks": [{"name": "all", "command": prints("afterfx_nothing.txt")}]}]}})
        code, _, _ = await self.cli("wait", str(job_id))
        self.assertEqual(code, 1)
        self.assertEqual((await self.task(job_id))["state"], "ERR")
        self.assertIn(b"afterfx parser found a bad result: aerender printed no PROGRESS line",
                      await self.client.output(job_id, 0, 0))

    async def test_fatal_error_is_not_retried(self) -> None:
        """CGRU's [ PARSER FATAL ERROR ] marker: the task errs at once, its retries unused."""
        job_id, _ = await self.client.submit({"job": {"name": "fatal", "blocks": [{
            "name": "b", "errors_retries": 3,
            "tasks": [{"name": "t", "command": "echo '[ PARSER FATAL ERROR ] scene is corrupt'"}]}]}})
        code, _, _ = await self.cli("wait", str(job_id))
        self.assertEqual(code, 1)
        task = await self.task(job_id)
        self.assertEqual((task["state"], task["errors_count"], task["starts_count"]), ("ERR", 1, 1))

    async def test_finished_success_stops_the_task_done(self) -> None:
        """Fusion's render node may stay up after rendering: "Closing outstanding documents" ends the
        task, done, without waiting for it (as Afanasy's "parser finished success")."""
        job_id, _ = await self.client.submit({"job": {"name": "fu", "blocks": [{
            "name": "fu", "service": "fusion", "parser": "", "errors_retries": 0,
            "tasks": [{"name": "all", "command": f"{prints('fusion_done.txt')}; sleep 60; exit 3"}]}]}})
        code, _, err = await self.cli("wait", str(job_id))
        self.assertEqual(code, 0, err)
        task = await self.task(job_id)
        self.assertEqual((task["state"], task["progress"]), ("DON", 100))
        self.assertLess(task["time_done"] - task["time_started"], 30)
        self.assertIn(b"fusion parser read that the work is done", await self.client.output(job_id, 0, 0))

    async def test_unknown_service_and_parser_warn_the_submitter(self) -> None:
        """Unknown names run with the generic service and parser, and every submit path says so;
        a name in the server's known_services does not warn."""
        spec = {"job": {"name": "typos", "blocks": [
            {"name": "comp", "service": "nuk", "parser": "nukee",
             "tasks": [{"name": "t", "command": "echo 40%"}]},
            {"name": "tool", "service": "studio_tool", "tasks": [{"name": "t", "command": "echo ok"}]},
            {"name": "cycles", "service": "blender", "parser": "blender_cycles",
             "tasks": [{"name": "t", "command": "true"}]}]}}
        expected = ["job.blocks[0].service: block 'comp': service 'nuk' is unknown; tasks run with the "
                    "generic service (did you mean 'nuke'?)",
                    "job.blocks[0].parser: block 'comp': parser 'nukee' is unknown; tasks run with the "
                    "generic parser (did you mean 'nuke'?)"]
        job_id, warnings = await self.client.submit(spec)  # the client library
        self.assertEqual(warnings, expected)
        spec_file = self.base / "typos.json"
        spec_file.write_text(json.dumps(spec))
        code, out, err = await self.cli("submit", str(spec_file))  # farmnet submit
        self.assertEqual(code, 0, err)
        self.assertEqual(err.splitlines(), [f"farmnet: warning: {w}" for w in expected])
        answer, _ = await send(self.afanasy_port, {"job": {**spec["job"], "user_name": "anna"}})
        self.assertEqual(answer["warnings"], expected)  # the Afanasy port's submit answer
        code, _, err = await self.cli("wait", str(job_id))
        self.assertEqual(code, 0, err)
        tasks = await self.client.tasks(job_id, 0)
        self.assertEqual((tasks[0]["state"], tasks[0]["progress"]), ("DON", 100))
