"""A task's life: submitted, handed to a render, reported, retried or failed, timed out,
lost with its render and re-attached, and the render's side of it (register, seen, lost).

Every state change goes through `FarmState._set_state`; timers (reconnect, time limits)
run on the farm's clock; orders for a render are queued with `_order` and announced on
the bus, never sent from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.logger import Logger

from farmnet import errors
from farmnet.messages import HostFacts, HostResources, KillOrder, StartOrder, TaskRef
from farmnet.model.data import ACTIVE, FINISHED, Block, Job, Render, Task, TaskKey, TaskRun, TaskState, User
from farmnet.model.events import (
    JobSubmitted,
    RenderLost,
    RenderRegistered,
    RenderSick,
    RunEnded,
    TaskProgressed,
    TasksRenumbered,
    TaskStateChanged,
    UserChanged,
)
from farmnet.model.spec import (
    FLAG_CHECK_RENDERED_FILES,
    FLAG_SKIP_EXISTING_FILES,
    BlockSpec,
    JobSpec,
    TaskSpec,
)
from farmnet.model.state import FarmState

log = Logger()

#: A state's text for a run record (an enum's ``.value`` is a property, read on every finish).
_STATE_TEXT = {state: state.value for state in TaskState}


def _start_extras(spec: BlockSpec, task: Task, coeff: int) -> dict[str, Any]:
    """A start order's keys for variable capacity, parser_coeff and file checks."""
    checks = spec.flags & (FLAG_CHECK_RENDERED_FILES | FLAG_SKIP_EXISTING_FILES)
    return {"capacity_coeff": coeff, "parser_coeff": spec.parser_coeff,
            "files": tuple(spec.task_files(task.number)) if checks else (),
            "file_size_min": spec.file_size_min, "file_size_max": spec.file_size_max,
            "check_rendered_files": bool(spec.flags & FLAG_CHECK_RENDERED_FILES),
            "skip_existing_files": bool(spec.flags & FLAG_SKIP_EXISTING_FILES)}


class TaskLife(FarmState):
    def submit(self, spec: JobSpec, user: str, *, names_verified: bool = True) -> Job:
        """Add a job of ``spec.user_name`` (else ``user``). When ``names_verified`` (the farm
        checks passwords) only admins may submit for another user; without passwords the
        connecting name proves nothing, so the job's user is taken, as Afanasy does."""
        owner = spec.user_name or user
        if owner != user and names_verified and not self.is_admin(user):
            raise errors.PermissionDenied(f"user {user!r} may not submit jobs as {owner!r}")
        if spec.tasks_count > self.settings.max_tasks_per_job:
            raise errors.JobSpecError(
                f"job.blocks: {spec.tasks_count} tasks is more than this farm's limit of "
                f"{self.settings.max_tasks_per_job}")
        now = self.clock.seconds()
        self._serial += 1
        # af.py sends the client's time; a clock ahead of the server's is not believed.
        created = min(spec.time_creation, now) if spec.time_creation > 0 else now
        job = self._build_job(self._next_job_id, spec, owner, spec.priority, created, self._serial,
                              spec.offline)
        self._next_job_id += 1
        self._place_job(job)  # type: ignore[attr-defined]  # PoolActions, in the Farm
        for block in job.blocks:
            self._count_capacity(block.spec.capacity, +1)
        u = self.users.get(owner)
        if u is None:
            u = self.users[owner] = User(owner, now)
            log.info("user {user} created by their first job", user=owner)
            self.bus.publish(UserChanged(u))
        u.jobs.add(job.id)
        self._ready_jobs_add(job)
        self.jobs_generation += 1
        self.work_generation += 1
        self._schedule_time_wait(job)
        self._schedule_time_life(job)
        log.info("job {job_id} {job_name} submitted by {user}: {tasks} tasks", job_id=job.id,
                 job_name=job.name, user=owner, tasks=job.tasks_total)
        self.bus.publish(JobSubmitted(job))
        self.request_solve()
        return job

    def hold_for_commands_pre(self, job: Job, count: int) -> None:
        """The system job runs ``count`` pre commands for ``job``: it waits for them."""
        job.commands_pre_pending += count
        self.work_generation += 1
        self._job_changed(job)

    def command_pre_ended(self, job_id: int) -> None:
        """One of a job's pre commands ended (done or failed: Afanasy ignores its result)."""
        job = self.jobs.get(job_id)
        if job is None or job.commands_pre_pending <= 0:
            return
        job.commands_pre_pending -= 1
        if not job.commands_pre_pending:
            self.work_generation += 1
            self._job_changed(job)
            self.request_solve()

    def start_task(self, task: Task, render: Render) -> None:
        """Hand a ready task to a render (the scheduler decided); a multi-host task captures
        the render as one of its hosts instead (farmnet/model/multihost.py)."""
        if task.block.spec.multihost_min:
            self._multihost_capture(task, render)  # type: ignore[attr-defined]  # MultiHost, mixed in
            return
        self._begin_run(task, render)
        self._order(render, self._start_order(task))

    def _begin_run(self, task: Task, render: Render, host: str = "") -> None:
        """A new run of ``task`` on ``render``: counted, RUN, time limits armed (no order yet)."""
        job = task.block.job
        now = self.clock.seconds()
        task.starts_count += 1
        task.progress = 0
        task.warning, task.frame, task.percent_frame = "", 0, 0
        task.host = host or render.name
        task.time_started, task.time_done, task.time_progress = now, 0.0, now
        if not job.time_started:
            job.time_started = now
        spec = task.block.spec
        coeff = spec.capacity_coeff(render.capacity - render.capacity_used) if spec.flags else 0
        task.capacity = spec.capacity * coeff if coeff else 0
        self._occupy(render, task)
        self._set_state(task, TaskState.RUN)
        if spec.task_max_run_time > 0 or spec.task_progress_change_timeout > 0:
            self._arm_time_limits(task)

    def _start_order(self, task: Task) -> StartOrder:
        """The order that starts the task's current run."""
        block = task.block
        spec = block.spec
        name, command, frame_start, frame_end = task.texts = spec.task_texts(task.number)
        task_number = str(task.number)
        if spec.tasks:  # Afanasy lays the task's variables over the block's
            env = dict(spec.environment)
            env.update(spec.tasks[task.number].environment)
            env.update(self._start_variables(block))
        else:
            cached = block.start_environment  # (`_start_environment`'s check, without its call)
            if (cached is None or cached[0] is not spec or cached[1] is not block.job.spec
                    or cached[2] != block.job.user_name):
                cached = self._start_environment(block)
            env = cached[3].copy()
        # Set in place: the keys keep the order of `_start_variables`.
        env["AF_TASK_ID"] = env["FARMNET_TASK"] = task_number
        env["FARMNET_TASK_NAME"] = name
        env["FARMNET_RUN"] = str(task.starts_count)
        env["FARMNET_FRAME_START"], env["FARMNET_FRAME_END"] = str(frame_start), str(frame_end)
        # Positional, in StartOrder's order (a keyword call costs a third of the order; one is
        # made on every start); tests/test_solve_trace.py pins every field.
        order = StartOrder(
            block.job.id, block.number, task.number, task.starts_count,  # job_id, block, task, run
            name, command, spec.working_directory, env,  # name, command, working_directory, environment
            spec.service, spec.parser, task.capacity or spec.capacity,  # service, parser, capacity
            frame_start, frame_end, spec.task_max_run_time)  # frame_start, frame_end, max_run_time
        if spec.frames_inc != 1 and not (spec.tasks or spec.dynamic):  # (spec.numeric)
            order.frames_inc = spec.frames_inc
        if spec.flags or spec.parser_coeff != 1:  # (set after: an empty **extras costs every start)
            coeff = task.capacity // spec.capacity if task.capacity else 0  # variable capacity
            if coeff:  # Afanasy's service puts the coefficient in the command
                order.command = command.replace("@AF_CAPACITY@", str(coeff))
                env["FARMNET_CAPACITY_COEFF"] = str(coeff)
            for key, value in _start_extras(spec, task, coeff).items():
                setattr(order, key, value)
        return order

    @staticmethod
    def _start_variables(block: Block) -> dict[str, str]:
        """A start order's farm variables; the task's own are filled in by `_start_order`."""
        job = block.job
        job_id, block_number = str(job.id), str(block.number)
        return {
            "AF_JOB_ID": job_id, "AF_BLOCK_ID": block_number, "AF_TASK_ID": "",
            "FARMNET_JOB_ID": job_id, "FARMNET_JOB_NAME": job.name,
            "FARMNET_BLOCK": block_number, "FARMNET_BLOCK_NAME": block.name,
            "FARMNET_TASK": "", "FARMNET_TASK_NAME": "",
            "FARMNET_USER": job.user_name, "FARMNET_RUN": "",
            "FARMNET_FRAME_START": "", "FARMNET_FRAME_END": "",
        }

    def _start_environment(self, block: Block) -> tuple[object, object, str, dict[str, str]]:
        """The block's environment and the farm variables, kept on the block with the block's
        spec, its job's spec and owner it was made for, until one of them changes
        (`_start_order` checks): a start copies it instead of building it."""
        job = block.job
        env = dict(block.spec.environment)
        env.update(self._start_variables(block))
        cached = block.start_environment = (block.spec, job.spec, job.user_name, env)
        return cached

    def _arm_time_limits(self, task: Task) -> None:
        """task_max_run_time and task_progress_change_timeout: the server kills, the run
        is an error."""
        spec = task.block.spec
        now = self.clock.seconds()
        deadlines = []
        if spec.task_max_run_time > 0:
            deadlines.append(task.time_started + spec.task_max_run_time)
        if spec.task_progress_change_timeout > 0:
            deadlines.append(task.time_progress + spec.task_progress_change_timeout)
        if deadlines:
            self._timer("limits", id(task), min(deadlines) - now, self._check_time_limits, task,
                        task.starts_count)

    def _check_time_limits(self, task: Task, run: int) -> None:
        if task.state is not TaskState.RUN or task.starts_count != run:
            return
        spec, now = task.block.spec, self.clock.seconds()
        reason = None
        if spec.task_max_run_time > 0 and now - task.time_started >= spec.task_max_run_time:
            reason = f"task_max_run_time of {spec.task_max_run_time} s exceeded"
        elif (spec.task_progress_change_timeout > 0
              and now - task.time_progress >= spec.task_progress_change_timeout):
            timeout = spec.task_progress_change_timeout
            reason = f"no progress change for task_progress_change_timeout {timeout} s"
        if reason is None:
            self._arm_time_limits(task)
            return
        log.info("task {key} killed: {reason}", key=task.key, reason=reason)
        render = self.renders[task.render_id]
        self._order(render, KillOrder(*task.key, run=run, reason=reason))
        self._release(task)
        task.time_done = now
        self._task_failed(task, render, reason)
        self.bus.publish(RunEnded(self._run_record(task, None, None, reason, None)))
        self.request_solve()

    def _occupy(self, render: Render, task: Task) -> None:
        block = task.block
        job = block.job
        user = self.users[job.user_name]
        capacity = task.capacity or block.spec.capacity
        task.render_id = render.id
        render.tasks[(job.id, block.number, task.number)] = task
        render.capacity_used += capacity
        block.running_capacity += capacity
        user.running += 1
        user.running_capacity += capacity
        tickets = block.spec.tickets
        if tickets:
            for name, count in tickets.items():
                self.tickets_used[name] += count
                render.tickets_used[name] += count
        self.trees.occupy(render, task)

    def _release(self, task: Task, keep_render: bool = False, render: Render | None = None) -> None:
        """Free what a running task held on its render (``render``: the caller has it)."""
        block = task.block
        job = block.job
        user = self.users[job.user_name]
        if self._timers:  # (none armed: no key to build)
            self._cancel_timer("limits", id(task))
        capacity = task.capacity or block.spec.capacity
        if render is None:
            render = self.renders.get(task.render_id)
        if render is not None and render.tasks.pop((job.id, block.number, task.number), None) is not None:
            render.capacity_used -= capacity
            render.solved_empty_at = -1
            self.renders_to_visit.add(render.id)
        tickets = block.spec.tickets
        if tickets:
            if render is not None:
                for name, count in tickets.items():
                    render.tickets_used[name] -= count
            for name, count in tickets.items():
                self.tickets_used[name] -= count
        self.trees.release(render, task)
        block.running_capacity -= capacity
        user.running -= 1
        user.running_capacity -= capacity
        self.work_generation += 1  # limits and tickets freed: blocked work may fit now
        if not keep_render:
            task.render_id = 0

    def current_task(self, render: Render, key: TaskKey, run: int) -> Task | None:
        """The task a report is about, if the report is about its current run."""
        job = self.jobs.get(key[0])  # `task` written out: every finish and output report looks
        if job is None or key[1] < 0 or key[2] < 0:
            return None
        try:
            task = job.blocks[key[1]].tasks[key[2]]
        except IndexError:
            return None
        if task.render_id != render.id or task.starts_count != run or task.state not in ACTIVE:
            return None
        return task

    def task_output(self, render: Render, key: TaskKey, run: int, progress: int | None, *,
                    frame: int | None = None, percent_frame: int | None = None,
                    warning: str | None = None) -> Task | None:
        """A running task reported output; returns the task if the report is current.

        ``frame`` / ``percent_frame``: where its parser reads it is in its frames; ``warning``: a line
        its parser flagged (the task keeps the first of the run, as Afanasy's WRN)."""
        task = self.current_task(render, key, run)
        if task is None:
            return None
        changed = False
        if progress is not None and progress != task.progress:
            task.progress = max(0, min(100, progress))
            task.time_progress = self.clock.seconds()
            changed = True
        if frame is not None and percent_frame is not None:
            where = (max(0, frame), max(0, min(100, percent_frame)))
            changed = changed or where != (task.frame, task.percent_frame)
            task.frame, task.percent_frame = where
        if warning and not task.warning:
            task.warning = warning
            log.info("task {key} on {render}: parser warning: {warning}", key=key, render=render.name,
                     warning=warning)
            changed = True
        if changed:
            self.bus.publish(TaskProgressed(task))
        return task

    def task_finished(self, render: Render, key: TaskKey, run: int, *, exit_code: int | None,
                      signal: int | None, time_started: float, time_done: float,
                      message: str = "", peak_memory_mb: int | None = None,
                      fatal: bool = False) -> Task | None:
        """A task's process ended. A stale or repeated report changes nothing, so a finish
        is counted once. ``fatal``: its parser found a fatal error, so a failure is not retried."""
        task = self.current_task(render, key, run)
        if task is None:
            self._multihost_service_ended(render, key, run, exit_code, signal)  # type: ignore[attr-defined]
            log.debug("stale finish of {key} run {run} from {render}", key=key, run=run,
                      render=render.name)
            return None
        if task.state is TaskState.WRC:  # its render was lost: what the run held is freed already
            self._stop_waiting(task)
            task.render_id = 0
        else:
            self._release(task, render=render)
        task.time_started, task.time_done = time_started, time_done
        min_run = task.block.spec.task_min_run_time
        if exit_code == 0 and signal is None and min_run > 0 and time_done - time_started < min_run:
            message = f"finished in {time_done - time_started:.1f} s, under task_min_run_time {min_run} s"
            exit_code = None
        if exit_code == 0 and signal is None:
            task.progress = 100
            render.errors_in_row = 0
            render.error_jobs_in_row.clear()
            self._set_state(task, TaskState.DON)
        else:
            self._task_failed(task, render, message or f"exit {exit_code} signal {signal}", retry=not fatal)
        self.bus.publish(RunEnded(self._run_record(task, exit_code, signal, message, peak_memory_mb)))
        self.request_solve()
        return task

    def _task_failed(self, task: Task, render: Render, why: str, retry: bool = True) -> None:
        """An error: count it against the task, the block and the host; retry or ERR."""
        block, job = task.block, task.block.job
        now = self.clock.seconds()
        task.errors_count += 1
        if task.host_errors is None:
            task.host_errors = {}
        for table in (block.host_errors, task.host_errors):
            entry = table.setdefault(render.name, [0, now])
            entry[0] += 1
            entry[1] = now
        render.error_history.append((now, job.id, block.number, task.number, job.user_name))
        render.errors_in_row += 1
        render.error_jobs_in_row.add(job.id)
        sick_after = self.settings.sick_errors_count
        if sick_after > 0 and not render.sick and len(render.error_jobs_in_row) >= sick_after:
            render.sick = True
            log.warn("render {render} is SICK: {count} errors in a row from different jobs",
                     render=render.name, count=render.errors_in_row)
            self.bus.publish(RenderSick(render))
        retries = self.setting(block, "errors_retries")
        state = TaskState.RDY if retry and task.errors_count <= retries else TaskState.ERR
        log.info("task {key} failed on {render} ({why}): {state}", key=task.key, render=render.name,
                 why=why, state=state.value)
        self._set_state(task, state)
        if job.state is TaskState.ERR:
            self._job_changed(job)

    def _run_record(self, task: Task, exit_code: int | None, signal: int | None, message: str,
                    peak_memory_mb: int | None) -> TaskRun:
        block = task.block
        job, spec = block.job, block.spec
        texts = task.texts
        if texts is None:
            texts = spec.task_texts(task.number)
        else:
            task.texts = None  # the run is over
        name, command, frame_start, frame_end = texts
        host, hosts = task.host, ()
        if spec.multihost_min:  # "primary: secondary ...", as Afanasy shows a multi-host run
            host, _, others = task.host.partition(": ")
            hosts = tuple(dict.fromkeys([host, *others.split()]))
        # Positional, in TaskRun's order (a keyword call costs a third of the record; one
        # is made on every finish); tests/test_solve_trace.py pins every field.
        return TaskRun(
            job.id, block.number, task.number, task.starts_count,  # job_id, block, task, run
            job.spec.name, spec.name, name, job.user_name,  # job_name, block_name, task_name, user_name
            host, spec.service, task.capacity or spec.capacity, command,  # host, service, capacity, command
            frame_start, frame_end, task.time_started, task.time_done,  # frames, times
            exit_code, signal, _STATE_TEXT[task.state], task.errors_count,  # exit_code, signal, state, errors
            message, peak_memory_mb, hosts)  # message, peak_memory_mb, hosts

    def _stop_task(self, task: Task, reason: str) -> None:
        """Order the render to kill a running task and forget it here."""
        if task.block.spec.multihost_min:
            self._multihost_end(task, reason)  # type: ignore[attr-defined]
        self._stop_waiting(task)
        render = self.renders.get(task.render_id)
        if render is not None and render.online and task.key in render.tasks:
            self._order(render, KillOrder(*task.key, run=task.starts_count, reason=reason))
        if task.state is TaskState.RUN:
            self._release(task)
        task.render_id = 0

    def _restart_task(self, task: Task, reason: str) -> None:
        if task.state in ACTIVE:
            self._stop_task(task, reason)
        task.errors_count = 0
        task.progress = 0
        task.host_errors = None
        self._set_state(task, TaskState.RDY)

    def _skip_task(self, task: Task) -> None:
        if task.state in ACTIVE:
            self._stop_task(task, "skipped")
        self._set_state(task, TaskState.SKP)

    def fail_task(self, task: Task, reason: str) -> None:
        """Make a task an error now, whatever it was doing (the system job's tasklife)."""
        if task.state in FINISHED or task.state is TaskState.ERR:
            return
        log.info("task {key} is an error: {reason}", key=task.key, reason=reason)
        if task.state in ACTIVE:
            self._stop_task(task, reason)
        task.errors_count += 1
        task.time_done = self.clock.seconds()
        self._set_state(task, TaskState.ERR)
        self.request_solve()

    def append_task(self, block: Block, name: str, command: str) -> Task:
        """A new ready task at the end of an explicit block (the system job's way)."""
        if not block.spec.dynamic:
            raise errors.InvalidAction(f"block {block.name!r} does not take appended tasks")
        return self._append_task(block, TaskSpec(name, command))

    def _append_task(self, block: Block, spec: TaskSpec) -> Task:
        was_finished = block.finished
        job = block.job
        block.spec = attrs.evolve(block.spec, tasks=(*block.spec.tasks, spec))
        task = Task(block, len(block.tasks))
        block.tasks.append(task)
        block.counts[TaskState.RDY] += 1
        job.counts[TaskState.RDY] += 1
        if block.rank is None:
            block.push_ready(task)
        else:  # a solving order other than forward: worked out again for the new count
            block.set_order(block.spec.sequential)
        if was_finished:
            self._count_capacity(block.spec.capacity, +1)
        if job.time_done:
            job.time_done = 0.0
            self.jobs_generation += 1
        if job.counts[TaskState.RDY] == 1:
            self._ready_jobs_add(job)
        self.work_generation += 1
        self.bus.publish(TaskStateChanged(task, None))
        self.request_solve()
        return task

    def remove_tasks(self, block: Block, which: Callable[[Task], bool]) -> int:
        """Drop finished tasks from an explicit block that runs nothing (the system job
        deletes its done and failed tasks). Tasks are renumbered, so it waits for idle."""
        if block.counts[TaskState.RUN] or block.counts[TaskState.WRC]:
            return 0
        keep = [t for t in block.tasks if not which(t)]
        removed = len(block.tasks) - len(keep)
        if not removed:
            return 0
        was_finished, job = block.finished, block.job
        for task in block.tasks:
            if which(task):
                block.counts[task.state] -= 1
                job.counts[task.state] -= 1
        block.spec = attrs.evolve(block.spec, tasks=tuple(block.spec.tasks[t.number] for t in keep))
        for number, task in enumerate(keep):
            task.number = number
        block.tasks = keep
        block.set_order(block.spec.sequential)
        if was_finished != block.finished:
            self._count_capacity(block.spec.capacity, -1 if block.finished else +1)
        self.bus.publish(TasksRenumbered(block))
        self._job_changed(job)
        return removed

    def register_render(self, name: str, *, capacity: int, max_tasks: int = 0,
                        services: Iterable[str] = (), services_disabled: Iterable[str] = (),
                        platform: str = "", cpus: int = 0, memory_mb: int = 0, owner: str = "",
                        macs: Iterable[str] = (), running: Iterable[TaskRef] = (),
                        facts: HostFacts | None = None) -> Render:
        """A render (re)connects. Tasks it still runs are re-attached, not re-run; tasks
        it runs that the farm no longer wants there are killed."""
        if capacity <= 0:
            raise errors.InvalidAction(f"render capacity must be positive, got {capacity}")
        now = self.clock.seconds()
        render = self.renders_by_name.get(name)
        new = render is None
        if render is None:
            render = Render(id=self._next_render_id, name=name, capacity=capacity,
                            max_tasks=max_tasks, services=frozenset(services),
                            services_disabled=frozenset(services_disabled))
            self._next_render_id += 1
            self.renders[render.id] = render
            self.renders_by_name[name] = render
        else:
            self._drop_pending_orders(render)
        render.capacity, render.max_tasks = capacity, max_tasks
        render.services, render.services_disabled = frozenset(services), frozenset(services_disabled)
        render.platform, render.cpus, render.memory_mb = platform, cpus, memory_mb
        facts = facts or HostFacts()
        render.os, render.properties, render.power = facts.os, facts.properties, facts.power
        render.cpu_mhz = facts.cpu_mhz
        render.owner = owner
        self._place_render(render, new)  # type: ignore[attr-defined]  # PoolActions, in the Farm
        render.macs = tuple(macs) or render.macs
        render.wol = ""  # whatever it was, it is awake now
        render.online, render.time_registered, render.time_seen = True, now, now
        render.solved_empty_at = -1
        self.renders_to_visit.add(render.id)
        self._reattach(render, running)
        log.info("render {render} registered: capacity {capacity}, {running} running",
                 render=name, capacity=capacity, running=len(render.tasks))
        self.bus.publish(RenderRegistered(render))
        self.request_solve()
        return render

    def _reattach(self, render: Render, running: Iterable[TaskRef]) -> None:
        """The render says what it runs (finished runs it has not had acknowledged
        included). A task of this render that it does not list is not there: the render
        restarted, or the start order never reached it. It is ready again at once."""
        reported = set()
        for item in running:
            key, run = item.key, item.run
            reported.add(key)
            try:
                task = self.task(key)
            except (errors.UnknownJob, errors.UnknownTask):
                task = None
            if (task is not None and task.state in ACTIVE and task.starts_count == run
                    and task.render_id == render.id):
                if task.state is TaskState.WRC:
                    self._stop_waiting(task)
                    self._occupy(render, task)
                    self._set_state(task, TaskState.RUN)
                    self._arm_time_limits(task)
            elif task is not None and self._multihost_reattach(render, task, run):  # type: ignore[attr-defined]
                pass  # a secondary host of a multi-host task, still running its service
            else:  # deleted, restarted or run elsewhere meanwhile
                self._order(render, KillOrder(*key, run=run, reason="not wanted by the server"))
        for key, task in list(render.tasks.items()):
            if key not in reported:
                self._release(task)
                self._set_state(task, TaskState.RDY)
        for key, task in list(render.waiting.items()):
            if key not in reported:
                log.info("task {key} is not on {render} any more: ready again", key=key,
                         render=render.name)
                self._waited_in_vain(task)
        self._multihost_registered(render, reported)  # type: ignore[attr-defined]

    def render_seen(self, render: Render, resources: HostResources | None = None) -> None:
        """A render spoke; ``resources`` (CPU, memory, swap, disk, load) are shown, not trusted."""
        render.time_seen = self.clock.seconds()
        if resources is not None:
            shown = attrs.asdict(resources)
            for key in HostResources.SHOWN_WHEN_SET:
                if shown[key] is None:
                    del shown[key]
            render.resources = shown
            self._needs_values(render, resources)

    def _needs_values(self, render: Render, resources: HostResources) -> None:
        """Keep what needs are checked against; when it changed, look at the render again (a
        task that waited for its memory or disk may fit now)."""
        gpu_free = (None if resources.gpu_mem_total_mb is None or resources.gpu_mem_used_mb is None
                    else resources.gpu_mem_total_mb - resources.gpu_mem_used_mb)
        hdd = None if resources.hdd_free_gb is None else int(resources.hdd_free_gb)
        values = (resources.mem_free_mb, hdd, gpu_free)
        if values != (render.mem_free_mb, render.hdd_free_gb, render.gpu_mem_free_mb):
            render.mem_free_mb, render.hdd_free_gb, render.gpu_mem_free_mb = values
            if render.solved_empty_at != -1 and render.has_room():
                render.solved_empty_at = -1
                self.renders_to_visit.add(render.id)
                self.request_solve()

    def render_lost(self, render: Render, zombie: bool = False) -> None:
        """The render's connection is gone, or it went silent past zombie_time (Afanasy's
        RENDER_ZOMBIE). Its running tasks wait for it to reconnect (WRC) for
        ``task_reconnect_timeout``, then run elsewhere."""
        if not render.online:
            return
        render.online = False
        if render.wol == "falling":  # it went to sleep as asked: not a zombie
            render.wol, zombie = "sleeping", False
        if zombie:
            log.warn("render {render} is a zombie: silent past zombie_time", render=render.name)
        self._drop_pending_orders(render)
        self._multihost_render_lost(render)  # type: ignore[attr-defined]
        now = self.clock.seconds()
        for task in list(render.tasks.values()):
            self._release(task, keep_render=True)
            task.time_lost = now
            self._set_state(task, TaskState.WRC)
            self._wait_for_render(task, render)
        render.tasks.clear()
        render.capacity_used = 0
        log.info("render {render} offline", render=render.name)
        self.bus.publish(RenderLost(render, zombie))

    def _wait_for_render(self, task: Task, render: Render) -> None:
        """A WRC task waits task_reconnect_timeout from ``task.time_lost`` (which a
        restart keeps, so the wait continues instead of starting again)."""
        render.waiting[task.key] = task
        deadline = task.time_lost + self.settings.task_reconnect_timeout
        self._timer("reconnect", id(task), deadline - self.clock.seconds(), self._reconnect_timeout, task)

    def _stop_waiting(self, task: Task) -> None:
        self._cancel_timer("reconnect", id(task))
        render = self.renders.get(task.render_id)
        if render is not None and render.waiting.get(task.key) is task:
            del render.waiting[task.key]
        task.time_lost = 0.0

    def _reconnect_timeout(self, task: Task) -> None:
        if task.state is TaskState.WRC:
            log.info("task {key} did not come back with its render: ready again", key=task.key)
            self._waited_in_vain(task)

    def _waited_in_vain(self, task: Task) -> None:
        """A WRC task's render will not run it: ready again."""
        self._stop_waiting(task)
        task.render_id = 0
        self._set_state(task, TaskState.RDY)
        self.request_solve()

    def _drop_pending_orders(self, render: Render) -> None:
        """Undelivered start orders never reached the render: those tasks are ready again.
        Their run number stays used (it may be committed already): run numbers never repeat."""
        orders, render.orders = render.orders, []
        for order in orders:
            if isinstance(order, StartOrder):
                try:
                    task = self.task(order.key)
                except (errors.UnknownJob, errors.UnknownTask):
                    continue  # its job was deleted meanwhile
                if (task.state is TaskState.RUN and task.starts_count == order.run
                        and task.render_id == render.id):  # (not a multi-host secondary's service)
                    self._release(task)
                    self._set_state(task, TaskState.RDY)

