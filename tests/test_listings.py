"""Listings and monitor events on the wire: the JSON bytes are pinned.

``tests/data/listings_wire.json`` holds what protocol 1 peers, the web's JavaScript and users'
scripts read today (captured from the scene of ``tests/listing_scene.py`` before listings and
events became attrs classes); every record kind and event kind must still come out byte for
byte the same: over AMP (the listing and poll commands' answers), in the web JSON API (``act``)
and in the web's event long-poll.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from farmnet import messages as m
from farmnet.convert import structure, unstructure
from farmnet.protocol import commands as c
from farmnet.server.actions import act
from farmnet.server.monitors import events_json
from farmnet.web.routing import json_dumps
from tests.listing_scene import build

PINNED = Path(__file__).parent / "data" / "listings_wire.json"
EVENT_KINDS = {"task", "progress", "job", "job_deleted", "user", "user_deleted", "render", "render_zombie",
               "render_deleted"}
ACTS = [("jobs", "list", {}), ("jobs", "show", {"id": 1}), ("blocks", "list", {"job_id": 1}),
        ("blocks", "show", {"job_id": 1, "block": 1}), ("tasks", "list", {"job_id": 1}),
        ("tasks", "show", {"job_id": 1, "block": 0, "task": 0}), ("renders", "list", {}),
        ("renders", "show", {"name": "r1"}), ("users", "list", {}), ("users", "show", {"name": "anna"})]


def wire(command: Any, answer: dict[str, Any], key: str) -> str:
    """The JSON text of one answer argument as AMP sends it (its parts joined)."""
    box = command.makeResponse(answer, None)
    name = key.encode()
    return b"".join(box[name + b"." + str(i).encode()] for i in range(int(box[name]))).decode()


class PinnedWireTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pinned = json.loads(PINNED.read_text(encoding="utf-8"))
        self.farm, self.events, _ = build()

    def test_scene_covers_every_event_kind(self) -> None:
        found, _ = self.events.since(0, 10_000)
        kinds = {event["kind"] for event in json.loads(self.pinned["poll_events"])}
        self.assertEqual(kinds, EVENT_KINDS)
        self.assertEqual(len(found), len(json.loads(self.pinned["poll_events"])))

    def test_amp_listings(self) -> None:
        farm = self.farm
        tasks, total = farm.list_tasks(1, None, 0, 100)
        self.assertEqual(total, 5)
        got = {
            "list_jobs": wire(c.ListJobs, {"jobs": farm.list_jobs()}, "jobs"),
            "show_job": wire(c.ShowJob, {"job": farm.show_job(1)}, "job"),
            "list_tasks": wire(c.ListTasks, {"tasks": tasks, "total": total}, "tasks"),
            "list_renders": wire(c.ListRenders, {"renders": farm.list_renders()}, "renders"),
            "list_users": wire(c.ListUsers, {"users": farm.list_users()}, "users"),
        }
        for key, text in got.items():
            self.assertEqual(text, self.pinned[key], key)

    def test_amp_events(self) -> None:
        found, reset = self.events.since(0, 10_000)
        text = wire(c.PollEvents, {"events": found, "last": self.events.last, "reset": reset}, "events")
        self.assertEqual(text, self.pinned["poll_events"])

    def test_web_events(self) -> None:
        found, reset = self.events.since(0, 10_000)
        text = json_dumps({"events": events_json(found), "last": self.events.last, "reset": reset}).decode()
        self.assertEqual(text, self.pinned["web events"])

    def test_web_api(self) -> None:
        for item, action, filters in ACTS:
            text = json_dumps({"result": act(self.farm, "root", item, action, filters)}).decode()
            self.assertEqual(text, self.pinned[f"act {item} {action}"], f"{item} {action}")


class RecordClassTests(SynchronousTestCase):
    """Each class names every key of its JSON: the pinned JSON read into the classes (which
    ignore keys they do not know) and written again is the same text."""

    def test_round_trip(self) -> None:
        pinned = json.loads(PINNED.read_text(encoding="utf-8"))
        for key, cls in (("list_jobs", list[m.JobRecord]), ("show_job", m.JobDetail),
                         ("list_tasks", list[m.TaskRecord]), ("list_renders", list[m.RenderRecord]),
                         ("list_users", list[m.UserRecord]), ("poll_events", list[m.Event])):
            objects = structure(json.loads(pinned[key]), cls, key)
            again = json.dumps(unstructure(objects, cls), separators=(",", ":"), ensure_ascii=False)
            self.assertEqual(again, pinned[key], key)

    def test_event_kinds(self) -> None:
        self.assertEqual({attrs.fields(cls).kind.default for cls in m.EVENT_CLASSES}, EVENT_KINDS)
        event = structure({"seq": 7, "kind": "job_deleted", "job_id": 3, "later": 1}, m.Event)
        self.assertEqual(event, m.JobDeletedEvent(7, 3))
