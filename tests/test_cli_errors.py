"""The real `farmnet` command, as a child process, fails in one clear line (no traceback)
on a TLS certificate for another name, a job file nested too deeply and a job bigger than
the server takes."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from test_network import make_ca, make_server_cert
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from farmnet.testing import ProcessFarm

ROOT = str(Path(__file__).resolve().parent.parent)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FARMNET_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env


class CLIErrorTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="farmnet-cli-errors-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.farm = ProcessFarm(reactor, self.base)
        self.addCleanup(self.farm.stop)

    async def cli(self, *args: str) -> tuple[int, str]:
        """Exit code and stderr of ``farmnet ARGS``, which must be one line, no traceback."""
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "farmnet.cli", *args], env=child_env(), path=str(self.base))
        text = err.decode()
        self.assertTrue("Traceback" not in text, text[-2000:])
        self.assertEqual(len(text.splitlines()), 1, text)
        return code, text.strip()

    async def test_tls_certificate_for_another_name(self) -> None:
        ca_key, ca_cert, ca = make_ca(self.base, "farm-ca")
        key, cert = make_server_cert(self.base, ca_key, ca_cert, names=("farm.example",), addresses=())
        await self.farm.start_server(listen=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
        port = self.farm.endpoint.rsplit(":", 1)[1]
        config = self.base / "client.yaml"
        config.write_text(f"client:\n  ca: {ca}\n")
        code, err = await self.cli("jobs", "--server", f"tls:127.0.0.1:{port}", "--config", str(config))
        self.assertEqual(code, 3)
        self.assertIn("the server's certificate is not for 127.0.0.1", err)

    async def test_job_nested_too_deeply(self) -> None:
        for name, depth in (("deep.json", 100_000), ("deeper.json", 500)):  # json's recursion, then ours
            path = self.base / name
            path.write_text('{"job": {"name": "x", "custom_data": ' + "[" * depth + "]" * depth + "}}")
            code, err = await self.cli("submit", str(path), "--server", "tcp:127.0.0.1:9")
            self.assertEqual((code, err),
                             (2, f"farmnet: {path}: nested too deeply (a job has at most 100 levels)"))

    async def test_job_over_the_servers_box_limit(self) -> None:
        config = self.base / "server.yaml"
        config.write_text("server:\n  stats:\n    enabled: false\n  limits:\n    max_box_bytes: 1048576\n")
        await self.farm.start_server("--config", str(config))
        path = self.base / "big.json"
        path.write_text(json.dumps({"job": {"name": "big", "description": "x" * (2 << 20), "blocks": [
            {"name": "b", "command": "true"}]}}))
        code, err = await self.cli("submit", str(path), "--server", self.farm.endpoint)
        self.assertEqual(code, 2)
        self.assertIn("over this server's limit of 1.0 MiB (1048576 bytes) a message "
                      "(server.limits.max_box_bytes)", err)
        small = self.base / "small.json"
        small.write_text(json.dumps({"job": {"name": "small", "description": "x" * (1 << 19), "blocks": [
            {"name": "b", "command": "true"}]}}))
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "farmnet.cli", "submit", str(small), "--server", self.farm.endpoint],
            env=child_env(), path=str(self.base))
        self.assertEqual((code, out.strip().isdigit()), (0, True), err)
        # JSON on the command line nested too deeply: one line too.
        code, err = await self.cli("act", "jobs", "list", "--filters", "[" * 60_000 + "]" * 60_000,
                                   "--server", self.farm.endpoint)
        self.assertEqual((code, err), (2, "farmnet: the input is nested too deeply"))
