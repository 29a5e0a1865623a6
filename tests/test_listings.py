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
from farmnet.model.farm import Farm
from farmnet.protocol import commands as c
from farmnet.server.actions import act
from farmnet.server.monitors import EventLog, events_json
from farmnet.web.routing import json_dumps
from tests.listing_scene import build

PINNED = Path(__file__).parent / "data" / "listings_wire.json"
EVENT_KINDS = {"task", "progress", "job", "job_deleted", "user", "user_deleted", "render", "render_zombie",
               "render_deleted", "pool", "pool_deleted", "branch", "branch_deleted"}
ACTS = [("jobs", "list", {}), ("jobs", "show", {"id": 1}), ("blocks", "list", {"job_id": 1}),
        ("blocks", "show", {"job_id": 1, "block": 1}), ("tasks", "list", {"job_id": 1}),
        ("tasks", "show", {"job_id": 1, "block": 0, "task": 0}), ("renders", "list", {}),
        ("renders", "show", {"name": "r1"}), ("users", "list", {}), ("users", "show", {"name": "anna"}),
        ("pools", "list", {}), ("branches", "list", {})]


def wire(command: Any, answer: dict[str, Any], key: str) -> str:
    """The JSON text of one answer argument as AMP sends it (its parts joined)."""
    box = command.makeResponse(answer, None)
    name = key.encode()
    return b"".join(box[name + b"." + str(i).encode()] for i in range(int(box[name]))).decode()


def amp_listings(farm: Farm) -> dict[str, str]:
    tasks, total = farm.list_tasks(1, None, 0, 100)
    return {
        "list_jobs": wire(c.ListJobs, {"jobs": farm.list_jobs()}, "jobs"),
        "show_job": wire(c.ShowJob, {"job": farm.show_job(1)}, "job"),
        "list_tasks": wire(c.ListTasks, {"tasks": tasks, "total": total}, "tasks"),
        "list_renders": wire(c.ListRenders, {"renders": farm.list_renders()}, "renders"),
        "list_users": wire(c.ListUsers, {"users": farm.list_users()}, "users"),
    }


def amp_events(events: EventLog) -> str:
    found, reset = events.since(0, 10_000)
    return wire(c.PollEvents, {"events": found, "last": events.last, "reset": reset}, "events")


def web_events(events: EventLog) -> str:
    found, reset = events.since(0, 10_000)
    return json_dumps({"events": events_json(found), "last": events.last, "reset": reset}).decode()


def web_api(farm: Farm) -> dict[str, str]:
    return {f"act {item} {action}": json_dumps({"result": act(farm, "root", item, action, filters)}).decode()
            for item, action, filters in ACTS}


def regenerate() -> None:
    """Write the pinned file from today's code: only when a change to the wire is meant
    (``.venv/bin/python -m tests.test_listings``); review its diff before committing."""
    farm, events, _ = build()
    pinned = {**amp_listings(farm), "poll_events": amp_events(events), **web_api(farm),
              "web events": web_events(events)}
    PINNED.write_text(json.dumps(pinned, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


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
        self.assertEqual(self.farm.list_tasks(1, None, 0, 100)[1], 5)
        for key, text in amp_listings(self.farm).items():
            self.assertEqual(text, self.pinned[key], key)

    def test_amp_events(self) -> None:
        self.assertEqual(amp_events(self.events), self.pinned["poll_events"])

    def test_web_events(self) -> None:
        self.assertEqual(web_events(self.events), self.pinned["web events"])

    def test_web_api(self) -> None:
        for key, text in web_api(self.farm).items():
            self.assertEqual(text, self.pinned[key], key)


class RecordClassTests(SynchronousTestCase):
    """Each class names every key of its JSON: the pinned JSON read into the classes (which
    ignore keys they do not know) and written again is the same text."""

    def test_round_trip(self) -> None:
        pinned = json.loads(PINNED.read_text(encoding="utf-8"))
        for key, cls in (("list_jobs", list[m.JobRecord]), ("show_job", m.JobDetail),
                         ("list_tasks", list[m.TaskRecord]), ("list_renders", list[m.RenderRecord]),
                         ("list_users", list[m.UserRecord]), ("poll_events", list[m.Event]),
                         ("act pools list", list[m.PoolRecord]), ("act branches list", list[m.BranchRecord])):
            if key.startswith("act "):  # the web API's answer: {"result": [...]}
                data = json.loads(pinned[key])["result"]
                self.assertEqual(unstructure(structure(data, cls, key), cls), data, key)
                continue
            objects = structure(json.loads(pinned[key]), cls, key)
            again = json.dumps(unstructure(objects, cls), separators=(",", ":"), ensure_ascii=False)
            self.assertEqual(again, pinned[key], key)

    def test_event_kinds(self) -> None:
        self.assertEqual({attrs.fields(cls).kind.default for cls in m.EVENT_CLASSES}, EVENT_KINDS)
        event = structure({"seq": 7, "kind": "job_deleted", "job_id": 3, "later": 1}, m.Event)
        self.assertEqual(event, m.JobDeletedEvent(7, 3))


if __name__ == "__main__":
    regenerate()
