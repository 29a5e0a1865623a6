"""Masks cannot stall the farm: matched by RE2 in linear time, refused at submit when RE2
cannot match them, answers remembered per (mask, name) with a bound."""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from test_farm import FarmTestCase, job_doc
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from farmnet import errors
from farmnet.client import FarmClient, connect
from farmnet.model.data import TaskState
from farmnet.model.masks import MAX_MASK_LENGTH, Masks
from farmnet.model.scheduler import Why
from farmnet.model.spec import parse_job
from farmnet.testing import ProcessFarm, wait_until

#: Names that make a backtracking engine take ~2^60 steps on the issue's masks.
HOSTILE_NAME = "a" * 60 + "!"


@contextmanager
def stall_guard(seconds: int = 20) -> Iterator[None]:
    """Turns a check that never ends (a backtracking engine) into a failure, not a hung run."""

    def stalled(signum: int, frame: object) -> None:
        raise AssertionError(f"a mask check did not end within {seconds} s: the engine backtracks")

    previous = signal.signal(signal.SIGALRM, stalled)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class HostileMaskTests(FarmTestCase):
    def test_nested_quantifier_against_hostile_render_name(self) -> None:
        """The issue's ``(a+)+$`` against ``aaaa…a!``: the job is refused on that render, the
        farm goes on (a backtracking engine never returns here)."""
        with stall_guard():
            job = self.submit(hosts_mask="(a+)+$")
            hostile = self.render(HOSTILE_NAME)
            self.assertEqual(self.orders(hostile), [])
            self.assertEqual(self.farm.explain(job.id)["blocks"][0]["renders"],
                             {str(Why.JOB_MASK): 1})
            fine = self.render("a" * 60)
            self.assertEqual([o.order for o in self.orders(fine)], ["start"])

    def test_alternation_star_against_ordinary_names(self) -> None:
        with stall_guard():
            job = self.submit(block={"hosts_mask_exclude": "(.|.)*!"})
            self.render("render-farm-node-0042" * 3 + "!")
            ok = self.render("render-farm-node-0042" * 3)
            self.assertEqual(job.counts[TaskState.RUN], 1)
            self.assertEqual(ok.tasks and len(ok.tasks), 1)

    def test_hostile_depend_mask_against_job_names(self) -> None:
        with stall_guard():
            self.submit(name=HOSTILE_NAME)
            waiting = self.submit(name="comp", depend_mask="(a+)+$")
            self.assertEqual(self.farm.scheduler.job_depends_on(waiting), [])
            blocker = self.submit(name="a" * 60)
            waiting = self.submit(name="comp2", depend_mask="(a+)+")
            self.assertEqual(self.farm.scheduler.job_depends_on(waiting), [blocker.name])

    def test_hostile_user_mask(self) -> None:
        with stall_guard():
            self.submit()
            self.farm.user_action("root", ["anna"], "set", {"hosts_mask_exclude": "(x+x+)+y"})
            render = self.render("x" * 60)
            self.assertEqual(len(self.orders(render)), 1)


class SubmitCheckTests(FarmTestCase):
    def test_backreference_and_lookaround_refused_with_key_path(self) -> None:
        with self.assertRaises(errors.JobSpecError) as caught:
            parse_job(job_doc(hosts_mask=r"(a)\1", block={"hosts_mask_exclude": "(?!farm)x"},
                              depend_mask_global="(?<=a)b"))
        message = str(caught.exception)
        for key in ("job.hosts_mask", "job.blocks[0].hosts_mask_exclude", "job.depend_mask_global"):
            self.assertIn(key, message)
        self.assertIn("no backreferences", message)

    def test_overlong_mask_refused(self) -> None:
        with self.assertRaises(errors.JobSpecError) as caught:
            parse_job(job_doc(hosts_mask="a" * (MAX_MASK_LENGTH + 1)))
        self.assertIn(f"at most {MAX_MASK_LENGTH} characters", str(caught.exception))

    def test_user_and_set_masks_checked_the_same_way(self) -> None:
        job = self.submit()
        with self.assertRaises(errors.InvalidAction) as caught:
            self.farm.user_action("root", ["anna"], "set", {"hosts_mask": r"(r)\1"})
        self.assertIn("user.hosts_mask", str(caught.exception))
        self.assertRaises(errors.InvalidAction, self.farm.job_action, "anna", [job.id], "set",
                          {"hosts_mask": "(?=r)r"})

    def test_afanasy_common_syntax(self) -> None:
        """What Afanasy's masks use (std::regex / QRegExp) works: classes, alternation,
        counted repetition, escapes, non-greedy, case-insensitive flag; the whole name."""
        masks = Masks()
        cases = [
            ("farm-0[1-3]", "farm-02", True), ("farm-0[1-3]", "farm-04", False),
            ("render.*", "render12", True), ("render", "render12", False),
            ("ws|farm\\d+", "farm7", True), ("ws|farm\\d+", "ws", True), ("ws|farm\\d+", "wsx", False),
            ("r\\w{2,3}", "rab", True), ("r\\w{2,3}", "rabcd", False), ("(?i)FARM.*", "farm1", True),
            ("a.*?b", "axxb", True), ("[^_]+_comp", "shot_comp", True), ("\\.", ".", True),
        ]
        for pattern, name, expected in cases:
            mask = masks.compile(pattern)
            assert mask is not None
            self.assertEqual(mask.fullmatch(name), expected, (pattern, name))


class AnswerMemoryTests(FarmTestCase):
    def test_answers_remembered_per_mask_and_name(self) -> None:
        masks = Masks(answers=4)
        farm, other = masks.compile("farm.*"), masks.compile("r.*")
        assert farm is not None and other is not None
        self.assertIs(masks.compile("farm.*"), farm)  # one compiled form per pattern
        self.assertTrue(farm.fullmatch("farm1"))
        self.assertFalse(other.fullmatch("farm1"))
        self.assertTrue(farm.fullmatch("farm1"))
        self.assertEqual(masks.evaluated, 2)
        for i in range(10):
            farm.fullmatch(f"farm{i}")
        self.assertLessEqual(masks.kept, 4)

    def test_solving_asks_each_pair_once(self) -> None:
        self.submit(hosts_mask="r[0-9]+", frames=20)
        for i in range(3):
            self.render(f"r{i}", capacity=1000)
        evaluated = self.farm.masks.evaluated
        for render in self.farm.renders.values():
            for order in self.orders(render):
                self.finish(render, order)
        self.assertEqual(self.farm.masks.evaluated, evaluated)


class HostileMaskProcessTests(TestCase):
    """The finding as seen: a real server, a render process named ``aaaa…a!`` and a job
    with ``hosts_mask: (a+)+$``. The server keeps answering (a backtracking engine would
    hold the reactor for ~2^40 steps: every call below would time out), and the job runs on
    the render the mask does match."""

    timeout = 90

    async def test_server_answers_and_the_mask_refuses(self) -> None:
        base = tempfile.mkdtemp(prefix="farmnet-masks-")
        self.addCleanup(shutil.rmtree, base, True)
        farm = ProcessFarm(reactor, base)
        self.addCleanup(farm.stop)
        await farm.start_server()
        client = await connect(reactor, farm.endpoint, "anna", timeout=10)
        self.addCleanup(client.aclose)
        await farm.start_render("a" * 40 + "!")
        await wait_until(reactor, lambda: _online(client, 1), 30, "the hostile render online")
        job_id, _ = await client.submit({"job": {"name": "masked", "hosts_mask": "(a+)+$", "blocks": [
            {"name": "b", "command": "true @#@", "frame_first": 1, "frame_last": 1, "parser": "none"}]}})
        for _ in range(5):  # each call is answered: the reactor is not held by the mask
            [task] = await client.tasks(job_id)
            self.assertEqual(task["state"], "RDY")
        await farm.start_render("a" * 40)
        job = await wait_until(reactor, lambda: _done(client, job_id), 30, "the job on the matching render")
        [task] = await client.tasks(job_id)
        self.assertEqual((job["state"], task["host"]), ("DON", "a" * 40))


async def _online(client: FarmClient, count: int) -> bool:
    return sum(1 for r in await client.renders() if r["online"]) == count


async def _done(client: FarmClient, job_id: int) -> Any:
    job = await client.job(job_id)
    return job if job["state"] == "DON" else None
