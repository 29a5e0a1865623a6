"""Tests for farmnet.logging: the text and JSON formats, the twistd hook, and a real twistd writing JSON."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.logger import ILogObserver, Logger, eventFromJSON
from twisted.trial.unittest import SynchronousTestCase

from farmnet.logging import (
    format_json,
    format_text,
    json_observer,
    observer_for,
    text_observer,
    with_log_format,
)

_T = 30.0  # the bound on every wait for twistd


def _events(log_call: Any) -> list[dict[str, Any]]:
    """The events one call on a fresh Logger emits."""
    events: list[dict[str, Any]] = []
    log_call(Logger(namespace="farmnet.test", observer=events.append))
    return events


class FormatTests(SynchronousTestCase):
    def test_json_line_parses_and_has_fields(self) -> None:
        (event,) = _events(lambda log: log.info("job {job_id} submitted", job_id=7, render="r01"))
        line = format_json(event)
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        record = json.loads(line)
        self.assertEqual(record["job_id"], 7)
        self.assertEqual(record["render"], "r01")
        self.assertEqual(record["text"], "job 7 submitted")
        self.assertEqual(record["level"], "info")
        self.assertEqual(record["log_namespace"], "farmnet.test")
        self.assertTrue(record["timestamp"].endswith("Z"), record["timestamp"])
        # Still Twisted's own JSON form: it reads back as an event.
        self.assertEqual(eventFromJSON(line)["log_format"], "job {job_id} submitted")

    def test_json_job_from_key(self) -> None:
        (event,) = _events(lambda log: log.info("task {key} failed", key=(3, 1, 4), run=2))
        record = json.loads(format_json(event))
        self.assertEqual((record["job_id"], record["block"], record["task"]), (3, 1, 4))
        self.assertEqual(record["key"], [3, 1, 4])
        self.assertEqual(record["run"], 2)
        self.assertNotIn("job_id", event)  # the event itself is left alone

    def test_json_multiline_message_is_one_line(self) -> None:
        (event,) = _events(lambda log: log.warn("two\nlines {x}", x="a\nb"))
        line = format_json(event)
        self.assertEqual(line.count("\n"), 1)
        self.assertEqual(json.loads(line)["text"], "two\nlines a\nb")

    def test_json_failure_has_traceback(self) -> None:
        def fail(log: Logger) -> None:
            try:
                1 / 0  # noqa: B018
            except ZeroDivisionError:
                log.failure("it broke", job_id=9)

        (event,) = _events(fail)
        record = json.loads(format_json(event))
        self.assertIn("ZeroDivisionError", record["traceback"])
        self.assertEqual(record["job_id"], 9)
        self.assertEqual(record["level"], "critical")

    def test_text_shows_message_and_context(self) -> None:
        (event,) = _events(lambda log: log.info("job {job_id} done", job_id=5, render="r02", other=1))
        text = format_text(event)
        assert text is not None
        self.assertRegex(text, r"^\S+ \[farmnet\.test#info\] job 5 done \[render=r02\]\n$")

    def test_text_context_not_repeated(self) -> None:
        (event,) = _events(lambda log: log.info("task {key} on {render}", key=(1, 0, 2), render="r1"))
        text = format_text(event)
        assert text is not None
        self.assertTrue(text.endswith("] task (1, 0, 2) on r1\n"), text)

    def test_text_failure_indented(self) -> None:
        def fail(log: Logger) -> None:
            try:
                raise ValueError("bad")
            except ValueError:
                log.failure("oops {render}", render="r3", job_id=1)

        (event,) = _events(fail)
        text = format_text(event)
        assert text is not None
        first, *rest = text.rstrip("\n").split("\n")
        self.assertTrue(first.endswith("oops r3 [job_id=1]"), first)
        self.assertTrue(rest and all(line.startswith("\t") for line in rest), rest)
        self.assertIn("ValueError: bad", text)

    def test_text_nothing_to_say(self) -> None:
        self.assertIsNone(format_text({"log_time": 0.0}))

    def test_observers_write(self) -> None:
        for factory, check in ((json_observer, json.loads), (text_observer, str)):
            out = io.StringIO()
            observer = factory(out)
            self.assertTrue(ILogObserver.providedBy(observer))
            Logger(namespace="farmnet.test", observer=observer).info("hello {job_id}", job_id=1)
            self.assertIn("hello 1", out.getvalue())
            check(out.getvalue())

    def test_observer_for(self) -> None:
        out = io.StringIO()
        Logger(observer=observer_for("json", out)).info("x")
        json.loads(out.getvalue())
        self.assertRaises(ValueError, observer_for, "xml", out)


class WithLogFormatTests(SynchronousTestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="farmnet-test-")
        self.addCleanup(tmp.cleanup)
        self.dir = tmp.name
        # The log file observer takes SIGUSR1 for rotation, as twistd does: give it back.
        self.addCleanup(signal.signal, signal.SIGUSR1, signal.getsignal(signal.SIGUSR1))

    def test_left_alone(self) -> None:
        svc = service.Service()
        self.assertIs(with_log_format(svc, "json", None), svc)
        self.assertIs(with_log_format(svc, "json", {"logger": json_observer, "nodaemon": True}), svc)
        self.assertIs(with_log_format(svc, "json", {"syslog": True}), svc)
        self.assertIs(with_log_format(svc, "json", {"logfile": "-", "nodaemon": False}), svc)
        self.assertRaises(ValueError, with_log_format, svc, "xml", None)

    def test_sets_application_observer(self) -> None:
        path = os.path.join(self.dir, "farm.log")
        svc = service.Service()
        root = with_log_format(svc, "json", {"logfile": path, "nodaemon": False})
        self.assertIsNot(root, svc)
        application = service.Application("farmnet")
        root.setServiceParent(application)
        self.assertIs(svc.parent, root)
        self.assertIn(root, list(service.IServiceCollection(application)))
        observer = application.getComponent(ILogObserver)
        self.assertIsNotNone(observer)
        self.addCleanup(observer._observer._outFile.close)  # under the level filter
        log = Logger(namespace="farmnet.test", observer=observer)
        log.debug("chatter {n}", n=1)  # below the default level, info
        log.info("job {job_id}", job_id=42)
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        self.assertEqual(record["job_id"], 42)

    def test_log_level(self) -> None:
        for level, shown in (("debug", ["d", "i", "w"]), ("info", ["i", "w"]), ("warn", ["w"])):
            out = io.StringIO()
            log = Logger(namespace="farmnet.test", observer=observer_for("text", out, level))
            log.debug("d")
            log.info("i")
            log.warn("w")
            self.assertEqual([line.split("] ")[-1] for line in out.getvalue().splitlines()], shown)

    def test_nodaemon_text_to_stdout(self) -> None:
        svc = service.Service()
        root = with_log_format(svc, "text", {"nodaemon": True})
        application = service.Application("farmnet")
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        root.setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        Logger(namespace="farmnet.test", observer=observer).info("hello {x}", x=1, render="r9")
        self.assertIn("hello 1 [render=r9]", out.getvalue())


def _twistd() -> Path:
    return Path(sys.executable).parent / "twistd"


class TwistdTests(SynchronousTestCase):
    """A real ``twistd -n farmnet server``, started briefly on a free port."""

    def setUp(self) -> None:
        if not _twistd().exists():
            self.skipTest(f"no twistd next to {sys.executable}")
        tmp = tempfile.TemporaryDirectory(prefix="farmnet-test-")
        self.addCleanup(tmp.cleanup)
        self.dir = tmp.name

    def run_server(self, twistd_args: list[str], log_format: str | None, log_path: str) -> str:
        """Run the server until it has logged that it is up; returns what it wrote to ``log_path``."""
        config = os.path.join(self.dir, "farmnet.yaml")
        text = "server:\n  stats:\n    enabled: false\n"
        text += f"  log_format: {log_format}\n" if log_format else ""
        Path(config).write_text(text, encoding="utf-8")
        stdout_path = os.path.join(self.dir, "stdout.txt")
        argv = [
            str(_twistd()),
            "-n",
            "--pidfile=",
            *twistd_args,
            "farmnet",
            "server",
            "--config",
            config,
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--web",
            "",
            "--afanasy",
            "",
            "--store",
            os.path.join(self.dir, "store"),
        ]
        env = {k: v for k, v in os.environ.items() if k != "FARMNET_CONFIG"}
        with open(stdout_path, "wb") as stdout:
            proc = subprocess.Popen(
                argv, cwd=self.dir, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT
            )
        try:
            deadline = time.monotonic() + _T
            while time.monotonic() < deadline and proc.poll() is None:
                if os.path.exists(log_path) and b"farmnet server running" in Path(log_path).read_bytes():
                    break
                time.sleep(0.05)
            self.assertIsNone(proc.poll(), Path(stdout_path).read_text(errors="replace"))
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=_T)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return Path(log_path).read_text(encoding="utf-8", errors="replace")

    def assert_json_lines(self, output: str) -> list[dict[str, Any]]:
        lines = output.splitlines()
        self.assertTrue(lines, "no output")
        records = [json.loads(line) for line in lines]  # every line is one JSON object
        self.assertTrue(any(r.get("log_namespace", "").startswith("farmnet.") for r in records))
        # The system job's "job {job_id} {job_name} submitted" carries its job_id.
        self.assertTrue(any(r.get("job_id") == 1 for r in records), output[:2000])
        self.assertTrue(any(r.get("text") == "Received SIGTERM, shutting down." for r in records))
        return records

    def test_logger_option_json(self) -> None:
        stdout = os.path.join(self.dir, "stdout.txt")
        self.assert_json_lines(self.run_server(["--logger", "farmnet.logging.json_observer"], None, stdout))

    def test_config_json_to_stdout(self) -> None:
        stdout = os.path.join(self.dir, "stdout.txt")
        self.assert_json_lines(self.run_server([], "json", stdout))

    def test_config_json_to_logfile(self) -> None:
        logfile = os.path.join(self.dir, "server.log")
        self.assert_json_lines(self.run_server(["--logfile", logfile], "json", logfile))

    def test_default_is_text(self) -> None:
        stdout = os.path.join(self.dir, "stdout.txt")
        output = self.run_server([], None, stdout)
        self.assertRegex(output, r"\[farmnet\.model\.lifecycle#info\] job 1 system submitted")
        self.assertNotIn('{"', output.splitlines()[0])
