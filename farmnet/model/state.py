"""The farm's state and indices, and the one place a task's state changes.

`FarmState` holds jobs, users and renders with the indices the scheduler needs (ready
lists, capacities, generations, tickets), the farm's timers, and `_set_state`, which
keeps counters right and publishes the change. The concerns that change this state are
mixed into `farmnet.model.farm.Farm`: a task's life (lifecycle.py), actions
(actions.py), permissions and input checks (policy.py), read views (views.py), restore
from the store (restore.py).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from farmnet import errors
from farmnet.config import SchedulingConfig
from farmnet.messages import Order
from farmnet.model.data import FINISHED, Block, Job, MultiRun, Render, Task, TaskKey, TaskState, User
from farmnet.model.events import Bus, JobChanged, OrdersQueued, RenderChanged, TaskStateChanged
from farmnet.model.masks import Masks
from farmnet.model.pools import Trees
from farmnet.model.scheduler import Scheduler
from farmnet.model.spec import BlockSpec, JobSpec

log = Logger()

#: The states `_set_state` reads on every start and finish, as globals (an enum's class
#: attribute costs 60 ns more to read).
_RDY, _RUN, _DON, _SKP, _WRC = TaskState.RDY, TaskState.RUN, TaskState.DON, TaskState.SKP, TaskState.WRC


class FarmState:
    def __init__(self, clock: IReactorTime, settings: SchedulingConfig | None = None) -> None:
        self.clock = clock
        self.settings = settings or SchedulingConfig()
        #: Every change is published here once (farmnet.model.events).
        self.bus = Bus(on_error=self._subscriber_failed)
        #: Every mask compiled once, matched in linear time, answers remembered.
        self.masks = Masks()
        #: The pool tree (renders) and the branch tree (jobs), farmnet.model.pools.
        self.trees = Trees()
        self.jobs: dict[int, Job] = {}
        self.users: dict[str, User] = {}
        self.renders: dict[int, Render] = {}
        self.renders_by_name: dict[str, Render] = {}
        #: Bumped whenever work may have become runnable, so idle renders re-solve.
        self.work_generation = 0
        #: Renders that may take work they could not at their last visit (room freed, settings
        #: changed, registered): between changes of work_generation a solve visits only these.
        self.renders_to_visit: set[int] = set()
        #: Bumped when jobs come, go, finish or change dependencies (job depend_mask cache).
        self.jobs_generation = 0
        self.tickets_used: Counter[str] = Counter()
        #: Jobs with ignorenimby or ignorepaused: while there are none, the scheduler does not
        #: look at paused or NIMBY renders at all.
        self.jobs_ignoring_states = 0
        #: The system job (farmnet.sysjob), which users cannot delete, and how it wakes renders.
        self.system_job_id: int | None = None
        self.on_wake: Callable[[Render], None] | None = None
        #: Capacities of unfinished blocks: a render with less free is not worth a solve.
        self.block_capacities: Counter[int] = Counter()
        self.scheduler = Scheduler(self)
        #: Tasks the scheduler has handed to renders since the server started.
        self.assignments = 0
        self._next_job_id = 1
        self._next_render_id = 1
        self._serial = 0
        self._solve_call: IDelayedCall | None = None
        #: Multi-host tasks' hosts, and per block the task gathering them (model/multihost.py).
        self.multihost: dict[TaskKey, MultiRun] = {}
        self.multihost_gathering: dict[tuple[int, int], Task] = {}
        #: Pending timers: ("reconnect"|"limits"|"wait"|"life"|"multihost", id) → call.
        self._timers: dict[tuple[str, int], IDelayedCall] = {}

    def _set_state(self, task: Task, state: TaskState) -> None:
        old = task.state
        if old is state:
            return
        block = task.block
        job = block.job
        if old is _RDY and state is _RUN and not job.time_done:  # a start: the general path below
            # would change these counts, drop the job from the ready list and publish, no more.
            counts = block.counts
            counts[_RDY] -= 1
            counts[_RUN] = counts.get(_RUN, 0) + 1
            counts = job.counts
            counts[_RDY] -= 1
            counts[_RUN] = counts.get(_RUN, 0) + 1
            task.state = state
            if counts[_RDY] == 0:
                self._ready_jobs_remove(job)
            self.bus.publish(TaskStateChanged(task, old))
            return
        # Every start and finish comes here: counters are read with .get (a Counter's missing
        # key costs a Python call), and what cannot change is not looked at.
        # Only a move into or out of DON/SKP can finish or unfinish the block (most moves do not).
        finishing = old in FINISHED or state in FINISHED
        counts = block.counts
        block_was_finished = finishing and (  # block.finished, written out
            counts.get(_DON, 0) + counts.get(_SKP, 0) == len(block.tasks))
        counts[old] -= 1
        counts[state] = counts.get(state, 0) + 1
        counts = job.counts
        counts[old] -= 1
        counts[state] = counts.get(state, 0) + 1
        task.state = state
        if state is _RDY:
            block.push_ready(task)
            self.work_generation += 1
            if counts[_RDY] == 1:
                self._ready_jobs_add(job)
        elif old is _RDY and counts[_RDY] == 0:
            self._ready_jobs_remove(job)
        spec = block.spec
        if spec.multihost_min and state is not _RUN and state is not _WRC:
            self._multihost_end(task, f"task {state.value}")  # type: ignore[attr-defined]
        counts = block.counts
        block_finished_changed = finishing and block_was_finished != (
            counts.get(_DON, 0) + counts.get(_SKP, 0) == len(block.tasks))
        if block_finished_changed:
            self._count_capacity(spec.capacity, -1 if block_was_finished is False else +1)
            if block.depends_on_me or job.spec.depend_mask:
                self.work_generation += 1  # blocks or jobs waiting on it may run now
        self.bus.publish(TaskStateChanged(task, old))
        was_done = job.time_done
        # A finish that does not finish its block leaves the job unfinished (DON <-> SKP is looked at).
        if not was_done and state in FINISHED and (block_finished_changed or old in FINISHED) and job.done:
            job.time_done = self.clock.seconds()
            self.jobs_generation += 1
            self.work_generation += 1
            log.info("job {job_id} {job_name} done", job_id=job.id, job_name=job.name)
            self._job_changed(job)
        elif was_done and not job.done:
            job.time_done = 0.0
            self.jobs_generation += 1
            self._job_changed(job)

    def _subscriber_failed(self, event: object, error: BaseException) -> None:
        """A subscriber's bug must not leave the farm half-changed: log it, go on."""
        log.failure("a subscriber failed on {event}", event=type(event).__name__)

    def _job_changed(self, job: Job) -> None:
        self.bus.publish(JobChanged(job))

    def _render_changed(self, render: Render) -> None:
        self.bus.publish(RenderChanged(render))

    def _count_capacity(self, capacity: int, delta: int) -> None:
        self.block_capacities[capacity] += delta
        if self.block_capacities[capacity] <= 0:
            del self.block_capacities[capacity]

    def smallest_block_capacity(self) -> int:
        """A lower bound of what any unfinished block needs on a render."""
        return min(self.block_capacities, default=0)

    def _ready_jobs_add(self, job: Job) -> None:
        jobs = self.users[job.user_name].ready_jobs
        if job not in jobs:
            bisect.insort(jobs, job, key=Job.order_key)

    def _ready_jobs_remove(self, job: Job) -> None:
        jobs = self.users[job.user_name].ready_jobs
        if job in jobs:
            jobs.remove(job)

    def setting(self, block: Block, name: str) -> Any:
        """An error setting as it applies to a block: block, else job, else user, else farm."""
        for value in (getattr(block.spec, name), getattr(block.job.spec, name),
                      getattr(self.users[block.job.user_name], name)):
            if value >= 0:
                return value
        return getattr(self.settings, name)

    def _timer(self, kind: str, ident: int, delay: float, f: Callable[..., None], *args: Any) -> None:
        self._cancel_timer(kind, ident)

        def fire() -> None:
            self._timers.pop((kind, ident), None)
            f(*args)

        self._timers[(kind, ident)] = self.clock.callLater(max(0.0, delay), fire)

    def _cancel_timer(self, kind: str, ident: int) -> None:
        call = self._timers.pop((kind, ident), None)
        if call is not None and call.active():
            call.cancel()

    def stop(self) -> None:
        """Cancel the farm's timers (the server is stopping)."""
        for call in [self._solve_call, *self._timers.values()]:
            if call is not None and call.active():
                call.cancel()
        self._solve_call = None
        self._timers.clear()

    def job(self, job_id: int) -> Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise errors.UnknownJob(f"no job {job_id}") from None

    def task(self, key: TaskKey) -> Task:
        job = self.job(key[0])
        try:
            if key[1] < 0 or key[2] < 0:
                raise IndexError
            return job.blocks[key[1]].tasks[key[2]]
        except IndexError:
            raise errors.UnknownTask(f"job {key[0]} has no block {key[1]} task {key[2]}") from None

    def user(self, name: str) -> User:
        try:
            return self.users[name]
        except KeyError:
            raise errors.InvalidAction(f"no user {name!r}: users are created by their first job") from None

    def render(self, render_id: int) -> Render:
        try:
            return self.renders[render_id]
        except KeyError:
            raise errors.NotRegistered(f"no render {render_id}: register again") from None

    def render_named(self, name: str) -> Render:
        try:
            return self.renders_by_name[name]
        except KeyError:
            raise errors.UnknownRender(f"no render named {name!r}") from None

    def _order(self, render: Render, order: Order) -> None:
        render.orders.append(order)
        self.bus.publish(OrdersQueued(render))

    def take_orders(self, render: Render) -> list[Order]:
        orders, render.orders = render.orders, []
        return orders

    def _build_job(self, job_id: int, spec: JobSpec, owner: str, priority: int, created: float,
                   serial: int, paused: bool) -> Job:
        """A job with all its tasks ready, registered in the farm (no events)."""
        job = Job(id=job_id, spec=spec, user_name=owner, priority=priority, time_creation=created,
                  serial=serial, paused=paused, hosts_mask=self.masks.compile(spec.hosts_mask),
                  hosts_mask_exclude=self.masks.compile(spec.hosts_mask_exclude))
        if spec.ignorenimby or spec.ignorepaused:
            self.jobs_ignoring_states += 1
        for bspec in spec.blocks:
            self._add_block(job, bspec)
        self._link_blocks(job)
        self.jobs[job.id] = job
        return job

    def _add_block(self, job: Job, bspec: BlockSpec) -> Block:
        """A new block at the end of ``job``, all its tasks ready (depends are linked after)."""
        block = Block(job=job, number=len(job.blocks), spec=bspec,
                      hosts_mask=self.masks.compile(bspec.hosts_mask),
                      hosts_mask_exclude=self.masks.compile(bspec.hosts_mask_exclude))
        count = bspec.tasks_count
        block.tasks = [Task(block, n) for n in range(count)]
        block.counts[TaskState.RDY] = count
        block.set_order(bspec.sequential)
        job.counts[TaskState.RDY] += count
        job.blocks.append(block)
        return block

    def _link_blocks(self, job: Job) -> None:
        """Resolve blocks' depend_mask and tasks_depend_mask to the blocks they match."""
        for block in job.blocks:
            block.depends_on_me = False
        for block in job.blocks:
            for attr, mask in (("depends_on", block.spec.depend_mask),
                               ("tasks_depend_on", block.spec.tasks_depend_mask)):
                pattern = self.masks.compile(mask)
                matched = [b for b in job.blocks
                           if pattern is not None and b is not block and pattern.fullmatch(b.name)]
                setattr(block, attr, matched)
                for b in matched:
                    b.depends_on_me = True

    def _schedule_time_wait(self, job: Job) -> None:
        delay = job.spec.time_wait - self.clock.seconds()
        if delay > 0:
            self._timer("wait", job.id, delay, self._time_wait_over)

    def _schedule_time_life(self, job: Job) -> None:
        """Afanasy's ``time_life``: the job is deleted that long after its creation."""
        if job.spec.time_life > 0:
            delay = job.time_creation + job.spec.time_life - self.clock.seconds()
            self._timer("life", job.id, delay, self._time_life_over, job)

    def _time_life_over(self, job: Job) -> None:
        if self.jobs.get(job.id) is job:
            log.info("job {job_id} {job_name} deleted: its time_life of {time_life} s is over",
                     job_id=job.id, job_name=job.name, time_life=job.spec.time_life)
            self._job_delete(job, None)  # type: ignore[attr-defined]  # Actions, mixed into the Farm
            self.request_solve()

    def _time_wait_over(self) -> None:
        self.work_generation += 1
        self.request_solve()

    def request_solve(self) -> None:
        """Solve once, soon: many changes in one reactor turn cost one solve."""
        if self._solve_call is None:
            self._solve_call = self.clock.callLater(0, self._solve)

    @property
    def solve_pending(self) -> bool:
        """A solve is asked for and has not run yet (it runs at the end of this reactor turn)."""
        return self._solve_call is not None

    def _solve(self) -> None:
        self._solve_call = None
        self.solve()

    def solve(self) -> int:
        """Start what the scheduler assigns; returns how many tasks started."""
        started = 0
        for task, render in self.scheduler.assignments():
            self.start_task(task, render)
            started += 1
        self.assignments += started
        return started

