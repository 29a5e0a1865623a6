"""Jobs listed a page at a time: sorted by any column, filtered, at studio scale.

A web page or an ``act jobs list`` with a sort, filters and a page must not look at every
job (nor every task) each time: at 10,000 jobs, building every job's record costs about a
quarter of a second of the server's only thread. :class:`JobListing` keeps one
:class:`JobRow` per job (its record, made once per change) and, per sort column asked for
so far, the jobs in that order. It follows the farm's bus and only marks jobs dirty
there; a query first brings the dirty rows up to date (their sorted positions moved by
bisection), then walks one order, counting what matches and keeping the page. It exists
from the first query on (a farm nobody lists pays nothing).

A job's shown state can change without an event about it (a time_wait passing, a job it
depends on finishing): jobs that can wait that way are looked at again when a job came,
went, finished or came back (the farm's ``jobs_generation``) or a time_wait passed.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from farmnet import errors
from farmnet.messages import JobRecord
from farmnet.model import events as ev
from farmnet.model.data import Job, TaskState
from farmnet.model.spec import JobSpec

if TYPE_CHECKING:
    from farmnet.model.farm import Farm

__all__ = ["FACETS", "JOB_SORTS", "JobListing", "JobQuery", "JobRow"]


@attrs.define(eq=False)
class JobRow:
    """What a listing shows of a job, as of its last change."""

    record: JobRecord
    #: The job's description as of this row (a facet may read any of its keys).
    spec: JobSpec
    project: str
    department: str
    #: The job's name in lower case (the text search).
    folded: str
    #: Percent done, counting running tasks' own progress (finished tasks count whole).
    progress: int

    @property
    def id(self) -> int:
        return self.record.id


def _count(row: JobRow, *states: str) -> int:
    return sum(row.record.counts.get(s, 0) for s in states)


#: Sort columns: name → the row's key (the job id breaks ties, so every key is unique).
JOB_SORTS: Mapping[str, Callable[[JobRow], Any]] = {
    "id": lambda r: r.record.id,
    "name": lambda r: (r.folded, r.record.id),
    "user": lambda r: (r.record.user_name, r.record.id),
    "state": lambda r: (r.record.state, r.record.id),
    "progress": lambda r: (r.progress, r.record.id),
    "done": lambda r: (_count(r, "DON", "SKP"), r.record.id),
    "running": lambda r: (_count(r, "RUN", "WRC"), r.record.id),
    "errors": lambda r: (_count(r, "ERR"), r.record.id),
    "tasks": lambda r: (r.record.tasks, r.record.id),
    "priority": lambda r: (r.record.priority, r.record.id),
    "created": lambda r: (r.record.time_creation, r.record.id),
    "project": lambda r: (r.project, r.record.id),
    "department": lambda r: (r.department, r.record.id),
}

#: Filters by one of a row's values (the value shown, compared exactly; one or a list).
#: A new grouping of jobs (a pool, a branch) is one more entry here, e.g.
#: ``"pool": lambda r: r.spec.pool`` (and a select on the jobs page, listpages.py).
FACETS: Mapping[str, Callable[[JobRow], Any]] = {
    "id": lambda r: r.record.id,
    "user": lambda r: r.record.user_name,
    "state": lambda r: r.record.state,
    "name": lambda r: r.record.name,
    "project": lambda r: r.project,
    "department": lambda r: r.department,
    "branch": lambda r: r.record.branch,
}


@attrs.frozen
class JobQuery:
    """A page of jobs: ``filters`` (FACETS name → accepted values), ``text`` (a part of
    the name, any case), ``sort`` (a JOB_SORTS name), ``descending``, ``offset``, ``limit``."""

    filters: Mapping[str, frozenset[Any]] = attrs.field(factory=dict)
    text: str = ""
    sort: str = "id"
    descending: bool = True
    offset: int = 0
    limit: int = 50
    #: Shown states left out (the farm page's unfinished jobs: DON).
    without_states: frozenset[str] = frozenset()

    def __attrs_post_init__(self) -> None:
        if self.sort not in JOB_SORTS:
            raise errors.InvalidAction(f"sort: one of {', '.join(JOB_SORTS)}; got {self.sort!r}")
        unknown = set(self.filters) - set(FACETS)
        if unknown:
            raise errors.InvalidAction(f"filters: unknown {', '.join(sorted(unknown))}; "
                                       f"known: {', '.join(FACETS)}, q")


def _waits_on_others(job: Job) -> bool:
    """The job's shown state may change without an event about the job itself."""
    spec = job.spec
    return bool(spec.depend_mask or spec.depend_mask_global or spec.time_wait or job.commands_pre_pending)


def _same(key: int) -> int:
    return key


def _last(key: tuple[Any, ...]) -> int:
    return key[-1]


class JobListing:
    """Rows and sorted orders of a farm's jobs, kept up to date lazily (see the module)."""

    def __init__(self, farm: Farm) -> None:
        self.farm = farm
        self.rows: dict[int, JobRow] = {}
        #: Running tasks' progress per job (task key → percent): the live progress.
        self.running: dict[int, dict[tuple[int, int, int], int]] = {}
        self._dirty: set[int] = set(farm.jobs)
        self._waiting: set[int] = set()
        self._generation = -1
        self._wake = float("-inf")
        self._orders: dict[str, list[Any]] = {}
        self._keys: dict[str, dict[int, Any]] = {}
        #: Jobs per (project, department): the projects view and the filters' choices.
        self.groups: Counter[tuple[str, str]] = Counter()
        for render in farm.renders.values():
            for task in render.tasks.values():
                self._task(task)
        self.close = farm.bus.subscribe_all({
            (ev.JobSubmitted, ev.JobChanged, ev.JobDeleted): self._job_event,
            ev.TaskStateChanged: self._task_event,
            ev.TaskProgressed: self._task_event,
        })

    # --- following the farm ------------------------------------------------------------

    def _job_event(self, event: Any) -> None:
        self._dirty.add(event.job.id)

    def _task_event(self, event: Any) -> None:
        self._task(event.task)

    def _task(self, task: Any) -> None:
        job_id = task.block.job.id
        self._dirty.add(job_id)
        if task.state in (TaskState.RUN, TaskState.WRC):
            self.running.setdefault(job_id, {})[task.key] = task.progress
        else:
            running = self.running.get(job_id)
            if running is not None:
                running.pop(task.key, None)
                if not running:
                    del self.running[job_id]

    def _others_moved(self) -> bool:
        """Whether jobs waiting on others may show another state now: a job came, went,
        finished or came back (``jobs_generation``), or a time_wait passed."""
        farm = self.farm
        now = farm.clock.seconds()
        moved = farm.jobs_generation != self._generation or now >= self._wake
        if moved:
            self._generation = farm.jobs_generation
            jobs = farm.jobs
            waits = [t for t in (jobs[i].spec.time_wait for i in self._waiting if i in jobs) if t > now]
            self._wake = min(waits, default=float("inf"))
        return moved

    def refresh(self) -> None:
        """Bring the dirty rows (and, when others moved, the jobs that wait on them) up to date."""
        dirty, self._dirty = self._dirty, set()
        if self._waiting and self._others_moved():
            dirty |= self._waiting
        jobs = self.farm.jobs
        if len(self.rows) + len(dirty - self.rows.keys()) != len(jobs):
            # Jobs that came or went without an event (a restore publishes none).
            dirty |= jobs.keys() ^ self.rows.keys()
        for job_id in dirty:
            job = jobs.get(job_id)
            if job is None:
                self._drop(job_id)
                continue
            row = self.make_row(job)
            old_row = self.rows.get(job_id)
            if old_row is not None:
                self._ungroup(old_row)
            self.groups[(row.project, row.department)] += 1
            self.rows[job_id] = row
            if _waits_on_others(job):
                self._waiting.add(job_id)
                if job.spec.time_wait > self.farm.clock.seconds():
                    self._wake = min(self._wake, job.spec.time_wait)
            else:
                self._waiting.discard(job_id)
            for column, order in self._orders.items():
                keys = self._keys[column]
                new = JOB_SORTS[column](row)
                old = keys.get(job_id)
                if old == new:
                    continue
                if old is not None:
                    del order[bisect.bisect_left(order, old)]
                bisect.insort(order, new)
                keys[job_id] = new

    def _ungroup(self, row: JobRow) -> None:
        group = (row.project, row.department)
        self.groups[group] -= 1
        if self.groups[group] <= 0:
            del self.groups[group]

    def _drop(self, job_id: int) -> None:
        row = self.rows.pop(job_id, None)
        if row is not None:
            self._ungroup(row)
        self.running.pop(job_id, None)
        self._waiting.discard(job_id)
        for column, order in self._orders.items():
            old = self._keys[column].pop(job_id, None)
            if old is not None:
                del order[bisect.bisect_left(order, old)]

    def make_row(self, job: Job) -> JobRow:
        record = self.farm.job_record(job)
        total = record.tasks
        finished = record.counts.get("DON", 0) + record.counts.get("SKP", 0)
        running = sum(self.running.get(job.id, {}).values())
        live = min(100, (finished * 100 + running) // total) if total else 100
        spec = job.spec
        return JobRow(record, spec, spec.project, spec.department, spec.name.lower(), live)

    def _order(self, column: str) -> list[Any]:
        order = self._orders.get(column)
        if order is None:
            key = JOB_SORTS[column]
            keys = {job_id: key(row) for job_id, row in self.rows.items()}
            self._keys[column] = keys
            order = self._orders[column] = sorted(keys.values())
        return order

    # --- asking ------------------------------------------------------------------------

    def query(self, q: JobQuery) -> tuple[list[JobRow], int]:
        """The page of rows ``q`` asks for and how many rows match in all."""
        self.refresh()
        rows = self.rows
        tests: list[Callable[[JobRow], bool]] = [
            (lambda r, f=FACETS[name], a=accepted: f(r) in a) for name, accepted in q.filters.items()]
        if q.without_states:
            tests.append(lambda r: r.record.state not in q.without_states)
        if q.text:
            text = q.text.lower()
            tests.append(lambda r: text in r.folded)
        candidates = self._candidates(q)
        if candidates is not None:  # few: sort just these
            key = JOB_SORTS[q.sort]
            found = [r for r in (rows[i] for i in candidates if i in rows) if all(t(r) for t in tests)]
            found.sort(key=key, reverse=q.descending)
            return found[q.offset:q.offset + q.limit], len(found)
        order = self._order(q.sort)
        ident = self._ident(q.sort)
        if not tests:
            total, start = len(order), max(0, q.offset)
            if q.descending:
                keys = order[max(0, total - start - q.limit):max(0, total - start)][::-1]
            else:
                keys = order[start:start + q.limit]
            return [rows[ident(k)] for k in keys], total
        if len(tests) == 1:
            test = tests[0]
        else:
            def test(row: JobRow) -> bool:
                return all(t(row) for t in tests)
        walk: Iterable[Any] = reversed(order) if q.descending else order
        found = [row for row in (rows[ident(key)] for key in walk) if test(row)]
        return found[q.offset:q.offset + q.limit], len(found)

    def _candidates(self, q: JobQuery) -> set[int] | None:
        """Job ids a filter narrows the search to at once (a user's jobs, given ids)."""
        found: set[int] | None = None
        if "id" in q.filters:
            found = {i for i in q.filters["id"] if isinstance(i, int)}
        if "user" in q.filters:
            users = self.farm.users
            mine = {i for name in q.filters["user"] if name in users for i in users[name].jobs}
            found = mine if found is None else found & mine
        return found

    @staticmethod
    def _ident(column: str) -> Callable[[Any], int]:
        """The job id in a sort key of ``column``."""
        return _same if column == "id" else _last

    def projects(self) -> list[str]:
        """Every project named by a job, sorted."""
        self.refresh()
        return sorted({p for p, _ in self.groups} - {""})

    def departments(self) -> list[str]:
        self.refresh()
        return sorted({d for _, d in self.groups} - {""})
