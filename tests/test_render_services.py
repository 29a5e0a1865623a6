"""Tests for farmnet.render.services (the final command of each service) and farmnet.render.resources."""

from __future__ import annotations

import json
import os
import shlex
import stat
import sys
import textwrap
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from farmnet.config import RenderBlenderConfig, RenderConfig, RenderSysJobConfig
from farmnet.model.catalog import SERVICES
from farmnet.plugins import import_object
from farmnet.render import services
from farmnet.render.parsers import BlenderParser, GenericParser, parser_by_name
from farmnet.render.resources import sample
from farmnet.render.services import (
    EVENT_DATA_ENV,
    EVENT_DATA_ENV_MAX,
    BlenderService,
    EventsService,
    GenericService,
    PostCmdService,
    builtin_services,
    cleanup,
    event_data_path,
    parser_registry,
    prepare,
    service_for,
    service_registry,
)

_T = 10.0
ORDER = {"order": "start", "job_id": 7, "block": 2, "task": 3, "run": 4, "name": "t",
         "working_directory": "", "environment": {}, "parser": "", "frame_start": 0, "frame_end": 0}


def order(service: str, command: str, **more: Any) -> dict[str, Any]:
    return {**ORDER, "service": service, "command": command, **more}


class LogCapture:
    def __init__(self, test: unittest.SynchronousTestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def texts(self) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events if e.get("log_namespace") == "farmnet.render.services"]


def write_plugin(test: unittest.SynchronousTestCase, name: str, source: str) -> None:
    """A module ``name`` importable for this test only."""
    directory = test.mktemp()
    os.makedirs(directory)
    with open(os.path.join(directory, f"{name}.py"), "w") as f:
        f.write(textwrap.dedent(source))
    sys.path.insert(0, directory)
    test.addCleanup(sys.path.remove, directory)
    test.addCleanup(sys.modules.pop, name, None)


class BuiltinServiceTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.config = RenderConfig(name="r1", state_dir=self.mktemp())

    def test_names(self) -> None:
        # farmnet's own and every other CGRU service name (those only pick a parser: generic, named).
        own = {"blender", "blender_cycles", "blender_internal", "blender_render", "events", "generic",
               "postcmd",
               "wakeonlan", "htracker"}
        names = set(builtin_services())
        self.assertLessEqual(own | {"nuke", "hbatch_mantra", "movgen", "ffmpeg", "maya"}, names)
        self.assertEqual(names - own, {n for n in SERVICES} - own)
        nuke = service_for("nuke")
        self.assertIsInstance(nuke, GenericService)
        self.assertEqual((nuke.name, nuke.command(order("nuke", "nuke -x a.nk 1-3"), self.config)),
                         ("nuke", "nuke -x a.nk 1-3"))

    def test_htracker(self) -> None:
        prepared = prepare({**order("htracker", "htracker.py --port 5000"), "job_id": 42}, self.config, {})
        self.assertEqual(prepared.command.splitlines()[1], "htracker.py --port 5000 -J 42")

    def test_generic(self) -> None:
        service = service_for("generic")
        self.assertIsInstance(service, GenericService)
        command = "echo 'a b' $HOME"
        self.assertEqual(service.command(order("generic", command), self.config), command)
        env = {"A": "1"}
        result = service.environment(order("generic", "x"), env)
        self.assertEqual(result, env)
        self.assertIsNot(result, env)

    def test_unknown_and_empty_are_generic(self) -> None:
        log = LogCapture(self)
        self.assertIsInstance(service_for("nuke_we_do_not_have"), GenericService)
        self.assertIsInstance(service_for(""), GenericService)
        self.assertEqual(len([t for t in log.texts() if "nuke_we_do_not_have" in t]), 1)

    def test_postcmd_as_is(self) -> None:
        service = service_for("postcmd")
        self.assertIsInstance(service, PostCmdService)
        for command in ("rm /tmp/scene_tmp.hip", "{ echo a; echo b; }", '{"not": "a post command"}'):
            self.assertEqual(service.command(order("postcmd", command), self.config), command)

    def test_postcmd_json_with_directory(self) -> None:
        command = json.dumps({"command": "rm -f scene.hip", "working_directory": "/proj/shot 10"})
        final = service_for("postcmd").command(order("postcmd", command), self.config)
        self.assertTrue(final.startswith("cd -- '/proj/shot 10' || "), final)
        self.assertTrue(final.endswith("\nrm -f scene.hip"), final)
        command = json.dumps({"command": "rm -f scene.hip"})
        final = service_for("postcmd").command(order("postcmd", command), self.config)
        self.assertEqual(final, "rm -f scene.hip")

    def test_events_small_data_in_environment(self) -> None:
        data = json.dumps({"events": {"JOB_DONE": {"methods": ["email"]}}, "note": "it's $(rm -rf /)"})
        o = order("events", data)
        prepared = prepare(o, self.config, {"PATH": "/bin"})
        self.assertEqual(shlex.split(prepared.command), [
            sys.executable, "-m", "farmnet.sysjob.events", "--service", "farmnet.sysjob.events:EventService"])
        self.assertEqual(prepared.environment[EVENT_DATA_ENV], data)
        self.assertEqual(prepared.environment["PATH"], "/bin")
        self.assertFalse(os.path.exists(event_data_path(o, self.config)))

    def test_events_service_class_from_config(self) -> None:
        config = RenderConfig(name="r1", state_dir=self.mktemp(),
                              sysjob=RenderSysJobConfig(events_service_class="studio.ev:Mine"))
        command = EventsService().command(order("events", "{}"), config)
        self.assertEqual(shlex.split(command)[-1], "studio.ev:Mine")

    def test_events_large_data_in_a_file(self) -> None:
        data = json.dumps({"events": ["JOB_DONE"], "pad": "x" * EVENT_DATA_ENV_MAX})
        o = order("events", data)
        prepared = prepare(o, self.config, {EVENT_DATA_ENV: "stale"})
        path = event_data_path(o, self.config)
        self.assertEqual(path, os.path.join(self.config.state_dir, "events", "7-2-3-4.json"))
        self.assertEqual(shlex.split(prepared.command)[-2:], ["--data-file", path])
        self.assertNotIn(EVENT_DATA_ENV, prepared.environment)
        with open(path) as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        cleanup(o, self.config)
        self.assertFalse(os.path.exists(path))
        cleanup(o, self.config)  # twice is fine

    def test_wakeonlan(self) -> None:
        config = RenderConfig(name="r1", state_dir="/x",
                              sysjob=RenderSysJobConfig(wol_broadcast="10.0.255.255", wol_port=7))
        command = service_for("wakeonlan").command(order("wakeonlan", "wolwake aabbccddeeff"), config)
        self.assertEqual(shlex.split(command), [sys.executable, "-m", "farmnet.sysjob.wol", "--broadcast",
                                                "10.0.255.255", "--port", "7", "--", "aabbccddeeff"])


class BlenderServiceTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        # A render whose Blender program is "blender": the command's program stays as written.
        self.config = RenderConfig(name="r1", state_dir="/x",
                                   blender=RenderBlenderConfig(executable="blender"))
        self.service = BlenderService(threads=6)

    def final(self, command: str) -> str:
        return self.service.command(order("blender", command), self.config)

    def test_adds_background_and_threads(self) -> None:
        self.assertEqual(self.final("blender scene.blend -s 1 -e 5 -a"),
                         "blender -b scene.blend -s 1 -e 5 -t 6 -a")

    def test_threads_at_the_end_without_render_action(self) -> None:
        self.assertEqual(self.final("blender -b scene.blend --python x.py"),
                         "blender -b scene.blend --python x.py -t 6")
        self.assertEqual(self.final("blender"), "blender -b -t 6")

    def test_given_threads_and_background_unchanged(self) -> None:
        for command in ("blender -b scene.blend -t 4 -f 1", "blender --background s.blend --threads=2 -a",
                        "blender -b s.blend --threads 0 -a"):
            self.assertEqual(self.final(command), command)

    def test_background_moved_first(self) -> None:
        self.assertEqual(self.final("blender scene.blend -b -t 2 -a"), "blender -b scene.blend  -t 2 -a")

    def test_rest_of_the_command_untouched(self) -> None:
        command = '/opt/blender-4.1/blender "my scene.blend" -o "$OUT/f_####" -f @#@ && echo "done; ok"'
        self.assertEqual(
            self.final(command),
            '/opt/blender-4.1/blender -b "my scene.blend" -o "$OUT/f_####" -t 6 -f @#@ && echo "done; ok"')

    def test_blender_found_at_command_start_only(self) -> None:
        self.assertEqual(self.final("echo blender"), "echo blender")
        self.assertEqual(self.final("cp a.blend /tmp/blender && blender /tmp/a.blend -a"),
                         "cp a.blend /tmp/blender && blender -b /tmp/a.blend -t 6 -a")
        self.assertEqual(self.final("CYCLES_DEVICE=CPU exec blender.exe x.blend -a"),
                         "CYCLES_DEVICE=CPU exec blender.exe -b x.blend -t 6 -a")

    def test_not_blender_or_unparsable_unchanged(self) -> None:
        for command in ("mantra -f scene.ifd", "blender 'open quote -a", "$BLENDER x.blend -a", ""):
            self.assertEqual(self.final(command), command)

    def test_default_threads_is_cpu_count(self) -> None:
        self.assertEqual(BlenderService().threads, os.cpu_count() or 1)

    def test_via_prepare(self) -> None:
        prepared = prepare(order("blender_cycles", "blender s.blend -a"), self.config, {})
        self.assertEqual(prepared.command, f"blender -b s.blend -t {os.cpu_count() or 1} -a")


class CustomClassTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.log = LogCapture(self)

    def config(self, **more: Any) -> RenderConfig:
        return RenderConfig(name="r1", state_dir=self.mktemp(), **more)

    def test_custom_service_by_name(self) -> None:
        write_plugin(self, "farmnet_test_plugin_ok", """
            class Shout:
                name = "shout"
                def command(self, order, config):
                    return order["command"].upper() + " # " + config.name
                def environment(self, order, env):
                    return {**env, "SHOUT": "1"}
            """)
        registry = service_registry(self.config(service_classes={"shout": "farmnet_test_plugin_ok:Shout"}))
        self.assertEqual(set(registry) - set(builtin_services()), {"shout"})
        prepared = prepare(order("shout", "echo hi"), self.config(), {"A": "b"}, registry)
        self.assertEqual((prepared.command, prepared.environment, prepared.service),
                         ("ECHO HI # r1", {"A": "b", "SHOUT": "1"}, "shout"))
        self.assertTrue(any("'shout'" in t and "farmnet_test_plugin_ok:Shout" in t for t in self.log.texts()))

    def test_broken_classes_fall_back_with_a_log_line(self) -> None:
        write_plugin(self, "farmnet_test_plugin_bad", "raise RuntimeError('boom at import')\n")
        write_plugin(self, "farmnet_test_plugin_odd", "class NoCommand:\n    pass\n")
        registry = service_registry(self.config(service_classes={
            "maya": "farmnet_test_plugin_missing_zz:Maya",
            "nuke": "farmnet_test_plugin_bad:Nuke",
            "blender": "farmnet_test_plugin_odd:NoCommand",
            "houdini": "farmnet_test_plugin_odd:Absent",
            "bad": "no_colon_or_dot",
        }))
        self.assertIs(registry["maya"], builtin_services()["maya"])  # the built-in of that name
        self.assertIs(registry["nuke"], builtin_services()["nuke"])
        self.assertIs(registry["houdini"], GenericService)
        self.assertIs(registry["blender"], BlenderService)  # the built-in of that name
        self.assertIsInstance(service_for("maya", registry), GenericService)
        texts = "\n".join(self.log.texts())
        self.assertIn(
            "service class 'farmnet_test_plugin_missing_zz:Maya' for service 'maya' not loaded", texts)
        self.assertIn("RuntimeError: boom at import", texts)
        self.assertIn("it has no command()", texts)
        self.assertIn("has no 'Absent'", texts)
        self.assertIn("using the 'blender' service", texts)
        self.assertIn("using the 'generic' service", texts)
        errors = [e for e in self.log.events if e.get("log_namespace") == "farmnet.render.services"
                  and e["log_level"].name == "error"]
        self.assertEqual(len(errors), 5)

    def test_failing_service_fails_the_task_not_the_render(self) -> None:
        write_plugin(self, "farmnet_test_plugin_raise", """
            class Raises:
                name = "raises"
                def command(self, order, config):
                    raise ValueError("no licence")
                def environment(self, order, env):
                    return dict(env)
            """)
        registry = service_registry(self.config(service_classes={"r": "farmnet_test_plugin_raise:Raises"}))
        prepared = prepare(order("r", "echo hi"), self.config(), {"A": "1"}, registry)
        self.assertIn("no licence", prepared.command)
        self.assertEqual(prepared.environment, {"A": "1"})
        self.flushLoggedErrors(ValueError)

    def test_custom_parser_by_name(self) -> None:
        write_plugin(self, "farmnet_test_plugin_parser", """
            class Seven:
                name = "seven"
                def feed(self, data):
                    return 7
            """)
        registry = parser_registry(self.config(parser_classes={
            "seven": "farmnet_test_plugin_parser:Seven", "broken": "farmnet_test_plugin_parser:Nope"}))
        self.assertEqual(parser_by_name("seven", registry).feed(b"x"), 7)
        self.assertIsInstance(parser_by_name("broken", registry), GenericParser)
        self.assertIsInstance(parser_by_name("blender", registry, ORDER), BlenderParser)
        self.assertTrue(any("parser class 'farmnet_test_plugin_parser:Nope'" in t for t in self.log.texts()))

    def test_import_object(self) -> None:
        self.assertIs(import_object("farmnet.render.services:GenericService"), GenericService)
        self.assertIs(import_object("farmnet.render.services.GenericService"), GenericService)
        self.assertIs(import_object("farmnet.render:services"), services)
        with self.assertRaises(ImportError):
            import_object("x")


class RunPreparedTests(unittest.TestCase):
    """The final commands run as the render runs them (/bin/sh -c)."""

    timeout = 30

    async def run_shell(self, command: str, env: dict[str, str]) -> tuple[bytes, bytes, int]:
        d = getProcessOutputAndValue("/bin/sh", ["-c", command], env=env, reactor=reactor)
        return await d.addTimeout(_T, reactor)

    async def test_postcmd_runs_in_the_directory(self) -> None:
        config = RenderConfig(name="r1", state_dir=self.mktemp())
        directory = os.path.abspath(self.mktemp()) + " with 'quotes'"
        os.makedirs(directory)
        command = json.dumps({"command": "pwd; rm -f scene.tmp", "working_directory": directory})
        with open(os.path.join(directory, "scene.tmp"), "w"):
            pass
        prepared = prepare(order("postcmd", command), config, dict(os.environ))
        out, err, code = await self.run_shell(prepared.command, prepared.environment)
        self.assertEqual((out.decode().strip(), code), (directory, 0), err)
        self.assertFalse(os.path.exists(os.path.join(directory, "scene.tmp")))

    async def test_htracker_exit_status_one_is_success(self) -> None:
        config = RenderConfig(name="r1", state_dir=self.mktemp())
        results = []
        for status in (0, 1, 2):
            prepared = prepare({**order("htracker", f"echo args; exit {status}; :"), "job_id": 7}, config,
                               dict(os.environ))
            out, err, code = await self.run_shell(prepared.command, prepared.environment)
            results.append((out, code))
        self.assertEqual(results, [(b"args\n", 0), (b"args\n", 0), (b"args\n", 2)])

    async def test_postcmd_missing_directory(self) -> None:
        config = RenderConfig(name="r1", state_dir=self.mktemp())
        command = json.dumps({"command": "echo never", "working_directory": "/nonexistent/farmnet/dir"})
        prepared = prepare(order("postcmd", command), config, dict(os.environ))
        out, err, code = await self.run_shell(prepared.command, prepared.environment)
        self.assertEqual((out, code), (b"", 127))
        self.assertIn(b"cannot change to working directory /nonexistent/farmnet/dir", err)

    async def test_postcmd_deletefiles_without_cgru(self) -> None:
        """af.Job.setPostDeleteFiles writes `deletefiles "PATH"` (a CGRU program): farmnet's
        own runs it; patterns (Houdini's ROP files: `scene.*.ifd`), files and directories go."""
        config = RenderConfig(name="r1", state_dir=self.mktemp())
        base = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(base, "tmp dir", "sub"))
        for name in ("scene.0001.ifd", "scene.0002.ifd", "keep.hip", "single.hip"):
            with open(os.path.join(base, name), "w"):
                pass
        command = json.dumps({"command": 'deletefiles "scene.*.ifd" "tmp dir" single.hip',
                              "working_directory": base})
        env = {k: v for k, v in os.environ.items() if k != "PATH"} | {"PATH": "/usr/bin:/bin"}
        prepared = prepare(order("postcmd", command), config, env)
        out, err, code = await self.run_shell(prepared.command, prepared.environment)
        self.assertEqual(code, 0, err)
        self.assertEqual(os.listdir(base), ["keep.hip"])
        prepared = prepare(order("postcmd", f"deletefiles {base}/gone.hip"), config, env)
        out, err, code = await self.run_shell(prepared.command, prepared.environment)
        self.assertEqual(code, 1)
        self.assertIn(b"gone.hip: no such file or directory", err)

    async def test_failing_service_message_in_output(self) -> None:
        class Broken:
            name = "broken"

            def command(self, order: Any, config: Any) -> str:
                raise RuntimeError("it's $(broken)")

            def environment(self, order: Any, env: Any) -> dict[str, str]:
                return dict(env)

        config = RenderConfig(name="r1", state_dir=self.mktemp())
        prepared = prepare(order("broken", "echo hi"), config, dict(os.environ), {"broken": Broken})
        out, err, code = await self.run_shell(prepared.command, prepared.environment)
        self.assertEqual(code, 1)
        self.assertIn(b"farmnet: service 'broken' failed on this render: RuntimeError: it's $(broken)", err)
        self.flushLoggedErrors(RuntimeError)


class ResourcesTests(unittest.SynchronousTestCase):
    def test_keys_and_values(self) -> None:
        sample("/")
        first = attrs.asdict(sample("/"))
        self.assertEqual(sorted(first), sorted([
            "cpu_num", "cpu_percent", "mem_total_mb", "mem_used_mb", "swap_used_mb", "hdd_free_gb",
            "load_avg", "mem_free_mb", "swap_total_mb", "gpu_mem_total_mb", "gpu_mem_used_mb"]))
        self.assertTrue(0 < first["mem_free_mb"] <= first["mem_total_mb"])
        self.assertEqual((first["gpu_mem_total_mb"], first["gpu_mem_used_mb"]), (None, None))
        self.assertEqual(first["cpu_num"], os.cpu_count())
        self.assertTrue(0.0 <= first["cpu_percent"] <= 100.0)
        self.assertGreater(first["mem_total_mb"], 64)
        self.assertTrue(0 < first["mem_used_mb"] <= first["mem_total_mb"])
        self.assertGreaterEqual(first["swap_used_mb"], 0)
        self.assertGreater(first["hdd_free_gb"], 0)
        self.assertEqual(len(first["load_avg"]), 3)
        self.assertTrue(all(x >= 0 for x in first["load_avg"]))
        json.dumps(first)  # goes on the wire as JSON

    def test_missing_disk_is_none(self) -> None:
        self.assertIsNone(sample("/nonexistent/farmnet/disk").hdd_free_gb)

    def test_cheap(self) -> None:
        import time

        sample("/")
        start = time.perf_counter()
        for _ in range(100):
            sample("/")
        self.assertLess((time.perf_counter() - start) / 100, 0.005)  # < 1 ms here; 5 ms leaves CI slack


class MemoryFiguresTests(unittest.SynchronousTestCase):
    def test_as_psutil_gives_them(self) -> None:
        import psutil

        from farmnet.render import resources

        total, available, swap_total, swap_free = resources._memory()
        memory, swap = psutil.virtual_memory(), psutil.swap_memory()
        self.assertEqual((total, swap_total), (memory.total, swap.total))
        # Free memory moves between two reads; a few hundred MB of difference would be a wrong field.
        self.assertLess(abs(available - memory.available), 256 << 20)
        self.assertLess(abs(swap_free - swap.free), 256 << 20)


class ResourcesAfterTaskTests(unittest.SynchronousTestCase):
    """A task's end makes the resources due: a heartbeat going out takes them (at most once per
    REPORT_AFTER_TASK), else the report goes REPORT_AFTER_TASK after the end."""

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        from farmnet.app import render_service

        self.clock = Clock()
        self.clock.advance(1000)
        self.render = render_service(self.clock, RenderConfig(server="tcp:127.0.0.1:1", name="r1"))
        self.reports: list[float] = []
        self.render._report_resources = lambda: self.reports.append(self.clock.seconds())  # type: ignore[method-assign]

    def test_idle_render_reports_after_the_end(self) -> None:
        from farmnet.render.service import REPORT_AFTER_TASK

        self.render._report_soon()
        self.render._report_soon()  # tasks ending together: one report
        self.clock.advance(REPORT_AFTER_TASK)
        self.assertEqual(self.reports, [1000 + REPORT_AFTER_TASK])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_busy_render_heartbeat_takes_them(self) -> None:
        from farmnet.render.service import REPORT_AFTER_TASK

        self.render._report_soon()
        self.assertTrue(self.render._due_now())
        self.render._sample()  # what a heartbeat does when they are due
        self.assertFalse(self.render._due_now())
        self.clock.advance(0.1)
        self.render._report_soon()  # another task ends; sent 0.1 s ago: not on this heartbeat
        self.assertFalse(self.render._due_now())
        self.clock.advance(REPORT_AFTER_TASK - 0.1)  # the first timer: sent lately, wait for a heartbeat
        self.assertEqual(self.reports, [])
        self.assertTrue(self.render._due_now())
        self.render._sample()
        self.clock.advance(REPORT_AFTER_TASK)
        self.assertEqual(self.reports, [])  # the heartbeat took them: no report
        self.render._report_soon()  # no heartbeat this time: the report goes
        self.clock.advance(REPORT_AFTER_TASK)
        self.assertEqual(len(self.reports), 1)
