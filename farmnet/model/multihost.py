"""Multi-host tasks, as Afanasy's TaskRunMulti runs them (``af.Block.setMultiHost``).

A task of a block with ``multihost_min`` ≥ 1 is handed to a render like any task, but the render is
*captured*: it holds the block's capacity and runs nothing while the task stays ready and gathers
more renders (the scheduler offers it every render that fits before any other task of the block).
It starts once it has ``multihost_max`` hosts, or once it has at least ``multihost_min`` and no host
came for ``multihost_max_wait`` seconds; with fewer than ``multihost_min`` it keeps what it has and
waits, as Afanasy does. Then the first captured render is the primary and the others are
secondaries: each secondary runs ``multihost_service`` (if any), and ``multihost_service_wait``
seconds later (at once when 0 or no service) the primary runs the task's command, its
``@AF_HOSTS@`` replaced by the secondaries' names (the render's service formats them: ``-H a,b``)
and ``FARMNET_HOSTS`` holding them. When the task's run ends (done, failed, killed, restarted,
deleted) the secondaries' services are killed and the hosts freed.

A secondary whose service ends, or whose render is lost, while the task runs restarts the whole task
(the primary is killed, the task is ready again; no error is counted), unless the block has
``slavelostignore`` and a secondary is left. A captured render lost while the task gathers is just
dropped. The task's ``host`` reads "primary: secondary ..." (Afanasy's way): listings, the web,
statistics (``hosts``) show every host, and the store keeps it, so after a server restart the
secondaries re-attach like the primary does (for ``task_reconnect_timeout``).
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
from twisted.logger import Logger

from farmnet.messages import KillOrder, StartOrder
from farmnet.model.data import ACTIVE, Job, MultiRun, Render, Task, TaskKey, TaskState
from farmnet.model.events import RunEnded
from farmnet.model.lifecycle import TaskLife

log = Logger()




class MultiHost(TaskLife):
    # --- gathering ---------------------------------------------------------------------

    def _multihost_capture(self, task: Task, render: Render) -> None:
        """The scheduler gave ``render`` to a multi-host task: one more host."""
        now = self.clock.seconds()
        run = self.multihost.get(task.key)
        if run is None:
            run = self.multihost[task.key] = MultiRun(task)
            self.multihost_gathering[_block_key(task)] = task
            task.block.push_ready(task)  # the scheduler popped it: it stays ready while it gathers
        run.hosts.append(render)
        run.time_last_added = now
        self._hold_host(render, task)
        task.host = " ".join(run.names)  # Afanasy shows the captured hosts while it gathers
        spec = task.block.spec
        log.info("multi-host task {key} captured {render}: {count} of {low}..{high}", key=task.key,
                 render=render.name, count=len(run.hosts), low=spec.multihost_min, high=spec.multihost_max)
        if len(run.hosts) >= spec.multihost_max:
            self._multihost_start(run)
        elif len(run.hosts) >= spec.multihost_min:
            self._timer("multihost", id(task), spec.multihost_max_wait, self._multihost_waited, run)

    def _multihost_waited(self, run: MultiRun) -> None:
        if self.multihost.get(run.task.key) is run and run.master is None:
            self._multihost_start(run)

    def _hold_host(self, render: Render, task: Task) -> None:
        """A captured or secondary host: the block's capacity on it, no process of the task's."""
        render.multihost[task.key] = task
        render.capacity_used += task.block.spec.capacity

    def _free_host(self, render: Render, task: Task) -> None:
        if render.multihost.pop(task.key, None) is None:
            return
        render.capacity_used -= task.block.spec.capacity
        render.solved_empty_at = -1
        self.renders_to_visit.add(render.id)
        self.work_generation += 1
        self.request_solve()

    # --- running -----------------------------------------------------------------------

    def _multihost_start(self, run: MultiRun) -> None:
        """Enough hosts: the first is the primary, the others start the service."""
        task, spec = run.task, run.task.block.spec
        self._cancel_timer("multihost", id(task))
        self.multihost_gathering.pop(_block_key(task), None)
        if task.block.job.paused:
            self._multihost_end(task, "job paused")
            return
        master = run.master = run.hosts.pop(0)
        self._free_host(master, task)
        names = run.names + ([master.name] if spec.multihost_master_on_slave else [])
        self._begin_run(task, master, host=f"{master.name}: {' '.join(names)}")
        log.info("multi-host task {key} starts on {master} with {secondaries}", key=task.key,
                 master=master.name, secondaries=" ".join(run.names) or "no secondaries")
        order = self._start_order(task)
        if spec.multihost_service:
            for render in run.hosts:
                self._order(render, attrs.evolve(order, command=spec.multihost_service, parser="",
                                                 max_run_time=0))
        master_order = attrs.evolve(order, hosts=tuple(names),
                                    environment={**order.environment, "FARMNET_HOSTS": " ".join(names)})
        if spec.multihost_service and spec.multihost_service_wait > 0:
            self._timer("multihost", id(task), spec.multihost_service_wait, self._multihost_order_master,
                        run, master_order)
        else:
            self._order(master, master_order)

    def _multihost_order_master(self, run: MultiRun, order: StartOrder) -> None:
        """multihost_service_wait is over: the primary starts (if the run is still on)."""
        task = run.task
        current = self.multihost.get(task.key) is run and task.starts_count == order.run
        if current and task.state is TaskState.RUN:
            self._order(run.master, order)  # type: ignore[arg-type]  # set when started

    def _multihost_end(self, task: Task, reason: str) -> None:
        """The run is over (or the gathering given up): kill the services, free the hosts."""
        run = self.multihost.pop(task.key, None)
        if run is None:
            return
        self._cancel_timer("multihost", id(task))
        if self.multihost_gathering.get(_block_key(task)) is task:
            del self.multihost_gathering[_block_key(task)]
        for render in run.hosts:
            self._free_host(render, task)
            if run.master is not None and task.block.spec.multihost_service and render.online:
                self._order(render, KillOrder(*task.key, run=task.starts_count,
                                              reason=f"multi-host task's primary: {reason}"))
        if run.master is None:
            log.info("multi-host task {key} stops gathering hosts ({reason})", key=task.key, reason=reason)

    def _multihost_end_job(self, job: Job, reason: str) -> None:
        """A job paused or deleted: its tasks that gather hosts give them back."""
        for block in job.blocks:
            task = self.multihost_gathering.get(_block_key_of(job, block.number))
            if task is not None:
                self._multihost_end(task, reason)

    def _multihost_secondary_gone(self, run: MultiRun, name: str, why: str) -> None:
        """A host's service ended or its render was lost (Afanasy's releaseHost)."""
        task = run.task
        render = self.renders_by_name.get(name)
        if render is not None and render in run.hosts:
            run.hosts.remove(render)
            self._free_host(render, task)
        run.pending.discard(name)
        if run.master is None:  # still gathering: one host fewer
            log.info("multi-host task {key} lost captured host {render}: {why}", key=task.key, render=name,
                     why=why)
            task.host = " ".join(run.names)
            if not run.hosts:
                self._multihost_end(task, why)
            return
        spec = task.block.spec
        left = len(run.hosts) + len(run.pending) + (1 if spec.multihost_master_on_slave else 0)
        if spec.multihost_slave_lost_ignore and left:
            log.info("multi-host task {key}: secondary {render} lost ({why}), ignored (slavelostignore, "
                     "{left} left)", key=task.key, render=name, why=why, left=left)
            names = run.names + ([run.master.name] if spec.multihost_master_on_slave else [])
            task.host = f"{run.master.name}: {' '.join(names)}"
            return
        reason = f"secondary host {name} lost ({why}): the whole task restarts"
        log.info("multi-host task {key}: {reason}", key=task.key, reason=reason)
        self._stop_task(task, reason)
        task.time_done = self.clock.seconds()
        self._set_state(task, TaskState.RDY)
        self.bus.publish(RunEnded(self._run_record(task, None, None, reason, None)))
        self.request_solve()

    # --- reports and renders -----------------------------------------------------------

    def _multihost_service_ended(self, render: Render, key: TaskKey, run_number: int, exit_code: int | None,
                                 signal: int | None) -> None:
        """A report that is not about a task's current primary: a secondary's service ended?"""
        run = self.multihost.get(key)
        if (run is not None and run.master is not None and render in run.hosts
                and run.task.starts_count == run_number):
            self._multihost_secondary_gone(run, render.name,
                                           f"its service ended: exit {exit_code} signal {signal}")

    def _multihost_render_lost(self, render: Render) -> None:
        for key in list(render.multihost):
            run = self.multihost.get(key)
            if run is not None:
                self._multihost_secondary_gone(run, render.name, "render lost")

    def _multihost_eject(self, render: Render, why: str) -> None:
        """Its owner ejects a captured or secondary host. As in Afanasy, a running secondary
        without a service is not freed alone (stop the task to free it); with a service, its
        service is killed and it is lost; a captured host is dropped."""
        for key in list(render.multihost):
            run = self.multihost.get(key)
            if run is None:
                continue
            if run.master is not None and not run.task.block.spec.multihost_service:
                log.info("multi-host task {key}: secondary {render} not ejected alone ({why}): it runs "
                         "no service; stop the task to free it", key=key, render=render.name, why=why)
                continue
            if run.master is not None:
                self._order(render, KillOrder(*key, run=run.task.starts_count, reason=why))
            self._multihost_secondary_gone(run, render.name, why)

    def _multihost_reattach(self, render: Render, task: Task, run_number: int) -> bool:
        """A render re-registers running ``task``'s run but is not its primary: a secondary
        running its service (the server restarted, or the render reconnected)."""
        run = self.multihost.get(task.key)
        if run is None or run.master is None or task.starts_count != run_number:
            return False
        if task.state not in ACTIVE:
            return False
        if render in run.hosts:
            return True
        if render.name in run.pending:
            run.pending.discard(render.name)
            run.hosts.append(render)
            self._hold_host(render, task)
            log.info("multi-host task {key}: secondary {render} re-attached", key=task.key,
                     render=render.name)
            return True
        return False

    def _multihost_registered(self, render: Render, reported: Iterable[TaskKey]) -> None:
        """After a render's register: a secondary without a service has nothing to report and
        is taken back; one whose service is not running any more is lost."""
        reported = set(reported)
        for run in list(self.multihost.values()):
            task = run.task
            if run.master is None or (render not in run.hosts and render.name not in run.pending):
                continue
            if task.key in reported:
                continue
            if task.block.spec.multihost_service:
                self._multihost_secondary_gone(run, render.name, "its service is not running on it")
            elif render.name in run.pending:
                run.pending.discard(render.name)
                run.hosts.append(render)
                self._hold_host(render, task)

    # --- restore -------------------------------------------------------------------------

    def _multihost_restore(self, task: Task) -> None:
        """A stored multi-host run (its host "primary: secondary ..."): its secondaries are
        pending until they re-register, for task_reconnect_timeout like the primary."""
        master_name, sep, others = task.host.partition(": ")
        master = self.renders.get(task.render_id)
        if not sep or master is None:
            return
        spec = task.block.spec
        names = [n for n in others.split() if not (spec.multihost_master_on_slave and n == master_name)]
        run = self.multihost[task.key] = MultiRun(task, master=master, pending=set(names))
        if run.pending:
            deadline = task.time_lost + self.settings.task_reconnect_timeout
            self._timer("multihost", id(task), deadline - self.clock.seconds(), self._multihost_pending_over,
                        run)

    def _multihost_pending_over(self, run: MultiRun) -> None:
        if self.multihost.get(run.task.key) is run:
            for name in sorted(run.pending):
                if self.multihost.get(run.task.key) is run:
                    self._multihost_secondary_gone(run, name, "did not come back after the server restarted")


def _block_key(task: Task) -> tuple[int, int]:
    return (task.block.job.id, task.block.number)


def _block_key_of(job: Job, block: int) -> tuple[int, int]:
    return (job.id, block)
