"""The scheduler's decisions and the events the model publishes, pinned against a recording.

A seeded mixed load (render pools, block and job needs, priorities, user/job/block/pool limits,
variable capacity, solving orders, block dependencies, failures and retries, a render lost and
back) is solved on a `task.Clock` under three farm settings. Every start (render, task, run, the
whole start order) and every event with what its subscribers read (task states, run records,
orders queued, job and render changes) goes into a trace, compared line by line with
tests/data/solve_trace.txt, recorded from the model before issue 14's speed work. A faster model
must make the same decisions in the same order and publish the same information.

To record again after an intended change of behaviour:
``python tests/test_solve_trace.py > tests/data/solve_trace.txt`` (and say why in the commit).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from farmnet.config import SchedulingConfig
from farmnet.messages import HostFacts, HostResources, StartOrder
from farmnet.model import events as ev
from farmnet.model.data import Render
from farmnet.model.farm import Farm
from farmnet.model.spec import parse_job

RECORDING = Path(__file__).parent / "data" / "solve_trace.txt"

#: (name, settings): the farm's solving settings each run of the load uses.
SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("need", {}),
    ("order-capacity", {"users_solving": "order", "solve_by_capacity": True}),
    ("reserve", {"capacity_reserve_after": 3, "capacity_reserve_renders": 2}),
]


def _digest(value: object) -> str:
    """A short stable digest of what an order or run record carries (the trace stays small)."""
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


def _as_list(_: object, __: object, value: Any) -> Any:
    """An order's tuples (hosts, files) as the lists they were when the trace was recorded."""
    return list(value) if isinstance(value, tuple) else value


def _event_line(event: object) -> str:
    """What subscribers read of an event, read at once as they do."""
    if isinstance(event, ev.TaskStateChanged):
        task = event.task
        return f"state {task.key} {event.old} > {task.state} run {task.starts_count} on {task.render_id}"
    if isinstance(event, ev.RunEnded):
        return f"run-ended {_digest(attrs.astuple(event.run))} {event.run.state} {event.run.host}"
    if isinstance(event, ev.OrdersQueued):
        return f"orders {event.render.name} {len(event.render.orders)}"
    if isinstance(event, (ev.JobSubmitted, ev.JobChanged, ev.JobDeleted)):
        job = event.job
        return f"{type(event).__name__} {job.id} {job.state} {sorted(job.counts.items())}"
    if isinstance(event, ev.RENDER_EVENTS):
        render = event.render
        return f"{type(event).__name__} {render.name} {render.state} {render.capacity_used}"
    if isinstance(event, ev.UserChanged):
        return f"UserChanged {event.user.name}"
    return type(event).__name__


def _job(rng: random.Random, i: int) -> dict[str, Any]:
    """A job of one or two blocks with a random mix of what the scheduler checks."""
    blocks = []
    for b in range(1 + (i % 3 == 0)):
        block: dict[str, Any] = {
            "name": f"b{b}", "command": "render -f @####@ -e @####@", "frame_first": 1,
            "frame_last": rng.randint(2, 14), "capacity": rng.choice([500, 1000, 1000, 2000, 3000]),
            "sequential": rng.choice([1, 1, 1, -1, 0, 3, -2]),
            "service": rng.choice(["generic", "generic", "nuke", "blender"])}
        if b:
            block["depend_mask"] = "b0"
        if rng.random() < 0.3:
            block.update(rng.choice([{"need_memory": 40000}, {"need_properties": "gpu"},
                                     {"need_cpu_cores": 24}, {"need_hdd": 300}, {"need_power": 13},
                                     {"need_gpu_mem_mb": 16000}, {"need_cpu_freq_mgz": 3500}]))
        if rng.random() < 0.15:
            block.update({"capacity_coeff_min": 1, "capacity_coeff_max": 3})
        if rng.random() < 0.2:
            block["max_running_tasks"] = rng.randint(1, 3)
        if rng.random() < 0.2:
            block["max_running_tasks_per_host"] = 1
        if rng.random() < 0.15:
            block["errors_retries"] = rng.randint(0, 2)
        blocks.append(block)
    job: dict[str, Any] = {"name": f"job{i:02d}", "priority": rng.randint(10, 99), "blocks": blocks}
    if rng.random() < 0.2:
        job["max_running_tasks"] = rng.randint(1, 4)
    if rng.random() < 0.15:
        job["need_os"] = rng.choice(["linux", "windows"])
    if rng.random() < 0.1:
        job["hosts_mask"] = "r0.*"
    return job


def solve_trace(name: str, settings: dict[str, Any]) -> list[str]:
    """Run the seeded load under ``settings``; the trace of starts and events."""
    rng = random.Random(14)
    clock = Clock()
    farm = Farm(clock, SchedulingConfig(admins=("root",), task_reconnect_timeout=5, **settings))
    trace = [f"# settings {name}"]
    for kind in [getattr(ev, n) for n in dir(ev) if isinstance(getattr(ev, n), type)]:
        if attrs.has(kind):
            farm.bus.subscribe(kind, lambda e: trace.append(_event_line(e)))
    farm.pool_action("root", "/farm", "create", {"pattern": "r.*"})
    pools = [{"pattern": r"r\d[02468]", "priority": 80, "services_disabled": ["nuke"], "max_tasks_host": 2},
             {"pattern": r"r\d[13]", "priority": 40, "max_running_tasks": 4},
             {"pattern": r"r\d[579]", "priority": 60}]
    for k, pool in enumerate(pools):
        farm.pool_action("root", f"/farm/p{k}", "create", pool)
    renders: list[Render] = []
    for i in range(24):
        facts = HostFacts(os="unix linux 64" if i % 5 else "windows 10", cpu_mhz=3000 + 100 * (i % 8),
                          properties="gpu" if i % 3 == 0 else "", power=10 + i % 5)
        render = farm.register_render(f"r{i:02d}", capacity=rng.choice([1000, 2000, 2500, 4000]),
                                      cpus=8 + 8 * (i % 3), facts=facts, max_tasks=rng.choice([0, 0, 2]))
        farm.render_seen(render, HostResources(
            mem_free_mb=16000 + 4000 * (i % 9), hdd_free_gb=100.0 + 50 * (i % 8),
            gpu_mem_total_mb=24000 if i % 4 == 0 else None, gpu_mem_used_mb=2000 if i % 4 == 0 else None))
        renders.append(render)
    users = ["anna", "bob", "carl", "dora"]
    jobs = 0
    running: list[tuple[Render, StartOrder]] = []
    for round_ in range(400):
        if round_ in (0, 4, 9, 15) or (round_ < 60 and rng.random() < 0.4):
            for _ in range(rng.randint(1, 5)):
                spec, _ = parse_job(_job(rng, jobs))
                farm.submit(spec, users[jobs % len(users)])
                jobs += 1
        if round_ == 12:
            farm.render_lost(renders[5])
        if round_ == 14:
            farm.register_render("r05", capacity=2000, cpus=8, facts=HostFacts(os="unix linux 64"))
        clock.advance(1)
        for render in renders:
            for order in farm.take_orders(render):
                if isinstance(order, StartOrder):
                    trace.append(f"start {render.name} {order.key} run {order.run} "
                                 f"{_digest(attrs.asdict(order, value_serializer=_as_list))}")
                    running.append((render, order))
        still = []
        for render, order in running:
            luck = rng.random()
            if luck < 0.35:
                still.append((render, order))
                continue
            exit_code = 0 if luck < 0.9 else 1
            farm.task_finished(render, order.key, order.run, exit_code=exit_code, signal=None,
                               time_started=float(round_), time_done=round_ + 0.5)
        running = still
        if round_ > 60 and not running and not any(job.counts["RDY"] for job in farm.jobs.values()):
            break
    trace.append(f"# {farm.assignments} assignments, {sum(j.done for j in farm.jobs.values())} jobs done")
    return trace


def full_trace() -> list[str]:
    return [line for name, settings in SETTINGS for line in solve_trace(name, settings)]


class SolveTraceTests(SynchronousTestCase):
    def test_same_starts_and_events_as_recorded(self) -> None:
        recorded = RECORDING.read_text().splitlines()
        trace = full_trace()
        self.assertGreater(sum(line.startswith("start ") for line in recorded), 1000)
        for number, (want, got) in enumerate(zip(recorded, trace, strict=False), 1):
            if want != got:
                self.fail(f"{RECORDING.name} line {number} differs:\n  recorded {want}\n  now      {got}")
        self.assertEqual(len(trace), len(recorded))


if __name__ == "__main__":
    print("\n".join(full_trace()))
