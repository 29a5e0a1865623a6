"""Tests for farmnet.sysjob.wol and the wakeonlan service: real packets to a UDP listener on 127.0.0.1."""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from farmnet.config import RenderConfig, RenderSysJobConfig
from farmnet.render.services import WakeOnLanService, prepare
from farmnet.sysjob.wol import MAGIC_PREFIX, magic_packet, normalize_mac

MAC1 = "aa:bb:cc:dd:ee:01"
MAC2 = "AA-BB-CC-DD-EE-02"
_T = 10.0


class Recorder(DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[tuple[bytes, Any]] = []
        self.waiters: list[tuple[int, defer.Deferred[None]]] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.packets.append((datagram, addr))
        for count, d in list(self.waiters):
            if len(self.packets) >= count:
                self.waiters.remove((count, d))
                d.callback(None)

    def wait_for(self, count: int) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if len(self.packets) >= count:
            d.callback(None)
        else:
            self.waiters.append((count, d))
        return d.addTimeout(_T, reactor)


class MagicPacketTests(unittest.SynchronousTestCase):
    def test_layout(self) -> None:
        packet = magic_packet(MAC1)
        self.assertEqual(len(packet), 102)
        self.assertEqual(packet[:6], b"\xff" * 6)
        self.assertEqual(packet[6:], bytes.fromhex("aabbccddee01") * 16)

    def test_forms(self) -> None:
        expected = magic_packet("aa:bb:cc:dd:ee:ff")
        for form in ("aa-bb-cc-dd-ee-ff", "aabbccddeeff", "AA:BB:CC:DD:EE:FF", " aabbccddeeff\n"):
            self.assertEqual(magic_packet(form), expected, form)

    def test_invalid(self) -> None:
        for bad in ("", "aa:bb:cc:dd:ee", "aa:bb:cc:dd:ee:ff:00", "gg:bb:cc:dd:ee:ff", "aa:bb-cc:dd:ee:ff",
                    "aabb.ccdd.eeff", "wolwake"):
            with self.assertRaises(ValueError) as caught:
                magic_packet(bad)
            self.assertIn("invalid MAC address", str(caught.exception))
            self.assertIn(repr(bad), str(caught.exception))

    def test_normalize(self) -> None:
        self.assertEqual(normalize_mac("01-02-03-04-05-06"), bytes(range(1, 7)))


class WakeOnLanTaskTests(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.recorder = Recorder()
        self.port = reactor.listenUDP(0, self.recorder, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.config = RenderConfig(name="r1", state_dir=self.mktemp(), sysjob=RenderSysJobConfig(
            wol_broadcast="127.0.0.1", wol_port=self.port.getHost().port))

    def run_task(self, command: str) -> defer.Deferred[tuple[bytes, bytes, int]]:
        """Run a wakeonlan task's final command as the render does: /bin/sh -c, the service's env."""
        order = {"order": "start", "job_id": 1, "block": 1, "task": 0, "run": 1, "service": "wakeonlan",
                 "command": command}
        prepared = prepare(order, self.config, dict(os.environ))
        self.assertEqual(prepared.service, "wakeonlan")
        d = getProcessOutputAndValue("/bin/sh", ["-c", prepared.command], env=prepared.environment,
                                     reactor=reactor)
        return d.addTimeout(_T, reactor)

    async def test_two_macs_two_packets(self) -> None:
        out, err, code = await self.run_task(f"wolwake {MAC1} {MAC2}")
        self.assertEqual(code, 0, err)
        await self.recorder.wait_for(2)
        packets = sorted(p for p, _ in self.recorder.packets)
        self.assertEqual(packets, sorted([magic_packet(MAC1), magic_packet(MAC2)]))
        for packet, _ in self.recorder.packets:
            self.assertTrue(packet.startswith(MAGIC_PREFIX))
        self.assertIn(b"sent to 127.0.0.1", out)

    async def test_invalid_mac_is_an_error_and_sends_nothing(self) -> None:
        out, err, code = await self.run_task(f"wolwake {MAC1} not-a-mac")
        self.assertEqual(code, 2)
        self.assertIn(b"invalid MAC address 'not-a-mac'", err)
        self.assertIn(b"nothing sent", err)
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(self.recorder.packets, [])

    async def test_no_mac_is_an_error(self) -> None:
        _, err, code = await self.run_task("wolwake")
        self.assertNotEqual(code, 0)
        self.assertIn(b"MAC", err)

    async def test_module_directly(self) -> None:
        port = str(self.port.getHost().port)
        _, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "farmnet.sysjob.wol", "--broadcast", "127.0.0.1", "--port", port, MAC2],
            env=dict(os.environ), reactor=reactor).addTimeout(_T, reactor)
        self.assertEqual(code, 0, err)
        await self.recorder.wait_for(1)
        self.assertEqual(self.recorder.packets[0][0], magic_packet(MAC2))


class WakeOnLanCommandTests(unittest.SynchronousTestCase):
    def test_command(self) -> None:
        config = RenderConfig(name="r1", state_dir="/tmp/x")
        command = WakeOnLanService().command({"command": f"wolwake {MAC1} {MAC2}"}, config)
        self.assertEqual(shlex.split(command), [sys.executable, "-m", "farmnet.sysjob.wol", "--broadcast",
                                                "255.255.255.255", "--port", "9", "--", MAC1, MAC2])

    def test_without_command_word(self) -> None:
        config = RenderConfig(name="r1", state_dir="/tmp/x")
        command = WakeOnLanService().command({"command": MAC1}, config)
        self.assertEqual(shlex.split(command)[-1], MAC1)

    def test_shell_text_stays_arguments(self) -> None:
        config = RenderConfig(name="r1", state_dir="/tmp/x")
        text = "wolwake aa:bb:cc:dd:ee:ff;touch${IFS}/tmp/p"
        command = WakeOnLanService().command({"command": text}, config)
        self.assertEqual(shlex.split(command)[-1], "aa:bb:cc:dd:ee:ff;touch${IFS}/tmp/p")
