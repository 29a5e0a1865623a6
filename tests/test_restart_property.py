"""Whatever the farm shows survives a restart from its store, deletions included.

Hypothesis drives random sequences of submits, actions, render registrations, losses and
deletions, user deletions and task finishes on a farm that a real SQLite store follows;
then the farm is restarted from that store and every view is compared, and every task
waiting for its render waits until the same time. The renders go
offline first, as they do when a server stops (their running tasks wait: WRC).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from farmnet import errors
from farmnet.config import SchedulingConfig
from farmnet.messages import TaskRef
from farmnet.model.farm import Farm
from farmnet.model.spec import parse_job
from farmnet.server.store import Store

USERS = ("anna", "bob", "root")
RENDERS = ("r1", "r2", "r3")
SETTINGS = SchedulingConfig(admins=("root",), task_reconnect_timeout=30)

op = st.one_of(
    st.tuples(st.just("submit"), st.sampled_from(USERS), st.integers(1, 4), st.integers(1, 2), st.booleans()),
    st.tuples(st.just("submit_multihost"), st.sampled_from(USERS), st.integers(1, 3), st.integers(0, 1),
              st.booleans()),
    st.tuples(st.just("register"), st.sampled_from(RENDERS), st.integers(1, 3)),
    st.tuples(st.just("solve")),
    st.tuples(st.just("finish"), st.integers(0, 50), st.sampled_from([0, 0, 1])),
    st.tuples(st.just("lose"), st.sampled_from(RENDERS)),
    st.tuples(st.just("delete_render"), st.sampled_from(RENDERS)),
    st.tuples(st.just("job"), st.integers(0, 20),
              st.sampled_from(["pause", "resume", "delete", "restart", "restart_errors", "skip", "stop",
                               "set_priority", "reset_error_hosts"])),
    st.tuples(st.just("render_action"), st.sampled_from(RENDERS),
              st.sampled_from(["nimby", "pause", "free", "heal", "eject", "reset_error_hosts"])),
    st.tuples(st.just("user_set"), st.sampled_from(USERS), st.integers(0, 250)),
    st.tuples(st.just("delete_user"), st.sampled_from(USERS)),
    st.tuples(st.just("advance"), st.sampled_from([1, 5, 20, 100])),
    st.tuples(st.just("pool"), st.sampled_from(["/a", "/a/b", "/c"]),
              st.sampled_from(["create", "set", "delete", "move"]), st.sampled_from(RENDERS)),
    st.tuples(st.just("branch"), st.sampled_from(["/a", "/a/b", "/c"]),
              st.sampled_from(["create", "set", "delete", "move"]), st.integers(0, 20)),
)


def job(user: str, frames: int, blocks: int, paused: bool) -> dict[str, Any]:
    return {"job": {"name": f"{user}-{frames}", "offline": paused, "blocks": [
        {"name": f"b{n}", "command": "echo @####@", "frame_first": 1, "frame_last": frames,
         "errors_retries": 1} for n in range(blocks)]}}


def apply(farm: Farm, clock: Clock, step: tuple[Any, ...]) -> None:
    kind, *args = step
    jobs = sorted(farm.jobs)
    if kind == "submit":
        user, frames, blocks, paused = args
        farm.submit(parse_job(job(user, frames, blocks, paused))[0], user)
    elif kind == "submit_multihost":  # tasks on 1..4 renders, with or without a service
        user, low, extra, service = args
        doc = job(user, 2, 1, False)
        doc["job"]["blocks"][0].update(multihost_min=low, multihost_max=low + extra, multihost_max_wait=5,
                                       multihost_service="serve" if service else "")
        farm.submit(parse_job(doc)[0], user)
    elif kind == "register":
        name, capacity = args
        render = farm.renders_by_name.get(name)
        tasks = render.tasks.values() if render is not None else ()
        running = [TaskRef(*t.key, t.starts_count) for t in tasks]
        farm.register_render(name, capacity=capacity * 1000, owner="anna", running=running)
    elif kind == "solve":
        farm.solve()
    elif kind == "finish":
        index, exit_code = args
        # A multi-host task's secondary reports its service ended (or a stale run) too.
        running = [(t, r) for r in farm.renders.values() for t in [*r.tasks.values(), *r.multihost.values()]]
        if running:
            task, render = running[index % len(running)]
            now = clock.seconds()
            farm.take_orders(render)
            farm.task_finished(render, task.key, task.starts_count, exit_code=exit_code, signal=None,
                               time_started=task.time_started, time_done=now)
    elif kind == "lose":
        if args[0] in farm.renders_by_name:
            farm.render_lost(farm.renders_by_name[args[0]])
    elif kind == "delete_render":  # as an operator does: exit it, then delete it
        render = farm.renders_by_name.get(args[0])
        if render is not None:
            farm.render_lost(render)
        farm.delete_renders("root", [args[0]])
    elif kind == "job":
        index, action = args
        if jobs:
            value = 7 if action == "set_priority" else None
            farm.job_action("root", [jobs[index % len(jobs)]], action, value)
    elif kind == "render_action":
        farm.render_action("root", [args[0]], args[1])
    elif kind == "user_set":
        farm.user_action("root", [args[0]], "set", {"priority": args[1]})
    elif kind == "delete_user":  # their jobs first: a user with jobs cannot be deleted
        user = farm.users.get(args[0])
        if user is not None and user.jobs:
            farm.job_action("root", sorted(user.jobs), "delete")
        farm.user_action("root", [args[0]], "delete")
    elif kind == "advance":
        clock.advance(args[0])
    elif kind == "pool":
        path, action, name = args
        values = {"create": {"pattern": "r[12]"}, "set": {"priority": 120, "services_disabled": ["x"]},
                  "move": {"renders": [name]}}.get(action)
        farm.pool_action("root", path, action, values)
    elif kind == "branch":
        path, action, index = args
        values = {"create": {"create_childs": True}, "set": {"max_running_tasks": 3, "solving": "need"},
                  "move": {"jobs": [jobs[index % len(jobs)]] if jobs else []}}.get(action)
        farm.branch_action("root", path, action, values)


def views(farm: Farm) -> dict[str, Any]:
    """Everything a user can see of the farm."""
    return {
        "jobs": sorted(farm.list_jobs(), key=lambda j: j.id),
        "shown": {j: farm.show_job(j) for j in farm.jobs},
        "tasks": {j: farm.list_tasks(j, None, 0, 1 << 30) for j in farm.jobs},
        "why": {j: farm.explain(j) for j in farm.jobs},
        "renders": sorted(farm.list_renders(), key=lambda r: r.name),
        "users": sorted(farm.list_users(), key=lambda u: u.name),
        "counts": farm.counts(),
        "pools": farm.list_pools(),
        "branches": farm.list_branches(),
    }


def waits(farm: Farm) -> dict[str, Any]:
    """WRC tasks by render, each with when it began waiting and when it stops waiting:
    a restart continues the wait."""
    deadlines = {ident: call.getTime() for (kind, ident), call in farm._timers.items() if kind == "reconnect"}
    return {r.name: sorted((key, t.time_lost, deadlines.get(id(t))) for key, t in r.waiting.items())
            for r in farm.renders.values() if r.waiting}


def restarted(path: Path, now: float) -> Farm:
    clock = Clock()
    clock.advance(now)
    farm = Farm(clock, SETTINGS)
    store = Store(clock, path, farm)
    store.load()
    store.close()
    return farm


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(op, max_size=40))
@example(steps=[("submit", "anna", 2, 1, False), ("register", "r1", 2), ("solve",), ("finish", 0, 0),
                ("lose", "r1"), ("advance", 20)])  # a task waits for its render from 20 s before the restart
def test_views_survive_a_restart(steps: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "farm.sqlite"
        clock = Clock()
        clock.advance(1_000_000)
        farm = Farm(clock, SETTINGS)
        # The store's own timers (batches, syncs) never run: write_now writes what they would.
        store = Store(Clock(), path, farm)
        store.load()
        store.follow()
        for step in steps:
            try:
                apply(farm, clock, step)
            except errors.FarmError:
                pass  # refused (unknown render, permissions, online render...): nothing changed
            if step[0] in ("job", "delete_user", "delete_render", "submit") and len(steps) % 3 == 0:
                store.write_now()  # some histories write in between, as the store's batches do
        for render in list(farm.renders.values()):
            farm.render_lost(render)  # what a server's stop does to its renders
        before, waiting = views(farm), waits(farm)
        store.write_now()
        store.close()
        farm.stop()
        again = restarted(path, clock.seconds())
        assert views(again) == before
        assert waits(again) == waiting
