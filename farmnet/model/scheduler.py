"""Solving: which ready task goes to which render with room — Afanasy's rules.

Order: users, then their jobs, then blocks, then tasks. Users are taken by need by
default (need = 1.1^priority / (running + 1), running being the user's running
capacity, or its running tasks when the farm counts tasks), so each priority point is
worth about 10 % more of the farm; a user's jobs by order (higher priority first, then
older) unless the user asks for need. Blocks in order; tasks in their block's
``sequential`` order; in a multi-host block, the task gathering hosts first
(farmnet/model/multihost.py).

Every rule is a check that returns why it refuses (a `Why`), or None. `pick` uses the
checks to solve; `explain` runs the same checks and reports their answers, so "why is
my job waiting?" is answered from the scheduler's own state, exactly.

Needs (what a block or job asks of a render), variable capacity and the reservation that keeps
a block waiting for free capacity from starving are described in doc/scheduling.md.

Solving runs when something changed (the farm coalesces requests into one solve per
reactor turn), never as a periodic scan. A user's finished jobs are not in its ready
list, and a render for which nothing fitted is skipped until new work appears (the
farm's work generation), so finished work and idle renders cost nothing.
"""

from __future__ import annotations

import bisect
import enum
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime

from farmnet.model.data import Block, Job, MultiRun, Render, Task, TaskKey, TaskState, User
from farmnet.model.masks import Mask, Masks
from farmnet.model.pools import job_may_run_in
from farmnet.model.spec import BlockSpec, words_found

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
    MULTIHOST_HOST = "render is already a host of a task of this multi-host block"
    MULTIHOST_GATHERING = "multi-host task gathers hosts"
    NEED_MEMORY = "render has less free memory than the block's need_memory"
    NEED_GPU_MEM = "render has less free GPU memory than the block's need_gpu_mem_mb"
    NEED_CPU_FREQ = "render's CPU is slower than the block's need_cpu_freq_mgz"
    NEED_CPU_CORES = "render has fewer CPU cores than the block's need_cpu_cores"
    NEED_CPU_FREQ_CORES = "render's CPU MHz x cores is less than the block's need_cpu_freq_cores"
    NEED_HDD = "render has less free disk than the block's need_hdd"
    NEED_POWER = "render's power is less than the block's need_power"
    NEED_PROPERTIES = "render's properties do not match the block's need_properties"
    JOB_NEED_OS = "render's OS does not match the job's need_os"
    JOB_NEED_PROPERTIES = "render's properties do not match the job's need_properties"
    RESERVED = "render reserved for a block that waits for free capacity"
    POOL_OFF = "render's pool is paused or has priority 0"
    POOL_SERVICE = "render's pool does not allow the block's service"
    POOL_MAX_TASKS = "render's pool max_tasks_host reached on the render"
    POOL_LIMIT = "render's pool max_running_tasks reached"
    POOL_TICKETS = "render's pool tickets exhausted (tickets_host or tickets_pool)"
    JOB_POOLS = "job's pools keep it off the render's pool"
    BRANCH_PAUSED = "job's branch is paused"
    BRANCH_LIMIT = "job's branch max_running_tasks reached"
    BRANCH_HOST_LIMIT = "job's branch max_running_tasks_per_host reached on the render"



#: A block's numeric need → what refuses it, the render's value it is checked against, its unit.
NEEDS: dict[str, tuple[Why, str, str]] = {
    "need_memory": (Why.NEED_MEMORY, "mem_free_mb", "MB free"),
    "need_gpu_mem_mb": (Why.NEED_GPU_MEM, "gpu_mem_free_mb", "MB GPU memory free"),
    "need_cpu_freq_mgz": (Why.NEED_CPU_FREQ, "cpu_mhz", "MHz"),
    "need_cpu_cores": (Why.NEED_CPU_CORES, "cpu_num", "cores"),
    "need_cpu_freq_cores": (Why.NEED_CPU_FREQ_CORES, "cpu_freq_cores", "MHz x cores"),
    "need_hdd": (Why.NEED_HDD, "hdd_free_gb", "GB free"),
    "need_power": (Why.NEED_POWER, "power", "power"),
}


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


#: States every pick reads, as globals (an enum's class attribute costs 60 ns more to read).
_RDY, _RUN = TaskState.RDY, TaskState.RUN

#: Seconds between visits of every render while no work comes (a bound on what a missed
#: mark of `renders_to_visit` could delay).
VISIT_ALL_EVERY = 1.0


def _need(priority: int, resources: int) -> float:
    return 1.1**priority / (resources + 1)


class FarmView(Protocol):
    """What the scheduler reads of the farm; it never changes the farm itself."""

    clock: IReactorTime
    users: Mapping[str, User]
    jobs: Mapping[int, Job]
    renders: Mapping[int, Render]
    work_generation: int
    renders_to_visit: set[int]
    jobs_generation: int
    jobs_ignoring_states: int
    tickets_used: Counter[str]
    masks: Masks
    #: (job id, block number) → the multi-host task of that block gathering hosts.
    multihost_gathering: Mapping[tuple[int, int], Task]
    #: Multi-host tasks' hosts, gathering or running.
    multihost: Mapping[TaskKey, MultiRun]
    trees: Any  # farmnet.model.pools.Trees

    @property
    def settings(self) -> Any: ...

    def smallest_block_capacity(self) -> int: ...

    def setting(self, block: Block, name: str) -> Any: ...


class Scheduler:
    def __init__(self, farm: FarmView) -> None:
        self.farm = farm
        self._depends_cache: dict[int, tuple[int, list[str]]] = {}
        #: Blocks the scheduler found refused for free capacity only, since when (the
        #: reservation's candidates; see `reserve`).
        self.capacity_waits: dict[Block, float] = {}
        #: Render id → the block it is kept for (`reserve_target`).
        self.reserved: dict[int, Block] = {}
        self.reserve_target: Block | None = None
        self._renders_order: tuple[tuple[int, int, int], list[Render]] | None = None
        #: What the last visit of every render saw (work and pools generations, renders), when
        #: the next is due, and each render's place in the order (renders_to_visit's order).
        self._visited_all: tuple[int, int] | None = None
        self._visit_all_at = 0.0
        self._visited_generation = -1
        #: Renders left with room at their last visit (no work for them then, or paused):
        #: visited again when work may have come. A full render is visited once it is marked.
        self._roomy: dict[int, Render] = {}
        #: Renders whose free capacity was below the smallest unfinished block's, and the
        #: largest such smallest: they are visited again when a smaller block comes.
        self._tight: dict[int, Render] = {}
        self._tight_smallest = 0
        self._places: tuple[tuple[int, int, int], dict[int, int]] | None = None
        #: The place in the users' order of the last pick's user (`_user_started`).
        self._picked = 0

    # --- solving -----------------------------------------------------------------------

    def assignments(self) -> Iterator[tuple[Task, Render]]:
        """Every (task, render) to start now, one at a time: the farm starts each before
        asking for the next, so each pick sees the previous ones."""
        farm = self.farm
        ignoring = farm.jobs_ignoring_states > 0
        now = farm.clock.seconds()  # the time of every pick of this solve
        if self.capacity_waits or self.reserved:
            self.reserve(now)
        # Taken once a solve: blocks finishing meanwhile only make it grow, and work added
        # meanwhile (the system job's tasks) asks for another solve.
        smallest = farm.smallest_block_capacity()
        roomy, tight = self._roomy, self._tight
        # Users are sorted at the first pick, and again only if work came during the solve (a
        # subscriber added a task: a start does not move work_generation).
        users: list[tuple[float, float, int, User]] | None = None
        sorted_at = farm.work_generation
        users_by_need = farm.settings.users_solving == "need"
        for render in self.renders_to_visit(smallest):
            if render.solved_empty_at == farm.work_generation:
                continue
            if not ignoring and (render.paused or render.NIMBY):
                if render.has_room():
                    roomy[render.id] = render
                continue  # no job may use it: not worth a pick
            fits = True
            while room := render.has_room():
                if render.capacity - render.capacity_used < smallest:
                    fits = False
                    break  # nothing unfinished fits in what is left
                if users is None or sorted_at != farm.work_generation:  # (work came during this solve)
                    users, sorted_at = self.users_in_order(), farm.work_generation
                task = self.pick(render, users, now)
                if task is None:
                    render.solved_empty_at = farm.work_generation
                    break
                yield task, render
                if users_by_need:  # the user of the pick started a task: its need fell
                    self._user_started(users)
            tight.pop(render.id, None)
            if not room:
                roomy.pop(render.id, None)
            elif fits:
                roomy[render.id] = render
            else:
                roomy.pop(render.id, None)
                tight[render.id] = render
                self._tight_smallest = max(self._tight_smallest, smallest)

    def pick(self, render: Render, users: list[tuple[float, float, int, User]], now: float) -> Task | None:
        """The task ``render`` runs next: of the first user in ``users`` (`users_in_order`) whose
        first job in order has a block that fits."""
        restricted = render.nimby or render.NIMBY or render.paused
        branches_ordering = self.farm.trees.branches_ordering
        for place, (_, _, _, user) in enumerate(users):
            self._picked = place
            jobs = user.ready_jobs
            if not jobs or self.user_refuses(user, render):
                continue
            if branches_ordering or user.jobs_solving == "need":
                jobs = self.jobs_in_order(user)
            for job in jobs:
                if self.job_waits(job, now) or self.job_refuses(job, render):
                    continue
                # The branch and pools checks, guarded by what makes them apply (a call each saved).
                branch = job.branch
                if branch is not None and branch.guarded and (
                        self.branch_waits(job) or self.branch_refuses(job, render)):
                    continue
                if job.spec.pools and self.job_pools_refuse(job, render):
                    continue
                if restricted and self.render_state_refuses(job, render):
                    continue
                for block in job.blocks:
                    if self.block_waits(block):
                        continue
                    why = self.block_refuses(block, render, now) or self.pool_refuses(block, render)
                    if why is not None:
                        if why is Why.BUSY and block not in self.capacity_waits:
                            self._note_capacity_wait(block, render, now)
                        continue
                    if block.tasks_depend_on or block.host_errors or block.spec.multihost_min:
                        task = self.take_task(block, render, now)
                    else:
                        task = block.pop_ready()  # (`take_task`'s fast path, without its call)
                    if task is not None:
                        if self.capacity_waits and self.reserved.get(render.id) is not block:
                            self.capacity_waits.pop(block, None)  # it gets work: not starving
                        return task
        return None

    def users_in_order(self) -> list[tuple[float, float, int, User]]:
        """Users with ready jobs, the neediest (or by priority) first, each with its sort key;
        equal keys keep the farm's order of users. Sorted once a solve: each start moves only
        its user (`_user_started`), so the order stays what sorting before each pick gives."""
        keyed = [(self._user_key(u), u.time_registered, i, u)
                 for i, u in enumerate(self.farm.users.values()) if u.ready_jobs]
        keyed.sort()
        return keyed

    def _user_key(self, user: User) -> float:
        settings = self.farm.settings
        if settings.users_solving != "need":
            return -user.priority
        return -_need(user.priority, user.running_capacity if settings.solve_by_capacity else user.running)

    def _user_started(self, users: list[tuple[float, float, int, User]]) -> None:
        """The user of the last pick (``users[self._picked]``) started a task: its need fell,
        so it moves back among ``users`` (users ordered by need only)."""
        _, registered, i, user = users.pop(self._picked)
        bisect.insort(users, (self._user_key(user), registered, i, user))

    def renders_to_visit(self, smallest: int = 0) -> list[Render]:
        """The renders a pick may give work to, in order. Every render when the renders or
        pools changed (and every VISIT_ALL_EVERY seconds); otherwise those marked since the
        last solve (`FarmView.renders_to_visit`: room freed, registered, changed) and, when work
        may have come, those left with room (and those too tight for the smallest block, once
        a smaller one came). Any other render is full: a visit would end at
        once, so a busy farm's solve costs what changed, not how many renders it has."""
        farm = self.farm
        marked = farm.renders_to_visit
        now = farm.clock.seconds()
        seen = (farm.trees.generation, len(farm.renders))
        generation = farm.work_generation
        if seen != self._visited_all or now >= self._visit_all_at:
            self._visited_all, self._visit_all_at = seen, now + VISIT_ALL_EVERY
            self._visited_generation = generation
            marked.clear()
            renders = farm.renders
            for kept in (self._roomy, self._tight):
                for gone in [i for i in kept if i not in renders]:
                    del kept[gone]
            return self.renders_in_order()
        ids = marked
        if generation != self._visited_generation:
            self._visited_generation = generation
            ids = marked | self._roomy.keys()
            if smallest < self._tight_smallest:  # a smaller block came: it may fit in them
                self._tight_smallest = 0
                ids |= self._tight.keys()
        if not ids:
            return []
        renders = farm.renders
        present = [i for i in ids if i in renders]
        marked.clear()
        if len(present) > 1:
            present.sort(key=self._render_places().__getitem__)  # (a C key: no Python call per render)
        return [renders[i] for i in present]

    def _render_places(self) -> dict[int, int]:
        renders = self.farm.renders
        key = (self.farm.trees.generation, len(renders), next(reversed(renders), 0))
        if self._places is None or self._places[0] != key:
            self._places = (key, {render.id: i for i, render in enumerate(self.renders_in_order())})
        return self._places[1]

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
        if block.spec.multihost_min:
            gathering = self.multihost_task(block)
            if gathering is not None:
                return None if self.task_refuses(gathering, render, now) else gathering
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
        # The checks run on every pick: written so that what is unset costs no call or lookup.
        per_host = user.max_running_tasks_per_host
        if per_host >= 0 and render.running_of_user(user.name) >= per_host:
            return Why.USER_HOST_LIMIT
        if (user.hosts_mask is not None or user.hosts_mask_exclude is not None) and _mask_refuses(
                render.name, user.hosts_mask, user.hosts_mask_exclude):
            return Why.USER_MASK
        return None

    def job_waits(self, job: Job, now: float) -> Why | None:
        """Render-independent reasons a job does not run."""
        if job.paused:
            return Why.PAUSED
        spec = job.spec
        if spec.time_wait > now:
            return Why.TIME_WAIT
        if (spec.depend_mask or spec.depend_mask_global) and self.job_depends_on(job):
            return Why.JOB_DEPENDS
        if job.commands_pre_pending:
            return Why.COMMANDS_PRE
        limit = spec.max_running_tasks  # (_limit_reached written out: every pick looks)
        if limit >= 0 and job.counts.get(_RUN, 0) >= limit:
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
        spec = job.spec
        per_host = spec.max_running_tasks_per_host
        if per_host >= 0 and render.running_of_job(job) >= per_host:
            return Why.JOB_HOST_LIMIT
        if (job.hosts_mask is not None or job.hosts_mask_exclude is not None) and _mask_refuses(
                render.name, job.hosts_mask, job.hosts_mask_exclude):
            return Why.JOB_MASK
        if spec.need_os or spec.need_properties:
            return self.job_needs_refuse(job, render)
        return None

    def job_needs_refuse(self, job: Job, render: Render) -> Why | None:
        """Afanasy's job needs: need_os against the render's OS words, need_properties
        against its properties (any word of the need found in them)."""
        if not words_found(job.spec.need_os_words, render.os):
            return Why.JOB_NEED_OS
        if not words_found(job.spec.need_properties_words, render.properties):
            return Why.JOB_NEED_PROPERTIES
        return None

    def needs_refuse(self, spec: BlockSpec, render: Render) -> Why | None:
        """Afanasy's block needs: each set need is at most what the render has (free memory
        and disk as last reported; a value the render did not report refuses)."""
        for key, need in spec.needs:
            why, attribute, _ = NEEDS[key]
            have = getattr(render, attribute)
            if have is None or have < need:
                return why
        if spec.need_properties and not words_found(spec.need_properties_words, render.properties):
            return Why.NEED_PROPERTIES
        return None

    # --- no starvation by capacity --------------------------------------------------------

    def _note_capacity_wait(self, block: Block, render: Render, now: float) -> None:
        """A block refused on a render with room because its free capacity is too small."""
        if self.farm.settings.capacity_reserve_after <= 0:
            return
        capacity = block.spec.capacity_min if block.spec.flags else block.spec.capacity
        if render.capacity_used + capacity > render.capacity:
            self.capacity_waits[block] = now

    def reservation_refuses(self, block: Block, render: Render) -> Why | None:
        kept_for = self.reserved.get(render.id)
        if kept_for is not None and kept_for is not block:
            return Why.RESERVED
        return None

    def reserve(self, now: float) -> None:
        """The reservation policy (doc/scheduling.md): once a block has waited
        ``capacity_reserve_after`` seconds for free capacity, the highest-priority such block
        gets ``capacity_reserve_renders`` renders kept for it — those that could run it but
        for their free capacity, the emptiest first: they take no other task until it runs."""
        settings = self.farm.settings
        after = settings.capacity_reserve_after
        jobs = self.farm.jobs
        for block in list(self.capacity_waits):
            job = block.job
            if (after <= 0 or jobs.get(job.id) is not job or not block.counts[TaskState.RDY]
                    or self.job_waits(job, now) or self.block_waits(block)):
                del self.capacity_waits[block]
        starving = [b for b, since in self.capacity_waits.items() if now - since >= after]
        target = min(starving, key=lambda b: (-b.job.priority, self.capacity_waits[b]), default=None)
        renders = self.farm.renders
        for render_id, kept_for in list(self.reserved.items()):
            render = renders.get(render_id)
            if render is None or kept_for is not target or not self._reservable(target, render, now):
                del self.reserved[render_id]
                if render is not None:
                    render.solved_empty_at = -1  # free for other work again
                    self.farm.renders_to_visit.add(render_id)
        self.reserve_target = target
        if target is None:
            return
        wanted = settings.capacity_reserve_renders - len(self.reserved)
        if wanted <= 0:
            return
        free = [(render.capacity - render.capacity_used, render.id, render) for render in renders.values()
                if render.id not in self.reserved and self._reservable(target, render, now)]
        free.sort(key=lambda item: (-item[0], item[1]))
        for _, _, render in free[:wanted]:
            self.reserved[render.id] = target
            render.solved_empty_at = -1
            self.farm.renders_to_visit.add(render.id)

    def _reservable(self, block: Block, render: Render, now: float) -> bool:
        """The render could run the block but for its free capacity (or runs it now)."""
        if not render.online or not render.usable():
            return False
        job = block.job
        user = self.farm.users[job.user_name]
        why = (self.render_state_refuses(job, render) or self.user_refuses(user, render)
               or self.job_refuses(job, render) or self.block_refuses(block, render, now))
        return why is None or why is Why.BUSY

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
        counts = block.counts
        if not counts.get(_RDY):
            return Why.NO_READY
        if block.depends_on and any(not b.finished for b in block.depends_on):
            return Why.BLOCK_DEPENDS
        spec = block.spec
        limit = spec.max_running_tasks
        if limit >= 0 and counts.get(_RUN, 0) >= limit:
            return Why.BLOCK_LIMIT
        tickets = spec.tickets
        if not tickets:
            return None
        for name, count in tickets.items():
            limit = self.farm.settings.tickets.get(name)
            if limit is not None and self.farm.tickets_used[name] + count > limit:
                return Why.TICKETS
        return None

    def block_refuses(self, block: Block, render: Render, now: float) -> Why | None:
        spec = block.spec
        service = spec.service  # (`render.allows` written out: every pick looks)
        if service in render.services_disabled or (render.services and service not in render.services):
            return Why.SERVICE
        capacity = spec.capacity_min if spec.flags else spec.capacity
        if capacity > render.capacity:
            return Why.TOO_SMALL
        if spec.needs or spec.need_properties:
            why = self.needs_refuse(spec, render)
            if why is not None:
                return why
        if self.reserved:
            why = self.reservation_refuses(block, render)
            if why is not None:
                return why
        if render.capacity_used + capacity > render.capacity or (
                render.max_tasks > 0 and len(render.tasks) + len(render.multihost) >= render.max_tasks):
            return Why.BUSY
        per_host = spec.max_running_tasks_per_host
        if per_host >= 0 and render.running_of_block(block) >= per_host:
            return Why.BLOCK_HOST_LIMIT
        if (block.hosts_mask is not None or block.hosts_mask_exclude is not None) and _mask_refuses(
                render.name, block.hosts_mask, block.hosts_mask_exclude):
            return Why.BLOCK_MASK
        if spec.tickets:
            per_host = self.farm.settings.tickets_per_host
            for name, count in spec.tickets.items():
                limit = per_host.get(name)
                if limit is not None and render.tickets_used[name] + count > limit:
                    return Why.HOST_TICKETS
        errors = block.host_errors.get(render.name) if block.host_errors else None
        if errors is not None and self._avoids(block, errors, "errors_avoid_host", now):
            return Why.AVOIDED
        if spec.multihost_min and self.multihost_refuses(block, render):
            return Why.MULTIHOST_HOST
        return None

    def multihost_refuses(self, block: Block, render: Render) -> Why | None:
        """A multi-host block's task wants distinct hosts: a render serving one of its tasks
        (primary, captured or secondary) takes no other."""
        return Why.MULTIHOST_HOST if render.running_of_block(block) else None

    def multihost_task(self, block: Block) -> Task | None:
        """The block's task that gathers hosts: it takes every render that fits before another
        task of the block starts gathering (two half-gathered tasks would wait for each other)."""
        return self.farm.multihost_gathering.get((block.job.id, block.number))

    def multihost_waiting(self, block: Block) -> str | None:
        """"multi-host task gathers hosts: task 3 has 2 of multihost_min 3 (max 4)", or None."""
        task = self.multihost_task(block)
        if task is None:
            return None
        spec, hosts = block.spec, len(self.farm.multihost[task.key].hosts)
        text = (f"{Why.MULTIHOST_GATHERING}: task {task.number} has {hosts} of multihost_min "
                f"{spec.multihost_min} (max {spec.multihost_max})")
        if hosts >= spec.multihost_min:
            text += f", starts when no host came for multihost_max_wait {spec.multihost_max_wait} s"
        return text

    def pool_refuses(self, block: Block, render: Render) -> Why | None:
        """The render's pool (and the pools above it): paused, services, max tasks per
        host, max running tasks, host and pool tickets."""
        pool = render.pool
        if pool is None or not self.farm.trees.pools_active:
            return None
        if not pool.is_ready:
            return Why.POOL_OFF
        spec = block.spec
        allowed = pool.service_answers.get(spec.service)  # (`pool.allows`: no call once answered)
        if allowed is None:
            allowed = pool.allows(spec.service)
        if not allowed:
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
            gathering = self.multihost_waiting(block) if block.spec.multihost_min else None
            if gathering is not None:
                entry["reasons"].append(gathering)
            if blocked is None and waits is None:
                refusals: Counter[str] = Counter()
                for render in renders:
                    why = self._refusal(user, job, block, render, now)
                    if why is None:
                        entry["can_run_on"].append(render.name)
                    elif why is Why.RESERVED:
                        kept_for = self.reserved[render.id]
                        refusals[f"{why}: job {kept_for.job.id} block {kept_for.number} {kept_for.name}"] += 1
                    elif why in _POOL_WHYS:
                        refusals[f"{why} ({render.pool.path})"] += 1
                    elif why is Why.BRANCH_HOST_LIMIT:
                        refusals[f"{why} ({job.branch.path})"] += 1
                    else:
                        refusals[str(why)] += 1
                entry["renders"] = dict(refusals)
                if not renders:
                    entry["reasons"].append("no renders are registered")
                entry["reasons"] += self._needs_text(job, block, refusals, renders)
                entry["reasons"] += self._reservation_text(block, now)
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

    def _needs_text(self, job: Job, block: Block, refusals: Counter[str], renders: list[Render]) -> list[str]:
        """For each need that refused a render: the need and the best value among the online
        renders (the one closest to meeting it)."""
        online = [r for r in renders if r.online]
        lines = []
        for key, need in block.spec.needs:
            why, attribute, unit = NEEDS[key]
            if not refusals.get(str(why)):
                continue
            values = [(v, r.name) for r in online if (v := getattr(r, attribute)) is not None]
            best = max(values, default=None)
            have = f"the best render, {best[1]}, has {best[0]:g} {unit}" if best else "no render reported it"
            lines.append(f"{key} {need} {unit}: {have}")
        for why, pattern, attribute in (
                (Why.NEED_PROPERTIES, block.spec.need_properties, "properties"),
                (Why.JOB_NEED_OS, job.spec.need_os, "os"),
                (Why.JOB_NEED_PROPERTIES, job.spec.need_properties, "properties")):
            if refusals.get(str(why)):
                seen = sorted({getattr(r, attribute) for r in online}) or ["none online"]
                name = "need_os" if attribute == "os" else "need_properties"
                lines.append(f"{name} {pattern!r}: renders have " + "; ".join(repr(v) for v in seen[:5]))
        return lines

    def _reservation_text(self, block: Block, now: float) -> list[str]:
        since = self.capacity_waits.get(block)
        if since is None:
            return []
        waited = now - since
        if block is self.reserve_target:
            names = sorted(self.farm.renders[i].name for i in self.reserved if i in self.farm.renders)
            return [f"waits for free capacity ({waited:.0f} s): renders kept for it, taking no other "
                    f"task until it runs: {', '.join(names) or 'none can run it yet'}"]
        after = self.farm.settings.capacity_reserve_after
        if waited < after:
            return [f"waits for free capacity ({waited:.0f} s); renders are kept for it after {after:g} s"]
        return [f"waits for free capacity ({waited:.0f} s); renders are kept for a block of higher "
                "priority first"]

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
