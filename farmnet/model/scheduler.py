"""Solving: which ready task goes to which render with room — Afanasy's rules.

Order: users, then their jobs, then blocks, then tasks. Users are taken by need by
default (need = 1.1^priority / (running + 1), running being the user's running
capacity, or its running tasks when the farm counts tasks), so each priority point is
worth about 10 % more of the farm; a user's jobs by order (higher priority first, then
older) unless the user asks for need. Blocks in order; tasks in their block's
``sequential`` order.

Every rule is a check that returns why it refuses (a `Why`), or None. `pick` uses the
checks to solve; `explain` runs the same checks and reports their answers, so "why is
my job waiting?" is answered from the scheduler's own state, exactly.

Solving runs when something changed (the farm coalesces requests into one solve per
reactor turn), never as a periodic scan. A user's finished jobs are not in its ready
list, and a render for which nothing fitted is skipped until new work appears (the
farm's work generation), so finished work and idle renders cost nothing.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime

from farmnet.model.data import Block, Job, Render, Task, TaskState, User
from farmnet.model.masks import Mask, Masks
from farmnet.model.pools import job_may_run_in

#: Tasks of one block looked at per pick before giving up on it (task-level refusals).
SCAN = 256


class Why(enum.StrEnum):
    """Why a job, block or task does not run (on a render)."""

    PAUSED = "job is paused (OFF)"
    TIME_WAIT = "job waits until its start time (WT)"
    JOB_DEPENDS = "job waits for jobs matching its depend_mask (WD)"
    COMMANDS_PRE = "job waits for its command_pre to run (WD)"
    BLOCK_DEPENDS = "block waits for blocks matching its depend_mask (WD)"
    TASKS_DEPEND = "ready tasks wait for tasks of blocks matching tasks_depend_mask (WD)"
    NO_READY = "no ready tasks"
    USER_LIMIT = "user's max_running_tasks reached"
    JOB_LIMIT = "job's max_running_tasks reached"
    BLOCK_LIMIT = "block's max_running_tasks reached"
    TICKETS = "farm tickets exhausted"
    OFFLINE = "render offline"
    RENDER_OFF = "render sick or asleep"
    PAUSED_RENDER = "render paused (only jobs with ignorepaused)"
    NIMBY_RENDER = "render NIMBY (only jobs with ignorenimby)"
    NIMBY = "render is nimby: only its owner's jobs (and jobs with ignorenimby)"
    USER_HOST_LIMIT = "user's max_running_tasks_per_host reached on the render"
    JOB_HOST_LIMIT = "job's max_running_tasks_per_host reached on the render"
    BLOCK_HOST_LIMIT = "block's max_running_tasks_per_host reached on the render"
    USER_MASK = "user's hosts mask excludes the render"
    JOB_MASK = "job's hosts mask excludes the render"
    BLOCK_MASK = "block's hosts mask excludes the render"
    SERVICE = "render does not allow the block's service"
    TOO_SMALL = "block capacity is more than the render's capacity"
    BUSY = "render busy: not enough free capacity or task slots"
    HOST_TICKETS = "render's tickets exhausted"
    AVOIDED = "block avoids the render after errors there (errors_avoid_host)"
    TASK_AVOIDED = "ready tasks avoid the render after errors there (errors_task_same_host)"
    POOL_OFF = "render's pool is paused or has priority 0"
    POOL_SERVICE = "render's pool does not allow the block's service"
    POOL_MAX_TASKS = "render's pool max_tasks_host reached on the render"
    POOL_LIMIT = "render's pool max_running_tasks reached"
    POOL_TICKETS = "render's pool tickets exhausted (tickets_host or tickets_pool)"
    JOB_POOLS = "job's pools keep it off the render's pool"
    BRANCH_PAUSED = "job's branch is paused"
    BRANCH_LIMIT = "job's branch max_running_tasks reached"
    BRANCH_HOST_LIMIT = "job's branch max_running_tasks_per_host reached on the render"


#: Refusals that name the render's pool in `explain`.
_POOL_WHYS = frozenset({Why.JOB_POOLS, Why.POOL_OFF, Why.POOL_SERVICE, Why.POOL_MAX_TASKS, Why.POOL_LIMIT,
                        Why.POOL_TICKETS})


def _limit_reached(running: int, limit: int) -> bool:
    """Afanasy's limits: negative means no limit."""
    return limit >= 0 and running >= limit


def _mask_refuses(name: str, mask: Mask | None, exclude: Mask | None) -> bool:
    if mask is not None and not mask.fullmatch(name):
        return True
    return exclude is not None and exclude.fullmatch(name)


def _need(priority: int, resources: int) -> float:
    return 1.1**priority / (resources + 1)


class FarmView(Protocol):
    """What the scheduler reads of the farm; it never changes the farm itself."""

    clock: IReactorTime
    users: Mapping[str, User]
    jobs: Mapping[int, Job]
    renders: Mapping[int, Render]
    work_generation: int
    jobs_generation: int
    jobs_ignoring_states: int
    tickets_used: Counter[str]
    masks: Masks
    trees: Any  # farmnet.model.pools.Trees

    @property
    def settings(self) -> Any: ...

    def smallest_block_capacity(self) -> int: ...

    def setting(self, block: Block, name: str) -> Any: ...


class Scheduler:
    def __init__(self, farm: FarmView) -> None:
        self.farm = farm
        self._depends_cache: dict[int, tuple[int, list[str]]] = {}
        self._renders_order: tuple[tuple[int, int, int], list[Render]] | None = None

    # --- solving -----------------------------------------------------------------------

    def assignments(self) -> Iterator[tuple[Task, Render]]:
        """Every (task, render) to start now, one at a time: the farm starts each before
        asking for the next, so each pick sees the previous ones."""
        farm = self.farm
        ignoring = farm.jobs_ignoring_states > 0
        for render in self.renders_in_order():
            if render.solved_empty_at == farm.work_generation:
                continue
            if not ignoring and (render.paused or render.NIMBY):
                continue  # no job may use it: not worth a pick
            while render.has_room():
                if render.capacity - render.capacity_used < farm.smallest_block_capacity():
                    break  # nothing unfinished fits in what is left
                task = self.pick(render)
                if task is None:
                    render.solved_empty_at = farm.work_generation
                    break
                yield task, render

    def pick(self, render: Render) -> Task | None:
        now = self.farm.clock.seconds()
        restricted = render.nimby or render.NIMBY or render.paused
        for user in self.users_in_order():
            if self.user_refuses(user, render):
                continue
            for job in self.jobs_in_order(user):
                if (self.job_waits(job, now) or self.job_refuses(job, render) or self.branch_waits(job)
                        or self.branch_refuses(job, render) or self.job_pools_refuse(job, render)):
                    continue
                if restricted and self.render_state_refuses(job, render):
                    continue
                for block in job.blocks:
                    if (self.block_waits(block) or self.block_refuses(block, render, now)
                            or self.pool_refuses(block, render)):
                        continue
                    task = self.take_task(block, render, now)
                    if task is not None:
                        return task
        return None

    def users_in_order(self) -> list[User]:
        users = [u for u in self.farm.users.values() if u.ready_jobs]
        if self.farm.settings.users_solving == "need":
            use_capacity = self.farm.settings.solve_by_capacity
            users.sort(key=lambda u: (-_need(u.priority, u.running_capacity if use_capacity else u.running),
                                      u.time_registered))
        else:
            users.sort(key=lambda u: (-u.priority, u.time_registered))
        return users

    def renders_in_order(self) -> list[Render]:
        """Renders as they are offered work: those of higher-priority pools first (Afanasy's
        pool priority), otherwise as they registered."""
        trees = self.farm.trees
        if not trees.pools_ranked:
            return list(self.farm.renders.values())
        renders_now = self.farm.renders
        key = (trees.generation, len(renders_now), next(reversed(renders_now), 0))
        if self._renders_order is None or self._renders_order[0] != key:  # pools or renders changed
            priority = {pool: pool.solve_priority() for pool in trees.pools.values()}
            renders = sorted(renders_now.values(), key=lambda r: -priority.get(r.pool, 0))
            self._renders_order = (key, renders)
        return self._renders_order[1]

    def jobs_by_branch(self, user: User) -> list[Job]:
        """A user's jobs ordered through the branch tree: at each level the branch's jobs and
        sub-branches by its solving (order or need)."""
        by_capacity = self.farm.settings.solve_by_capacity
        trees = self.farm.trees
        return sorted(user.ready_jobs, key=lambda j: trees.job_key(j, by_capacity))

    def jobs_in_order(self, user: User) -> list[Job]:
        if self.farm.trees.branches_ordering:
            return self.jobs_by_branch(user)
        if user.jobs_solving != "need":
            return user.ready_jobs  # kept in order by the farm
        use_capacity = self.farm.settings.solve_by_capacity

        def need(job: Job) -> float:
            running = sum(b.running_capacity for b in job.blocks) if use_capacity else job.counts[
                TaskState.RUN]
            return _need(job.priority, running)

        return sorted(user.ready_jobs, key=lambda j: (-need(j), j.order_key()))

    def take_task(self, block: Block, render: Render, now: float) -> Task | None:
        """The block's next ready task this render may run; tasks passed over stay ready."""
        if not block.tasks_depend_on and not block.host_errors:  # the fast path
            return block.pop_ready()
        passed: list[Task] = []
        found = None
        for _ in range(SCAN):
            task = block.pop_ready()
            if task is None:
                break
            if self.task_refuses(task, render, now) is None:
                found = task
                break
            passed.append(task)
        for task in passed:
            block.push_ready(task)
        return found

    # --- the checks (None: allowed) ------------------------------------------------------

    def user_refuses(self, user: User, render: Render) -> Why | None:
        if _limit_reached(user.running, user.max_running_tasks):
            return Why.USER_LIMIT
        if _limit_reached(user.running_per_host[render.id], user.max_running_tasks_per_host):
            return Why.USER_HOST_LIMIT
        if _mask_refuses(render.name, user.hosts_mask, user.hosts_mask_exclude):
            return Why.USER_MASK
        return None

    def job_waits(self, job: Job, now: float) -> Why | None:
        """Render-independent reasons a job does not run."""
        if job.paused:
            return Why.PAUSED
        if job.spec.time_wait > now:
            return Why.TIME_WAIT
        if (job.spec.depend_mask or job.spec.depend_mask_global) and self.job_depends_on(job):
            return Why.JOB_DEPENDS
        if job.commands_pre_pending:
            return Why.COMMANDS_PRE
        if _limit_reached(job.counts[TaskState.RUN], job.spec.max_running_tasks):
            return Why.JOB_LIMIT
        return None

    def render_state_refuses(self, job: Job, render: Render) -> Why | None:
        """Afanasy's render states: NIMBY runs nothing, nimby only its owner's jobs, paused
        nothing — unless the job ignores that (ignorenimby, ignorepaused)."""
        spec = job.spec
        if not spec.ignorenimby:
            if render.NIMBY:
                return Why.NIMBY_RENDER
            if render.nimby and render.owner != job.user_name:
                return Why.NIMBY
        if render.paused and not spec.ignorepaused:
            return Why.PAUSED_RENDER
        return None

    def job_refuses(self, job: Job, render: Render) -> Why | None:
        if _limit_reached(job.running_per_host[render.id], job.spec.max_running_tasks_per_host):
            return Why.JOB_HOST_LIMIT
        if _mask_refuses(render.name, job.hosts_mask, job.hosts_mask_exclude):
            return Why.JOB_MASK
        return None

    def job_depends_on(self, job: Job) -> list[str]:
        """Names of unfinished jobs this job waits for (cached until jobs change)."""
        generation = self.farm.jobs_generation
        cached = self._depends_cache.get(job.id)
        if cached is not None and cached[0] == generation:
            return cached[1]
        names = []
        for mask, global_ in ((job.spec.depend_mask, False), (job.spec.depend_mask_global, True)):
            if not mask:
                continue
            pattern = self.farm.masks.compile(mask)
            assert pattern is not None
            names += [other.name for other in self.farm.jobs.values()
                      if other is not job and not other.done
                      and (global_ or other.user_name == job.user_name)
                      and pattern.fullmatch(other.name)]
        self._depends_cache[job.id] = (generation, names)
        return names

    def block_waits(self, block: Block) -> Why | None:
        if not block.counts[TaskState.RDY]:
            return Why.NO_READY
        if any(not b.finished for b in block.depends_on):
            return Why.BLOCK_DEPENDS
        if _limit_reached(block.running, block.spec.max_running_tasks):
            return Why.BLOCK_LIMIT
        for name, count in block.spec.tickets.items():
            limit = self.farm.settings.tickets.get(name)
            if limit is not None and self.farm.tickets_used[name] + count > limit:
                return Why.TICKETS
        return None

    def block_refuses(self, block: Block, render: Render, now: float) -> Why | None:
        spec = block.spec
        if not render.allows(spec.service):
            return Why.SERVICE
        if spec.capacity > render.capacity:
            return Why.TOO_SMALL
        if render.capacity_used + spec.capacity > render.capacity or (
                render.max_tasks > 0 and len(render.tasks) >= render.max_tasks):
            return Why.BUSY
        if _limit_reached(block.running_per_host[render.id], spec.max_running_tasks_per_host):
            return Why.BLOCK_HOST_LIMIT
        if _mask_refuses(render.name, block.hosts_mask, block.hosts_mask_exclude):
            return Why.BLOCK_MASK
        per_host = self.farm.settings.tickets_per_host
        for name, count in spec.tickets.items():
            limit = per_host.get(name)
            if limit is not None and render.tickets_used[name] + count > limit:
                return Why.HOST_TICKETS
        errors = block.host_errors.get(render.name)
        if errors is not None and self._avoids(block, errors, "errors_avoid_host", now):
            return Why.AVOIDED
        return None

    def pool_refuses(self, block: Block, render: Render) -> Why | None:
        """The render's pool (and the pools above it): paused, services, max tasks per
        host, max running tasks, host and pool tickets."""
        pool = render.pool
        if pool is None or not self.farm.trees.pools_active:
            return None
        if not pool.is_ready:
            return Why.POOL_OFF
        spec = block.spec
        if not pool.allows(spec.service):
            return Why.POOL_SERVICE
        if pool.max_tasks >= 0 and len(render.tasks) >= pool.max_tasks:
            return Why.POOL_MAX_TASKS
        for p in pool.limited:
            if p.running >= p.max_running_tasks:
                return Why.POOL_LIMIT
        if not pool.ticketed:
            return None
        for name, count in spec.tickets.items():
            limit = pool.host_ticket(name)
            if limit is not None and render.tickets_used[name] + count > limit:
                return Why.POOL_TICKETS
            for p in pool.up:
                limit = p.tickets_pool.get(name)
                if limit is not None and p.tickets_used[name] + count > limit:
                    return Why.POOL_TICKETS
        return None

    def job_pools_refuse(self, job: Job, render: Render) -> Why | None:
        """The job's ``pools`` (Afanasy's per-pool job settings) keep it off the render's pool."""
        pools = job.spec.pools
        if not pools or render.pool is None or job_may_run_in(pools, render.pool.path):
            return None
        return Why.JOB_POOLS

    def branch_waits(self, job: Job) -> Why | None:
        """Render-independent: the job's branch (or one above it) is paused or at its
        max_running_tasks."""
        branch = job.branch
        if branch is None or not branch.guarded:
            return None
        for b in branch.up:
            if b.paused:
                return Why.BRANCH_PAUSED
            if _limit_reached(b.running, b.max_running_tasks):
                return Why.BRANCH_LIMIT
        return None

    def branch_refuses(self, job: Job, render: Render) -> Why | None:
        branch = job.branch
        if branch is None or not branch.guarded:
            return None
        for b in branch.up:
            if _limit_reached(b.running_per_host[render.id], b.max_running_tasks_per_host):
                return Why.BRANCH_HOST_LIMIT
        return None

    def task_refuses(self, task: Task, render: Render, now: float) -> Why | None:
        if task.block.tasks_depend_on and not self.task_dependencies_done(task):
            return Why.TASKS_DEPEND
        if task.host_errors:
            errors = task.host_errors.get(render.name)
            if errors is not None and self._avoids(task.block, errors, "errors_task_same_host", now):
                return Why.TASK_AVOIDED
        return None

    def _avoids(self, block: Block, errors: list[float], setting: str, now: float) -> bool:
        limit = self.farm.setting(block, setting)
        if limit <= 0 or errors[0] < limit:
            return False
        forgive = self.farm.setting(block, "errors_forgive_time")
        return forgive <= 0 or now - errors[1] < forgive

    def task_dependencies_done(self, task: Task) -> bool:
        """``tasks_depend_mask``: the tasks of the matched blocks that cover this task's
        frames (or, between explicit blocks, the task of the same number) are done."""
        for other in task.block.tasks_depend_on:
            for dep in covering_tasks(task, other):
                if dep.state is not TaskState.DON and dep.state is not TaskState.SKP:
                    return False
        return True

    # --- why is my job waiting? ------------------------------------------------------

    def explain(self, job: Job) -> dict[str, Any]:
        """Per block: what keeps it from running, from the same checks `pick` uses.

        Render-independent reasons come first; otherwise every online render is tried
        and the first refusal of each is counted, so the answer reads "3 renders: render
        does not allow the block's service; 1 render: render busy"."""
        farm = self.farm
        now = farm.clock.seconds()
        user = farm.users[job.user_name]
        job_reasons = []
        waits = self.job_waits(job, now)
        if waits is Why.JOB_DEPENDS:
            job_reasons.append(f"{waits}: {', '.join(sorted(set(self.job_depends_on(job))))}")
        elif waits is Why.TIME_WAIT:
            job_reasons.append(f"{waits} ({job.spec.time_wait - now:.0f} s from now)")
        elif waits is not None:
            job_reasons.append(str(waits))
        if waits is None:
            waits = self.branch_waits(job)
            if waits is not None:
                job_reasons.append(f"{waits} ({job.branch.path})")
        renders = [r for r in farm.renders.values()]
        blocks = []
        for block in job.blocks:
            entry: dict[str, Any] = {"block": block.number, "name": block.name,
                                     "ready": block.counts[TaskState.RDY],
                                     "running": block.running, "reasons": [], "renders": {},
                                     "can_run_on": []}
            blocked = self.block_waits(block)
            if blocked is Why.BLOCK_DEPENDS:
                names = sorted(b.name for b in block.depends_on if not b.finished)
                entry["reasons"].append(f"{blocked}: {', '.join(names)}")
            elif blocked is Why.TICKETS:
                entry["reasons"].append(f"{blocked}: {self._tickets_text(block)}")
            elif blocked is not None:
                entry["reasons"].append(str(blocked))
            if blocked is None and waits is None:
                refusals: Counter[str] = Counter()
                for render in renders:
                    why = self._refusal(user, job, block, render, now)
                    if why is None:
                        entry["can_run_on"].append(render.name)
                    elif why in _POOL_WHYS:
                        refusals[f"{why} ({render.pool.path})"] += 1
                    elif why is Why.BRANCH_HOST_LIMIT:
                        refusals[f"{why} ({job.branch.path})"] += 1
                    else:
                        refusals[str(why)] += 1
                entry["renders"] = dict(refusals)
                if not renders:
                    entry["reasons"].append("no renders are registered")
            blocks.append(entry)
        return {"job_id": job.id, "name": job.name, "state": self.display_state(job).value,
                "reasons": job_reasons, "blocks": blocks}

    def _refusal(self, user: User, job: Job, block: Block, render: Render, now: float) -> Why | None:
        if not render.online:
            return Why.OFFLINE
        if not render.usable():
            return Why.RENDER_OFF
        why = (self.render_state_refuses(job, render) or self.user_refuses(user, render)
               or self.job_refuses(job, render) or self.branch_refuses(job, render)
               or self.job_pools_refuse(job, render)
               or self.block_refuses(block, render, now) or self.pool_refuses(block, render))
        if why is not None:
            return why
        refusals = {self.task_refuses(t, render, now) for t in block.tasks if t.state is TaskState.RDY}
        if None in refusals or not refusals:
            return None
        return Why.TASKS_DEPEND if Why.TASKS_DEPEND in refusals else Why.TASK_AVOIDED

    def _tickets_text(self, block: Block) -> str:
        used, limits = self.farm.tickets_used, self.farm.settings.tickets
        return ", ".join(f"{name} {used[name]}/{limits[name]} in use, needs {count}"
                         for name, count in block.spec.tickets.items() if name in limits)

    def display_state(self, job: Job) -> TaskState:
        """The job's state as listings show it: WD and WT where the scheduler waits."""
        state = job.state
        if state is TaskState.RDY:
            why = self.job_waits(job, self.farm.clock.seconds())
            if why is Why.TIME_WAIT:
                return TaskState.WT
            if why is Why.JOB_DEPENDS or why is Why.COMMANDS_PRE:
                return TaskState.WD
            if all(self.block_waits(b) in (Why.BLOCK_DEPENDS, Why.NO_READY) for b in job.blocks) and any(
                    self.block_waits(b) is Why.BLOCK_DEPENDS for b in job.blocks):
                return TaskState.WD
        return state


def covering_tasks(task: Task, other: Block) -> list[Task]:
    """Tasks of ``other`` whose frames overlap ``task``'s. An explicit block's frames count
    from 0 (``frames_per_task`` each, or ``-frames_per_task`` tasks per frame); between a
    numeric and an explicit block they are aligned on the numeric block's frame_first, as
    Afanasy does."""
    mine, theirs = task.block.spec, other.spec
    start, end = mine.frames(task.number)
    if mine.numeric and not theirs.numeric:
        start, end = start - mine.frame_first, end - mine.frame_first
    elif theirs.numeric and not mine.numeric:
        start, end = start + theirs.frame_first, end + theirs.frame_first
    return [other.tasks[n] for n in theirs.tasks_covering(start, end) if n < len(other.tasks)]
