"""A small farm in every state a listing or an event can show, on a `task.Clock`: the scene
of the pinned wire shapes (tests/test_listings.py)."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from farmnet.config import SchedulingConfig
from farmnet.messages import HostResources, StartOrder
from farmnet.model.farm import Farm
from farmnet.model.spec import parse_job
from farmnet.server.monitors import EventLog


def build() -> tuple[Farm, EventLog, Clock]:
    clock = Clock()
    clock.advance(1000)
    farm = Farm(clock, SchedulingConfig(admins=("root",), task_reconnect_timeout=30, errors_avoid_host=1,
                                        errors_retries=3))
    events = EventLog(farm)
    doc: dict[str, Any] = {"job": {
        "name": "shot \u00e9 1", "annotation": "look", "depend_mask_global": "^none$", "time_wait": 0,
        "max_running_tasks": 4, "hosts_mask": "r.*", "command_post": "echo post",
        "custom_data": {"emails": ["a@b.c"]},
        "blocks": [
            {"name": "render", "command": "echo @####@", "frame_first": 1, "frame_last": 3,
             "service": "blender", "capacity": 100},
            {"name": "comp", "command": "echo comp", "frame_first": 1, "frame_last": 2,
             "depend_mask": "render", "tasks_depend_mask": ""},
        ]}}
    spec, _ = parse_job(doc)
    farm.submit(spec, "anna")
    spec2, _ = parse_job({"job": {"name": "other", "blocks": [
        {"name": "b", "command": "true", "tasks": [{"name": "t", "command": "true"}]}]}})
    job2 = farm.submit(spec2, "bob")
    farm.job_action("bob", [job2.id], "pause")
    clock.advance(5)
    farm.user_action("root", ["anna"], "set", {"priority": 50, "hosts_mask": "r1", "custom_data": {"x": 1}})
    r1 = farm.register_render("r1", capacity=1000, max_tasks=2, services=("blender", "generic"),
                              services_disabled=("nuke",), platform="linux", cpus=8, memory_mb=16000,
                              owner="anna", macs=("aa:bb:cc:dd:ee:ff",))
    farm.render_seen(r1, HostResources(cpu_num=8, cpu_percent=12.5, load_avg=[0.5, 0.25, 0.0]))
    clock.advance(1)
    orders = [o for o in farm.take_orders(r1) if isinstance(o, StartOrder)]
    clock.advance(2)
    farm.task_output(r1, orders[0].key, orders[0].run, 40)
    farm.task_finished(r1, orders[0].key, orders[0].run, exit_code=1, signal=None, time_started=1001.0,
                       time_done=1008.0)
    clock.advance(1)
    if len(orders) > 1:
        farm.task_finished(r1, orders[1].key, orders[1].run, exit_code=0, signal=None, time_started=1001.0,
                           time_done=1009.0)
    clock.advance(1)
    spec3, _ = parse_job({"job": {"name": "more", "blocks": [
        {"name": "b", "command": "true", "tasks": [{"name": "t", "command": "true"}]}]}})
    farm.submit(spec3, "anna")
    clock.advance(0)
    farm.take_orders(r1)  # a task of job 3 runs on r1: listed in its tasks
    r2 = farm.register_render("r2", capacity=500)
    farm.render_lost(r2, zombie=True)
    r3 = farm.register_render("r3", capacity=500)
    farm.render_lost(r3)
    farm.delete_renders("root", ["r3"])
    farm.job_action("bob", [job2.id], "delete")
    clock.advance(0)
    farm.user_action("root", ["bob"], "delete")
    clock.advance(0)
    farm.pool_action("root", "/gpu", "create", {"pattern": "gpu.*", "priority": 150})
    farm.pool_action("root", "/gpu", "move", {"renders": ["r2"]})
    farm.pool_action("root", "/old", "create")
    farm.pool_action("root", "/old", "delete")
    farm.branch_action("root", "/old", "create")
    farm.branch_action("root", "/old", "delete")
    clock.advance(0)
    return farm, events, clock
