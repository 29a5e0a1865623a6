"""Every command the docs give to type works as written, against a real farm.

The commands are the ``$ `` lines of the ```` ```console ```` blocks of README.md and doc/*.md.
Each block runs as one bash script from the checkout, in order (so ``JOB=$(farmnet submit …)``
carries on to the next lines), with ``.venv/bin`` first on PATH and FARMNET_SERVER naming a farm
of real processes whose render is this host, as with ``scripts/farm``. A line ending in
``# exits N`` must exit N; every other line must exit 0.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from farmnet.client import connect
from farmnet.testing import ProcessFarm, wait_until

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "doc").glob("*.md"))]
_BLOCK = re.compile(r"^```console\n(.*?)^```", re.S | re.M)
_EXITS = re.compile(r"\s+#\s*exits\s+(\d+)\b.*$")


def console_blocks(text: str) -> list[list[tuple[str, int]]]:
    """The ``$ `` lines of each console block, with the exit code each must give."""
    blocks = []
    for match in _BLOCK.finditer(text):
        commands = []
        for line in match.group(1).splitlines():
            if not line.startswith("$ "):
                continue
            command, expected = line[2:], 0
            exits = _EXITS.search(command)
            if exits:
                command, expected = command[: exits.start()], int(exits.group(1))
            commands.append((command.strip(), expected))
        if commands:
            blocks.append(commands)
    return blocks


def script(commands: list[tuple[str, int]]) -> str:
    """bash that runs ``commands`` in order and stops at the first one with a wrong exit."""
    lines = []
    for command, expected in commands:
        shown = shlex.quote(f"$ {command}")
        lines += [f"echo {shown} >&2", command, "status=$?",
                  f'if [ "$status" != {expected} ]; then echo "FAILED (exit $status, expected {expected}): "'
                  f"{shown} >&2; exit 1; fi"]
    return "\n".join(lines) + "\n"


class ParsingTests(SynchronousTestCase):
    def test_blocks_lines_and_expected_exits(self) -> None:
        text = "x\n```console\n$ a b\nout\n$ c   # exits 2: why\n```\n```sh\n$ not me\n```\n"
        self.assertEqual(console_blocks(text), [[("a b", 0), ("c", 2)]])

    def test_the_docs_have_commands(self) -> None:
        found = [command for doc in DOCS for block in console_blocks(doc.read_text()) for command in block]
        self.assertGreater(len(found), 20)


class DocumentedCommandsTests(TestCase):
    timeout = 240

    async def setUp(self) -> None:
        self.base = tempfile.mkdtemp(prefix="farmnet-docs-")
        self.addCleanup(shutil.rmtree, self.base, True)
        self.farm = ProcessFarm(reactor, self.base)
        self.addCleanup(self.farm.stop)
        await self.farm.start_server()
        await self.farm.start_render(socket.gethostname(), "--capacity", "4000")
        client = await connect(reactor, self.farm.endpoint, "docs")
        self.addCleanup(client.close)

        async def online() -> bool:
            return any(r["online"] for r in await client.renders())

        await wait_until(reactor, online, 60, "the render online")

    async def test_every_console_block_runs_as_written(self) -> None:
        bin_dir = str(Path(sys.executable).parent)
        env = {**self.farm.environ, "FARMNET_SERVER": self.farm.endpoint,
               "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
               "USER": os.environ.get("USER") or getpass.getuser()}
        ran = 0
        for doc in DOCS:
            for commands in console_blocks(doc.read_text()):
                out, err, code = await getProcessOutputAndValue(
                    "/bin/bash", ["-c", script(commands)], env=env, path=str(ROOT))
                server_log = self.farm.server.tail() if self.farm.server else ""
                self.assertEqual(code, 0, f"{doc.name}:\n{err.decode(errors='replace')[-3000:]}\n"
                                          f"server log:\n{server_log}")
                ran += len(commands)
        self.assertGreater(ran, 20)
