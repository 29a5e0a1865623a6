"""The wire messages and the one converter: the JSON shapes peers exchange (pinned: a
change here is a protocol change), and the errors a malformed value gets."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase

from farmnet import errors
from farmnet import messages as m
from farmnet.config import SchedulingConfig
from farmnet.convert import ConversionError, structure, unstructure
from farmnet.model.farm import Farm
from farmnet.model.spec import parse_job
from farmnet.protocol import commands as c
from farmnet.server.actions import act

START = {"order": "start", "job_id": 3, "block": 1, "task": 7, "run": 2, "name": "f7",
         "command": "render 7", "working_directory": "/w", "environment": {"A": "1"},
         "service": "generic", "parser": "", "capacity": 1000, "frame_start": 7, "frame_end": 7,
         "max_run_time": 60, "frames_inc": 1}


class WireShapeTests(SynchronousTestCase):
    def test_orders_keep_protocol_1_keys(self) -> None:
        wire = [START,
                {"order": "kill", "job_id": 3, "block": 1, "task": 7, "run": 2, "reason": "why"},
                {"order": "exit"}, {"order": "sleep"},
                {"order": "close", "reason": "replaced"}, {"order": "reconnect", "reason": "stopping"}]
        orders = structure(wire, list[m.Order])
        self.assertEqual([type(o) for o in orders], list(m.ORDER_CLASSES))
        self.assertEqual(orders[0].environment, {"A": "1"})
        self.assertEqual(unstructure(orders, list[m.Order]), wire)

    def test_optional_order_fields_default(self) -> None:
        order = structure({"order": "start", "job_id": 1, "block": 0, "task": 0, "run": 1, "name": "t",
                           "command": "true"}, m.Order)
        self.assertEqual((order.max_run_time, order.service, order.environment), (0, "generic", {}))

    def test_running_and_resources(self) -> None:
        running = structure([{"job_id": 1, "block": 0, "task": 2, "run": 3}], list[m.TaskRef])
        self.assertEqual(running, [m.TaskRef(1, 0, 2, 3)])
        host = structure({"cpu_num": 8, "load_avg": [0.5, 1, 2], "gpu_temp": 70}, m.HostResources)
        self.assertEqual((host.cpu_num, host.load_avg, host.mem_total_mb), (8, [0.5, 1.0, 2.0], None))

    def test_typed_argument_round_trip(self) -> None:
        """Heartbeat's typed arguments and answer through AMP boxes, as on a connection."""
        box = c.Heartbeat.makeArguments({"render_id": 1, "running": [m.TaskRef(1, 0, 2, 3)],
                                         "resources": m.HostResources(cpu_num=4)}, None)
        self.assertEqual(json.loads(box[b"running.0"]), [{"job_id": 1, "block": 0, "task": 2, "run": 3}])
        args = c.Heartbeat.parseArguments(amp.AmpBox(box), None)
        self.assertEqual((args["running"], args["resources"].cpu_num), ([m.TaskRef(1, 0, 2, 3)], 4))
        answer = c.Heartbeat.makeResponse({"orders": [m.ExitOrder()]}, None)
        self.assertEqual(c.Heartbeat.parseResponse(amp.AmpBox(answer), None), {"orders": [m.ExitOrder()]})
        absent = c.Heartbeat.makeArguments({"render_id": 1, "running": [], "resources": None}, None)
        self.assertIsNone(c.Heartbeat.parseArguments(amp.AmpBox(absent), None)["resources"])


class ErrorTests(SynchronousTestCase):
    def problems(self, value: object, cls: object, where: str) -> list[str]:
        with self.assertRaises(ConversionError) as caught:
            structure(value, cls, where)
        return caught.exception.problems

    def test_unknown_order_names_the_known_ones(self) -> None:
        self.assertEqual(self.problems([{"order": "exit"}, {"order": "dance"}], list[m.Order], "orders"),
                         ["orders[1]: unknown order 'dance' "
                          "(known: close, exit, kill, reconnect, sleep, start)"])

    def test_every_problem_at_once_with_its_path(self) -> None:
        wire = [{"job_id": "3", "block": 0, "task": True}, "x"]
        self.assertEqual(self.problems(wire, list[m.TaskRef], "running"), [
            "running[0].job_id: expected an integer, got '3'",
            "running[0].task: expected an integer, got True",
            "running[0].run: required, missing",
            "running[1]: expected a mapping, got 'x'",
        ])

    def test_unknown_key_in_an_order_gets_did_you_mean(self) -> None:
        order = {**START, "max_runtime": 5}
        self.assertEqual(self.problems([order], list[m.Order], "orders"),
                         ["orders[0].max_runtime: unknown key (did you mean 'max_run_time'?)"])

    def test_nested_types(self) -> None:
        self.assertEqual(self.problems({**START, "environment": {"A": 1}}, m.Order, "order"),
                         ["order.environment['A']: expected a string, got 1"])
        self.assertEqual(self.problems("abc", list[m.TaskRef], "running"),
                         ["running: expected a list, got 'abc'"])
        self.assertEqual(self.problems({"load_avg": "high"}, m.HostResources, "resources"),
                         ["resources.load_avg: expected a list, got 'high'"])


class ActionValueTests(SynchronousTestCase):
    """The action API's values and filters go through the same converter: each problem
    with its key path, what was expected and did-you-mean; nothing changes on an error."""

    def setUp(self) -> None:
        self.farm = Farm(Clock(), SchedulingConfig(admins=("root",)))
        spec, _ = parse_job({"name": "j", "blocks": [{"name": "b", "command": "true"}]})
        self.job = self.farm.submit(spec, "anna")
        self.farm.register_render("r1", capacity=1000)

    def refused(self, *args: Any) -> str:
        with self.assertRaises(errors.InvalidAction) as caught:
            act(self.farm, "root", *args)
        return caught.exception.message

    def test_user_values(self) -> None:
        message = self.refused("users", "update", {"name": "anna"},
                               {"prority": 5, "hosts_mask": "(", "jobs_solving": "fast", "priority": "high"})
        self.assertEqual(message.split("; "), [
            "user.priority: expected an integer, got 'high'",
            "user.hosts_mask: invalid regular expression '(': missing ): ( (masks are RE2 regular "
            "expressions: no backreferences, no lookahead or lookbehind)",
            "user.jobs_solving: expected one of 'order', 'need', got 'fast'",
            "user.prority: unknown key (did you mean 'priority'?)",
        ])
        self.assertEqual(self.farm.user("anna").priority, 99)  # nothing changed
        act(self.farm, "root", "users", "update", {"name": "anna"}, {"priority": 120, "jobs_solving": "need"})
        anna = self.farm.user("anna")
        self.assertEqual((anna.priority, anna.jobs_solving), (120, "need"))

    def test_render_values(self) -> None:
        self.assertEqual(self.refused("renders", "update", {"name": "r1"}, {"capacity": -1, "max_task": 2}),
                         "render.capacity: must be at least 0, got -1; "
                         "render.max_task: unknown key (did you mean 'max_tasks'?)")
        self.assertEqual(self.refused("renders", "update", {"name": "r1"}, []),
                         "render: expected a mapping of parameters to values, got []")
        act(self.farm, "root", "renders", "update", {"name": "r1"}, {"capacity": 2000})
        self.assertEqual(self.farm.render_named("r1").capacity, 2000)

    def test_filters(self) -> None:
        self.assertEqual(self.refused("jobs", "pause", {"id": [self.job.id, "2"]}),
                         "filters.id[1]: expected an integer, got '2'")
        self.assertEqual(self.refused("jobs", "show", {}), "filters.id: expected an integer, got None")
        self.assertEqual(self.refused("tasks", "list", {"job_id": self.job.id, "limit": "10"}),
                         "filters.limit: expected an integer, got '10'")
        self.assertEqual(self.refused("jobs", "pause", {"id": []}), "filters.id: expected a non-empty list")
        self.assertEqual(act(self.farm, "root", "jobs", "pause", {"id": self.job.id}), [self.job.id])


class SpecHintTests(SynchronousTestCase):
    """The job format keeps its own validators (unknown keys are warnings there, values
    are coerced as af.py writes them) and shares the converter's did-you-mean."""

    def test_misspelt_keys_get_a_hint(self) -> None:
        _, warnings = parse_job({"name": "j", "prioirty": 5, "blocks": [
            {"name": "b", "command": "x", "frames_per_tsk": 3, "colour": "red"}]})
        self.assertEqual(warnings, [
            "job.blocks[0].frames_per_tsk: unknown key, ignored (did you mean 'frames_per_task'?)",
            "job.blocks[0].colour: unknown key, ignored",
            "job.prioirty: unknown key, ignored (did you mean 'priority'?)",
        ])

    def test_set_of_a_misspelt_job_key(self) -> None:
        farm = Farm(Clock(), SchedulingConfig())
        job = farm.submit(parse_job({"name": "j", "blocks": [{"name": "b", "command": "true"}]})[0], "anna")
        with self.assertRaises(errors.InvalidAction) as caught:
            act(farm, "anna", "jobs", "update", {"id": job.id}, {"prioirty": 5})
        self.assertEqual(caught.exception.message,
                         "invalid values: job.prioirty: cannot be set (did you mean 'priority'?)")
