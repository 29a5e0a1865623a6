"""Render pools and job branches: Afanasy 3's two trees, by path ("/" is the root).

Pools group renders. A pool says which services its renders may run (``services``: only
these, if any is set in the pool or above; ``services_disabled``: never these), its
tickets (``tickets_host``: per render, ``tickets_pool``: shared by its renders), the most
tasks a render runs (``max_tasks_host``), the most tasks running in the pool
(``max_running_tasks``), its ``priority`` (renders of a higher-priority pool get work first;
a pool of priority 0 or ``paused`` runs nothing), what new renders get (``capacity_host``,
``new_nimby``, ``new_paused``) and a ``pattern`` (RE2, the whole host name) that puts a new
render in it. A render is placed in the deepest pool whose pattern matches its name,
looking from the root down (a child is looked at only when its parent's pattern matched);
an admin may move it. Settings not set in a pool (-1) come from its parent.

Branches group jobs by folder. A job's ``branch`` (Afanasy's key; when empty, its
``folders["output"]``, else ``folders["input"]``, else its first block's
``working_directory``, as af.py fills it) places it: the branch is created under the
deepest existing branch whose ``create_childs`` is on (the root's is), else the job goes
to that deepest branch. A branch limits its jobs' running tasks (``max_running_tasks``,
``max_running_tasks_per_host``, counted over its sub-branches too), can be ``paused``,
and solves what is in it (its jobs and sub-branches) by ``order`` (priority, then age) or
by ``need`` (1.1^priority / (running + 1)).

No I/O: the trees are data the farm keeps and the scheduler reads; changes are published
on the farm's bus as `PoolChanged`/`PoolDeleted`/`BranchChanged`/`BranchDeleted`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Annotated, Any

import attrs
from twisted.logger import Logger

from farmnet import errors
from farmnet.convert import in_range, one_of
from farmnet.messages import BranchRecord, PoolRecord
from farmnet.model.data import Job, Render, Task, TaskState
from farmnet.model.events import (
    BranchChanged,
    BranchDeleted,
    JobChanged,
    PoolChanged,
    PoolDeleted,
)
from farmnet.model.masks import _compile as compile_mask
from farmnet.model.policy import MASK, MAX_PRIORITY, changes_of

log = Logger()

ROOT = "/"
_BAD_NAME = re.compile(r"[^\w.\-]")


def clean_path(path: str) -> str:
    """Afanasy's path filter: backslashes as slashes, no empty, "." or ".." parts, other
    characters than letters, digits, "_", "-" and "." as "_"; "" is the root."""
    parts = [_BAD_NAME.sub("_", p) for p in path.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return "/" + "/".join(parts)


def parent_path(path: str) -> str:
    return path.rsplit("/", 1)[0] or ROOT


def _need(priority: int, running: int) -> float:
    return 1.1 ** priority / (running + 1)


# --- pools -----------------------------------------------------------------------------


@attrs.define(eq=False, repr=False)
class Pool:
    path: str
    parent: Pool | None = None
    children: list[Pool] = attrs.field(factory=list)
    renders: set[Render] = attrs.field(factory=set)
    #: RE2 over the whole host name; matched once per new render, so not remembered (`Masks`).
    pattern: str = ""
    regex: Any = None
    services: tuple[str, ...] = ()
    services_disabled: tuple[str, ...] = ()
    tickets_host: dict[str, int] = attrs.field(factory=dict)
    tickets_pool: dict[str, int] = attrs.field(factory=dict)
    max_tasks_host: int = -1
    capacity_host: int = -1
    max_running_tasks: int = -1
    priority: int = 99
    paused: bool = False
    new_nimby: bool = False
    new_paused: bool = False
    time_creation: float = 0.0
    #: Tasks running on the pool's renders and its sub-pools', their capacity and tickets.
    running: int = 0
    running_capacity: int = 0
    tickets_used: Counter[str] = attrs.field(factory=Counter)
    #: Derived from the pool and those above it when any pool changes (`Trees.pools_changed`),
    #: so a pick reads them without walking up: ready, max tasks per host, the pools on the way
    #: up with a running limit, whether any has tickets, services answered so far.
    up: tuple[Pool, ...] = ()
    is_ready: bool = True
    max_tasks: int = -1
    limited: tuple[Pool, ...] = ()
    ticketed: bool = False
    service_answers: dict[str, bool] = attrs.field(factory=dict)

    def __repr__(self) -> str:
        return f"<Pool {self.path}>"

    def allows(self, service: str) -> bool:
        """`can_run`, remembered until a pool changes."""
        answer = self.service_answers.get(service)
        if answer is None:
            answer = self.service_answers[service] = self.can_run(service)
        return answer

    def chain(self) -> Iterator[Pool]:
        """This pool, then its parents up to the root."""
        pool: Pool | None = self
        while pool is not None:
            yield pool
            pool = pool.parent

    def can_run(self, service: str) -> bool:
        """Afanasy's rule: disabled here or above, no; listed here or above, yes; otherwise
        yes only when no pool on the way up lists any service."""
        listed = False
        for pool in self.chain():
            if service in pool.services_disabled:
                return False
            if service in pool.services:
                return True
            listed = listed or bool(pool.services)
        return not listed

    def inherited(self, name: str) -> int:
        """A -1 setting comes from the parent."""
        for pool in self.chain():
            value = getattr(pool, name)
            if value >= 0:
                return value
        return -1

    def solve_priority(self) -> int:
        """Afanasy's pool priority: the mean of its own and its parent's (recursively)."""
        return self.priority if self.parent is None else (self.priority + self.parent.solve_priority()) // 2

    def host_ticket(self, name: str) -> int | None:
        for pool in self.chain():
            if name in pool.tickets_host:
                return pool.tickets_host[name]
        return None


@attrs.frozen
class PoolChanges:
    """What an admin may set on a pool (Afanasy's keys); None: not given."""

    pattern: Annotated[str, MASK] | None = None
    services: list[str] | None = None
    services_disabled: list[str] | None = None
    tickets_host: dict[str, int] | None = None
    tickets_pool: dict[str, int] | None = None
    max_tasks_host: Annotated[int, in_range(-1)] | None = None
    capacity_host: Annotated[int, in_range(-1)] | None = None
    max_running_tasks: Annotated[int, in_range(-1)] | None = None
    priority: Annotated[int, in_range(0, MAX_PRIORITY)] | None = None
    paused: bool | None = None
    new_nimby: bool | None = None
    new_paused: bool | None = None


POOL_SETTINGS = tuple(a.name for a in attrs.fields(PoolChanges))


@attrs.define(eq=False, repr=False)
class Branch:
    path: str
    parent: Branch | None = None
    children: list[Branch] = attrs.field(factory=list)
    jobs: set[Job] = attrs.field(factory=set)
    priority: int = 99
    max_running_tasks: int = -1
    max_running_tasks_per_host: int = -1
    solving: str = "order"
    create_childs: bool = False
    paused: bool = False
    time_creation: float = 0.0
    #: Running tasks of its jobs and its sub-branches' jobs, their capacity, per render id.
    running: int = 0
    running_capacity: int = 0
    running_per_host: Counter[int] = attrs.field(factory=Counter)
    #: This branch or one above it pauses or limits: the scheduler must look.
    guarded: bool = False
    #: This branch and those above it (set by `Trees.branches_changed`).
    up: tuple[Branch, ...] = ()

    def __repr__(self) -> str:
        return f"<Branch {self.path}>"

    def chain(self) -> Iterator[Branch]:
        branch: Branch | None = self
        while branch is not None:
            yield branch
            branch = branch.parent


@attrs.frozen
class BranchChanges:
    """What an admin may set on a branch; None: not given."""

    priority: Annotated[int, in_range(0, MAX_PRIORITY)] | None = None
    max_running_tasks: Annotated[int, in_range(-1)] | None = None
    max_running_tasks_per_host: Annotated[int, in_range(-1)] | None = None
    solving: Annotated[str, one_of("order", "need")] | None = None
    create_childs: bool | None = None
    paused: bool | None = None


BRANCH_SETTINGS = tuple(a.name for a in attrs.fields(BranchChanges))


def job_may_run_in(pools: Mapping[str, int], path: str) -> bool:
    """Afanasy's job ``pools``: a key starting with "/" matches the pool paths it begins,
    another key those it is part of. A matched value of -100 or less: not in that pool; any
    value of 100 or more: only in the pools matched."""
    matched = only_matched = False
    for key, value in pools.items():
        if not key:
            continue
        if path.startswith(key) if key.startswith("/") else key in path:
            if value <= -100:
                return False
            matched = True
        only_matched = only_matched or value >= 100
    return matched or not only_matched


def job_branch_path(job_spec_extra: Mapping[str, Any], first_working_directory: str) -> str:
    """Where a job goes: its ``branch``, else the folder af.py would put there."""
    branch = job_spec_extra.get("branch")
    if isinstance(branch, str) and branch:
        return clean_path(branch)
    folders = job_spec_extra.get("folders")
    if isinstance(folders, Mapping):
        for key in ("output", "input"):
            if isinstance(folders.get(key), str) and folders[key]:
                return clean_path(folders[key])
    return clean_path(first_working_directory)


class Trees:
    """The pool tree and the branch tree of one farm, with the counters the scheduler reads.

    ``pools_active`` / ``branches_ordering`` stay False while the trees are as a new farm
    has them, so a farm that does not use pools or branches pays nothing in solving."""

    def __init__(self) -> None:
        self.pools: dict[str, Pool] = {ROOT: Pool(ROOT)}
        self.branches: dict[str, Branch] = {ROOT: Branch(ROOT, create_childs=True)}
        #: Some pool has a setting the scheduler must check.
        self.pools_active = False
        #: Renders are offered work by pool priority (some pools differ).
        self.pools_ranked = False
        #: Some branch solves by need or has a priority: jobs are ordered through the tree.
        self.branches_ordering = False
        #: Bumped when pools change or renders move (the scheduler's render order is kept until).
        self.generation = 0
        self.pools_changed()
        self.branches_changed()

    @property
    def root_pool(self) -> Pool:
        return self.pools[ROOT]

    @property
    def root_branch(self) -> Branch:
        return self.branches[ROOT]

    # --- pools ---------------------------------------------------------------------------

    def pool(self, path: str) -> Pool:
        try:
            return self.pools[clean_path(path)]
        except KeyError:
            raise errors.InvalidAction(f"no pool {path!r}; pools: {', '.join(sorted(self.pools))}") from None

    def add_pool(self, path: str, now: float) -> Pool:
        path = clean_path(path)
        if path in self.pools:
            raise errors.InvalidAction(f"pool {path!r} exists")
        parent = self.pools.get(parent_path(path))
        if parent is None:
            raise errors.InvalidAction(
                f"no pool {parent_path(path)!r} to create {path!r} in: create it first")
        pool = Pool(path, parent=parent, time_creation=now)
        parent.children.append(pool)
        parent.children.sort(key=lambda p: p.path)
        self.pools[path] = pool
        self.pools_changed()
        return pool

    def remove_pool(self, pool: Pool) -> None:
        if pool.parent is None:
            raise errors.InvalidAction("the root pool cannot be deleted")
        if pool.children or pool.renders:
            raise errors.InvalidAction(
                f"pool {pool.path!r} has {len(pool.children)} pools and {len(pool.renders)} renders: "
                "delete or move them first")
        pool.parent.children.remove(pool)
        del self.pools[pool.path]

    def set_pool(self, pool: Pool, changes: Mapping[str, Any]) -> None:
        for key, value in changes.items():
            if key == "pattern":
                pool.regex = compile_mask(value) if value else None
            elif key in ("services", "services_disabled"):
                value = tuple(value)
            elif key in ("tickets_host", "tickets_pool"):
                value = dict(value)
            setattr(pool, key, value)
        self.pools_changed()

    def pools_changed(self) -> None:
        pools = self.pools.values()
        self.pools_active = any(
            p.services or p.services_disabled or p.tickets_host or p.tickets_pool or p.max_tasks_host >= 0
            or p.max_running_tasks >= 0 or p.paused or p.priority == 0 for p in pools)
        self.pools_ranked = len({p.solve_priority() for p in pools}) > 1
        for p in pools:
            chain = p.up = tuple(p.chain())
            p.is_ready = all(x.priority > 0 and not x.paused for x in chain)
            p.max_tasks = p.inherited("max_tasks_host")
            p.limited = tuple(x for x in chain if x.max_running_tasks >= 0)
            p.ticketed = any(x.tickets_host or x.tickets_pool for x in chain)
            p.service_answers.clear()
        self.generation += 1

    def place(self, render: Render) -> Pool:
        """The deepest pool whose pattern matches the render's name (Afanasy's assignRender)."""
        pool = self.root_pool
        while True:
            for child in pool.children:
                if child.regex is not None and child.regex.fullmatch(render.name):
                    pool = child
                    break
            else:
                return pool

    def put(self, render: Render, pool: Pool) -> None:
        """Put a render in a pool; what it runs moves with it."""
        old: Pool | None = render.pool
        if old is pool:
            return
        if old is not None:
            old.renders.discard(render)
            for task in render.tasks.values():
                self._pool_count(old, task, -1)
        pool.renders.add(render)
        render.pool = pool
        self.generation += 1
        for task in render.tasks.values():
            self._pool_count(pool, task, +1)

    def renders_under(self, pool: Pool) -> list[Render]:
        """The renders of a pool and of its sub-pools."""
        renders, todo = [], [pool]
        while todo:
            p = todo.pop()
            todo.extend(p.children)
            renders.extend(p.renders)
        return renders

    def apply_defaults(self, render: Render, new: bool) -> None:
        """The pool's settings for its renders: capacity, and for a new render nimby/paused."""
        pool: Pool = render.pool
        capacity = pool.inherited("capacity_host")
        if capacity > 0:
            render.capacity = capacity
        if new:
            if any(p.new_nimby for p in pool.chain()):
                render.nimby = True
            if any(p.new_paused for p in pool.chain()):
                render.paused = True

    def _pool_count(self, pool: Pool, task: Task, sign: int) -> None:
        spec = task.block.spec
        tickets = spec.tickets
        for p in pool.up:
            p.running += sign
            p.running_capacity += sign * spec.capacity
            if tickets:
                for name, count in tickets.items():
                    p.tickets_used[name] += sign * count

    # --- branches ------------------------------------------------------------------------

    def branch(self, path: str) -> Branch:
        try:
            return self.branches[clean_path(path)]
        except KeyError:
            raise errors.InvalidAction(f"no branch {path!r}") from None

    def add_branch(self, path: str, now: float, *, only_if_allowed: bool = False) -> Branch:
        """The branch at ``path``, made with its missing parents. With ``only_if_allowed``
        (a job's branch), a branch is made only where its parent's ``create_childs`` is on:
        otherwise the deepest branch on the way is returned (Afanasy's rule)."""
        path = clean_path(path)
        branch = self.branches.get(path)
        if branch is not None:
            return branch
        parent = self.add_branch(parent_path(path), now, only_if_allowed=only_if_allowed)
        if only_if_allowed and not parent.create_childs:
            return parent
        # A new branch solves as its parent does (Afanasy).
        branch = Branch(path, parent=parent, solving=parent.solving, time_creation=now)
        parent.children.append(branch)
        self.branches[path] = branch
        self.branches_changed()
        return branch

    def remove_branch(self, branch: Branch) -> None:
        if branch.parent is None:
            raise errors.InvalidAction("the root branch cannot be deleted")
        if branch.children or branch.jobs:
            raise errors.InvalidAction(
                f"branch {branch.path!r} has {len(branch.children)} branches and {len(branch.jobs)} jobs: "
                "delete or move them first")
        branch.parent.children.remove(branch)
        del self.branches[branch.path]

    def set_branch(self, branch: Branch, changes: Mapping[str, Any]) -> None:
        for key, value in changes.items():
            setattr(branch, key, value)
        if "max_running_tasks_per_host" in changes:
            self._count_per_host(branch)
        self.branches_changed()

    def _count_per_host(self, branch: Branch) -> None:
        """Running tasks per render are counted only under a per-host limit: counted
        afresh, from the jobs of the branch and its sub-branches, when one is set."""
        branch.running_per_host.clear()
        if branch.max_running_tasks_per_host < 0:
            return
        todo = [branch]
        while todo:
            b = todo.pop()
            todo.extend(b.children)
            for job in b.jobs:
                branch.running_per_host.update(task.render_id for block in job.blocks for task in block.tasks
                                               if task.render_id and task.state is TaskState.RUN)

    def branches_changed(self) -> None:
        branches = self.branches.values()
        self.branches_ordering = any(b.solving == "need" or b.priority != 99 for b in branches)
        for b in branches:
            b.up = tuple(b.chain())
            b.guarded = any(x.paused or x.max_running_tasks >= 0 or x.max_running_tasks_per_host >= 0
                            for x in b.up)

    def put_job(self, job: Job, branch: Branch) -> None:
        old: Branch | None = job.branch
        if old is branch:
            return
        running = [t for b in job.blocks for t in b.tasks if t.render_id and t.state.value == "RUN"]
        if old is not None:
            old.jobs.discard(job)
            for task in running:
                self._branch_count(old, task, task.render_id, -1)
        branch.jobs.add(job)
        job.branch = branch
        for task in running:
            self._branch_count(branch, task, task.render_id, +1)

    def _branch_count(self, branch: Branch, task: Task, render_id: int, sign: int) -> None:
        capacity = task.block.spec.capacity
        for b in branch.up:
            b.running += sign
            b.running_capacity += sign * capacity
            if b.max_running_tasks_per_host >= 0:
                b.running_per_host[render_id] += sign
                if b.running_per_host[render_id] <= 0:
                    del b.running_per_host[render_id]

    def job_key(self, job: Job, by_capacity: bool) -> list[tuple[Any, ...]]:
        """Solving order through the branch tree: at each level, siblings (branches and
        jobs) ordered by their parent's method."""
        branch: Branch | None = job.branch
        if branch is None:
            return [job.order_key()]
        running = (sum(b.running_capacity for b in job.blocks) if by_capacity
                   else sum(b.running for b in job.blocks))
        key = [_solve_key(branch.solving, job.priority, running, job.time_creation, job.serial)]
        while branch.parent is not None:
            parent = branch.parent
            key.append(_solve_key(parent.solving, branch.priority,
                                  branch.running_capacity if by_capacity else branch.running,
                                  branch.time_creation, 0))
            branch = parent
        key.reverse()
        return key

    # --- the counters, as tasks start and end --------------------------------------------

    def occupy(self, render: Render, task: Task) -> None:
        pool: Pool | None = render.pool
        if pool is not None:
            spec = task.block.spec
            if spec.tickets:
                self._pool_count(pool, task, +1)
            else:  # (the usual block: no call)
                capacity = spec.capacity
                for p in pool.up:
                    p.running += 1
                    p.running_capacity += capacity
        branch: Branch | None = task.block.job.branch
        if branch is not None:
            if branch.guarded:  # a per-host limit may be set on the way up
                self._branch_count(branch, task, render.id, +1)
            else:  # (the usual branch: no call)
                capacity = task.block.spec.capacity
                for b in branch.up:
                    b.running += 1
                    b.running_capacity += capacity

    def release(self, render: Render | None, task: Task) -> None:
        pool: Pool | None = render.pool if render is not None else None
        if pool is not None:
            spec = task.block.spec
            if spec.tickets:
                self._pool_count(pool, task, -1)
            else:  # (the usual block: no call)
                capacity = spec.capacity
                for p in pool.up:
                    p.running -= 1
                    p.running_capacity -= capacity
        branch: Branch | None = task.block.job.branch
        if branch is not None:
            if branch.guarded:  # a per-host limit may be set on the way up
                self._branch_count(branch, task, task.render_id, -1)
            else:  # (the usual branch: no call)
                capacity = task.block.spec.capacity
                for b in branch.up:
                    b.running -= 1
                    b.running_capacity -= capacity

    # --- records -------------------------------------------------------------------------

    def pool_record(self, pool: Pool) -> PoolRecord:
        renders = sorted(pool.renders, key=lambda r: r.name)
        return PoolRecord(
            path=pool.path, parent=pool.parent.path if pool.parent else "",
            pools=[c.path for c in pool.children], renders=[r.name for r in renders],
            renders_online=sum(1 for r in renders if r.online),
            renders_busy=sum(1 for r in renders if r.tasks),
            pattern=pool.pattern, services=list(pool.services),
            services_disabled=list(pool.services_disabled), tickets_host=dict(pool.tickets_host),
            tickets_pool=dict(pool.tickets_pool), max_tasks_host=pool.max_tasks_host,
            capacity_host=pool.capacity_host, max_running_tasks=pool.max_running_tasks,
            priority=pool.priority, paused=pool.paused, new_nimby=pool.new_nimby, new_paused=pool.new_paused,
            running=pool.running, running_capacity=pool.running_capacity,
            tickets_used={k: v for k, v in pool.tickets_used.items() if v}, time_creation=pool.time_creation)

    def branch_record(self, branch: Branch) -> BranchRecord:
        return BranchRecord(
            path=branch.path, parent=branch.parent.path if branch.parent else "",
            branches=sorted(c.path for c in branch.children), jobs=sorted(j.id for j in branch.jobs),
            priority=branch.priority, max_running_tasks=branch.max_running_tasks,
            max_running_tasks_per_host=branch.max_running_tasks_per_host, solving=branch.solving,
            create_childs=branch.create_childs, paused=branch.paused, running=branch.running,
            running_capacity=branch.running_capacity, time_creation=branch.time_creation)

    # --- the store's form ----------------------------------------------------------------

    def pool_fields(self, pool: Pool) -> dict[str, Any]:
        fields = {k: getattr(pool, k) for k in POOL_SETTINGS}
        fields["services"], fields["services_disabled"] = list(pool.services), list(pool.services_disabled)
        fields["time_creation"] = pool.time_creation
        return fields

    def branch_fields(self, branch: Branch) -> dict[str, Any]:
        return {**{k: getattr(branch, k) for k in BRANCH_SETTINGS}, "time_creation": branch.time_creation}


def _solve_key(solving: str, priority: int, running: int, created: float, serial: int) -> tuple[Any, ...]:
    if solving == "need":
        return (-_need(priority, running), created, serial)
    return (-priority, created, serial)


class PoolActions:
    """The farm's pool and branch actions (mixed into `farmnet.model.farm.Farm`): admins
    create, change and delete pools and branches, move renders between pools and jobs
    between branches. Each publishes what changed; the store keeps it."""

    # Provided by FarmState (the farm this is mixed into).
    trees: Trees
    clock: Any
    bus: Any
    renders_by_name: dict[str, Render]
    work_generation: int

    def list_pools(self) -> list[PoolRecord]:
        return [self.trees.pool_record(p) for p in sorted(self.trees.pools.values(), key=lambda p: p.path)]

    def list_branches(self) -> list[BranchRecord]:
        return [self.trees.branch_record(b)
                for b in sorted(self.trees.branches.values(), key=lambda b: b.path)]

    def pool_action(self, user: str, path: str, action: str, value: Any = None) -> list[str]:
        """create (with settings), set, delete, move (value: render names into this pool),
        reassign (value: render names, or none for all: placed again by the patterns)."""
        self._check_admin(user, "change pools")  # type: ignore[attr-defined]
        trees, now = self.trees, self.clock.seconds()
        if action == "create":
            changes = changes_of(value, PoolChanges, "pool") if value else {}
            pool = trees.add_pool(path, now)
            trees.set_pool(pool, changes)
            self.bus.publish(PoolChanged(pool))
            done = [pool.path]
        elif action == "set":
            pool = trees.pool(path)
            trees.set_pool(pool, changes_of(value, PoolChanges, "pool"))
            self.bus.publish(PoolChanged(pool))
            for render in trees.renders_under(pool):  # capacity_host may have changed
                trees.apply_defaults(render, new=False)
                self._render_changed(render)  # type: ignore[attr-defined]
            done = [pool.path]
        elif action == "delete":
            pool = trees.pool(path)
            trees.remove_pool(pool)
            trees.pools_changed()
            self.bus.publish(PoolDeleted(pool))
            done = [pool.path]
        elif action in ("move", "reassign"):
            names = self._render_names(value, allow_all=action == "reassign")
            renders = [self.render_named(n) for n in names]  # type: ignore[attr-defined]
            target = trees.pool(path) if action == "move" else None
            for render in renders:
                old = render.pool
                new = target or trees.place(render)
                trees.put(render, new)
                trees.apply_defaults(render, new=False)
                render.solved_empty_at = -1
                self.renders_to_visit.add(render.id)
                self._render_changed(render)  # type: ignore[attr-defined]
                for p in dict.fromkeys((old, new)):  # in this order: monitors see the same events each time
                    if p is not None:
                        self.bus.publish(PoolChanged(p))
                log.info("{user} moved render {render} to pool {pool}", user=user, render=render.name,
                         pool=new.path)
            done = [r.name for r in renders]
        else:
            raise errors.InvalidAction(
                f"unknown pool action {action!r}; one of create, set, delete, move, reassign")
        log.info("{user} {action} pool {pool}", user=user, action=action, pool=path)
        self.work_generation += 1
        self.request_solve()  # type: ignore[attr-defined]
        return done

    def _render_names(self, value: Any, allow_all: bool) -> list[str]:
        if value is None and allow_all:
            return sorted(self.renders_by_name)
        names = value.get("renders") if isinstance(value, Mapping) else value
        if isinstance(names, str):  # the web's prompt: "r1 r2" or "r1,r2"
            names = names.replace(",", " ").split()
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise errors.InvalidAction('values: expected {"renders": ["NAME", ...]}')
        return names

    def branch_action(self, user: str, path: str, action: str, value: Any = None) -> list[Any]:
        """create, set, delete (an empty branch), move (value: job ids into this branch)."""
        self._check_admin(user, "change branches")  # type: ignore[attr-defined]
        trees, now = self.trees, self.clock.seconds()
        if action == "create":
            changes = changes_of(value, BranchChanges, "branch") if value else {}
            if clean_path(path) in trees.branches:
                raise errors.InvalidAction(f"branch {clean_path(path)!r} exists")
            branch = trees.add_branch(path, now)
            trees.set_branch(branch, changes)
            for b in branch.chain():
                self.bus.publish(BranchChanged(b))
            done: list[Any] = [branch.path]
        elif action == "set":
            branch = trees.branch(path)
            trees.set_branch(branch, changes_of(value, BranchChanges, "branch"))
            self.bus.publish(BranchChanged(branch))
            done = [branch.path]
        elif action == "delete":
            branch = trees.branch(path)
            trees.remove_branch(branch)
            trees.branches_changed()
            self.bus.publish(BranchDeleted(branch))
            done = [branch.path]
        elif action == "move":
            ids = value.get("jobs") if isinstance(value, Mapping) else value
            if not isinstance(ids, list) or not ids or not all(type(i) is int for i in ids):
                raise errors.InvalidAction('values: expected {"jobs": [ID, ...]}')
            branch = trees.branch(path)
            jobs = [self.job(i) for i in ids]  # type: ignore[attr-defined]
            for job in jobs:
                old = job.branch
                trees.put_job(job, branch)
                job.spec = attrs.evolve(job.spec, extra={**job.spec.extra, "branch": branch.path})
                self.bus.publish(JobChanged(job))
                for b in dict.fromkeys((old, branch)):  # in this order, as for pools
                    if b is not None:
                        self.bus.publish(BranchChanged(b))
            done = [job.id for job in jobs]
        else:
            raise errors.InvalidAction(f"unknown branch action {action!r}; one of create, set, delete, move")
        log.info("{user} {action} branch {branch}", user=user, action=action, branch=path)
        self.work_generation += 1
        self.request_solve()  # type: ignore[attr-defined]
        return done

    # --- hooks the farm calls ------------------------------------------------------------

    def _place_render(self, render: Render, new: bool) -> None:
        """A render registered: a new one goes in the pool its name matches, then takes its
        pool's settings."""
        trees = self.trees
        if render.pool is None:
            trees.put(render, trees.place(render))
            self.bus.publish(PoolChanged(render.pool))
        trees.apply_defaults(render, new)

    def _place_job(self, job: Job) -> None:
        """A job was submitted (or restored): into its branch."""
        trees = self.trees
        first = job.spec.blocks[0].working_directory if job.spec.blocks else ""
        created = len(trees.branches)
        branch = trees.add_branch(job_branch_path(job.spec.extra, first), self.clock.seconds(),
                                  only_if_allowed=True)
        trees.put_job(job, branch)
        if job.spec.extra.get("branch") != branch.path:  # Afanasy's job names its branch
            job.spec = attrs.evolve(job.spec, extra={**job.spec.extra, "branch": branch.path})
        if len(trees.branches) != created:
            for b in branch.chain():
                self.bus.publish(BranchChanged(b))

    def _forget_render(self, render: Render) -> None:
        """A render was deleted: out of its pool."""
        pool: Pool | None = render.pool
        if pool is not None:
            pool.renders.discard(render)
            render.pool = None
            self.trees.generation += 1
            self.bus.publish(PoolChanged(pool))

    def _forget_job(self, job: Job) -> None:
        branch: Branch | None = job.branch
        if branch is not None:
            branch.jobs.discard(job)


def restore_pools(trees: Trees, rows: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
    """Pools as stored, parents before children (paths sorted)."""
    for path, fields in sorted(rows, key=lambda r: r[0].count("/") if r[0] != ROOT else 0):
        pool = trees.pools.get(path) or trees.add_pool(path, float(fields.get("time_creation", 0.0)))
        pool.time_creation = float(fields.get("time_creation", pool.time_creation))
        trees.set_pool(pool, {k: v for k, v in fields.items() if k in POOL_SETTINGS})


def restore_branches(trees: Trees, rows: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
    for path, fields in sorted(rows, key=lambda r: r[0].count("/") if r[0] != ROOT else 0):
        branch = trees.add_branch(path, float(fields.get("time_creation", 0.0)))
        branch.time_creation = float(fields.get("time_creation", branch.time_creation))
        trees.set_branch(branch, {k: v for k, v in fields.items() if k in BRANCH_SETTINGS})
