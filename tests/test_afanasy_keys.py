"""Every key CGRU's af.py writes does what it does in Afanasy, or submit says it has no
effect: the model on a `task.Clock` (real renders and processes: test_integration.py)."""

from __future__ import annotations

from typing import Any

from test_farm import FarmTestCase, job_doc
from test_sysjob import SystemJobTestCase

from farmnet import errors
from farmnet.messages import StartOrder
from farmnet.model.data import TaskState
from farmnet.model.scheduler import Why
from farmnet.model.spec import NO_EFFECT_BLOCK, NO_EFFECT_JOB, NO_EFFECT_TASK, parse_job


def starts(farm_test: FarmTestCase, render: Any) -> list[StartOrder]:
    return [o for o in farm_test.orders(render) if isinstance(o, StartOrder)]


class TaskEnvironmentTests(FarmTestCase):
    def test_task_environment_is_laid_over_the_block_environment(self) -> None:
        """af.Task.setEnv: Afanasy joins the task's variables into the block's."""
        render = self.render(capacity=10_000)
        self.farm.submit(parse_job({"name": "env", "blocks": [{
            "name": "b", "environment": {"SCENE": "a.hip", "TAKE": "main"},
            "tasks": [{"name": "t0", "command": "echo 0", "environment": {"TAKE": "alt", "TILE": "0"}},
                      {"name": "t1", "command": "echo 1"}]}]})[0], "anna")
        self.clock.advance(0)
        first, second = starts(self, render)
        self.assertEqual({k: first.environment[k] for k in ("SCENE", "TAKE", "TILE")},
                         {"SCENE": "a.hip", "TAKE": "alt", "TILE": "0"})
        self.assertEqual((second.environment["TAKE"], "TILE" in second.environment), ("main", False))

    def test_afanasy_variables(self) -> None:
        """Afanasy's render sets AF_JOB_ID, AF_BLOCK_ID and AF_TASK_ID (ids and numbers)."""
        render = self.render(capacity=10_000)
        job = self.submit(frames=3)
        orders = starts(self, render)
        self.assertEqual([(o.environment["AF_JOB_ID"], o.environment["AF_BLOCK_ID"],
                           o.environment["AF_TASK_ID"]) for o in orders],
                         [(str(job.id), "0", str(n)) for n in range(3)])


class CommandTests(FarmTestCase):
    def command_of(self, block_command: str, task_command: str) -> str:
        spec, _ = parse_job({"name": "j", "blocks": [
            {"name": "b", "command": block_command, "tasks": [{"name": "t", "command": task_command}]}]})
        return spec.blocks[0].task_command(0)

    def test_task_command_fills_or_is_appended_to_the_block_command(self) -> None:
        self.assertEqual(self.command_of("nuke -x @#@ -F 1", "comp.nk"), "nuke -x comp.nk -F 1")
        self.assertEqual(self.command_of("ffmpeg -y ", "-i a.mov b.mp4"), "ffmpeg -y -i a.mov b.mp4")
        self.assertEqual(self.command_of("", "echo alone"), "echo alone")
        self.assertEqual(self.command_of("echo block", ""), "echo block")

    def test_appended_command_reaches_the_render(self) -> None:
        render = self.render()
        self.farm.submit(parse_job({"name": "j", "blocks": [
            {"name": "b", "command": "echo ", "tasks": [{"name": "t", "command": "tail"}]}]})[0], "anna")
        self.clock.advance(0)
        [order] = starts(self, render)
        self.assertEqual(order.command, "echo tail")


class FrameTests(FarmTestCase):
    def frames(self, **block: Any) -> list[tuple[int, int]]:
        spec, _ = parse_job(job_doc(block=block))
        b = spec.blocks[0]
        return [b.frames(n) for n in range(b.tasks_count)]

    def test_last_task_end_snaps_to_the_step(self) -> None:
        """setNumeric(1, 20, 3, 2): Afanasy's genNumbers gives 1-5, 7-11, 13-17, 19-19."""
        self.assertEqual(self.frames(frame_first=1, frame_last=20, frames_per_task=3, frames_inc=2),
                         [(1, 5), (7, 11), (13, 17), (19, 19)])
        self.assertEqual(self.frames(frame_first=0, frame_last=9, frames_per_task=2, frames_inc=3),
                         [(0, 3), (6, 9)])
        self.assertEqual(self.frames(frame_first=1, frame_last=10, frames_per_task=4),
                         [(1, 4), (5, 8), (9, 10)])

    def test_last_task_command_uses_the_snapped_end(self) -> None:
        render = self.render(capacity=10_000)
        self.submit(block={"command": "render -s @#@ -e @#@", "frame_first": 1, "frame_last": 20,
                           "frames_per_task": 3, "frames_inc": 2})
        self.assertEqual([o.command for o in starts(self, render)][-1], "render -s 19 -e 19")

    def test_negative_frames_per_task_means_tasks_per_frame(self) -> None:
        """The Houdini submitter's tiles: frames_per_task -4 is four tasks per frame."""
        spec, warnings = parse_job({"name": "tiles", "blocks": [
            {"name": "gen", "command": "gen @#@", "frame_first": 1, "frame_last": 2},
            {"name": "tiles", "command": "mantra -t index=@#@", "frames_per_task": -4,
             "tasks_depend_mask": "gen",
             "tasks": [{"name": f"frame {f} tile {t}", "command": str(t)}
                       for f in (1, 2) for t in range(4)]}]})
        self.assertEqual(warnings, [])
        tiles = spec.blocks[1]
        self.assertEqual([tiles.frames(n) for n in range(8)], [(0, 0)] * 4 + [(1, 1)] * 4)
        render = self.render(capacity=100_000)
        job = self.farm.submit(spec, "anna")
        self.clock.advance(0)
        first = starts(self, render)
        self.assertEqual([o.command for o in first], ["gen 1", "gen 2"])  # tiles wait for their frame
        self.finish(render, first[0])
        self.assertEqual(sorted(o.command for o in starts(self, render)),
                         [f"mantra -t index={t}" for t in range(4)])  # frame 1's four tiles only
        self.finish(render, first[1])
        self.assertEqual(len(starts(self, render)), 4)
        self.assertEqual(job.blocks[1].counts[TaskState.RUN], 8)

    def test_numeric_block_takes_bad_frame_steps_as_one_with_a_warning(self) -> None:
        spec, warnings = parse_job(job_doc(block={"frames_per_task": -2, "frames_inc": 0}))
        self.assertEqual((spec.blocks[0].frames_per_task, spec.blocks[0].frames_inc), (1, 1))
        self.assertEqual(len(warnings), 2)
        self.assertIn("frames_per_task: -2 is taken as 1", " ".join(warnings))


class BlockNameTests(FarmTestCase):
    def test_two_blocks_with_the_default_name(self) -> None:
        """af.Block() is named "block": Afanasy takes several in one job."""
        render = self.render(capacity=10_000)
        spec, warnings = parse_job({"name": "j", "blocks": [
            {"name": "block", "command": "echo a"}, {"name": "block", "command": "echo b"}]})
        self.assertEqual(warnings, [])
        self.farm.submit(spec, "anna")
        self.clock.advance(0)
        self.assertEqual(sorted(o.command for o in starts(self, render)), ["echo a", "echo b"])


class UserNameTests(FarmTestCase):
    def test_without_passwords_the_jobs_user_is_taken(self) -> None:
        spec, _ = parse_job(job_doc(user_name="bob"))
        job = self.farm.submit(spec, "anna", names_verified=False)
        self.assertEqual(job.user_name, "bob")
        self.assertIn(job.id, self.farm.users["bob"].jobs)

    def test_with_passwords_only_admins_submit_for_others(self) -> None:
        spec, _ = parse_job(job_doc(user_name="bob"))
        self.assertRaises(errors.PermissionDenied, self.farm.submit, spec, "anna", names_verified=True)
        self.assertEqual(self.farm.submit(spec, "root", names_verified=True).user_name, "bob")


class TimeTests(FarmTestCase):
    def test_time_life_deletes_the_job(self) -> None:
        self.clock.advance(1000)
        render = self.render()
        job = self.submit(frames=5, time_life=60)
        [order] = starts(self, render)
        self.clock.advance(59)
        self.assertIn(job.id, self.farm.jobs)
        self.clock.advance(1)
        self.assertNotIn(job.id, self.farm.jobs)
        self.assertEqual(len([o for o in self.orders(render) if o.order == "kill"]), 1)  # its task is killed

    def test_time_life_counts_from_the_clients_creation_time(self) -> None:
        self.clock.advance(1000)
        job = self.submit(time_creation=950, time_life=100)
        self.assertEqual(job.time_creation, 950)
        self.clock.advance(50)
        self.assertNotIn(job.id, self.farm.jobs)

    def test_a_creation_time_in_the_future_is_not_believed(self) -> None:
        self.clock.advance(1000)
        self.assertEqual(self.submit(time_creation=5000).time_creation, 1000)

    def test_time_life_survives_a_restore(self) -> None:
        self.clock.advance(1000)
        job = self.submit(time_life=60)
        self.farm.stop()
        self.farm._timers.clear()
        self.farm.restore_finished()
        self.clock.advance(60)
        self.assertNotIn(job.id, self.farm.jobs)


class RenderStateTests(FarmTestCase):
    """Afanasy's v_canRunOn: paused and NIMBY renders run nothing, nimby ones their owner's
    jobs, except for jobs that ignore that (ignorepaused, ignorenimby)."""

    def running_jobs(self, render: Any) -> list[str]:
        return sorted(self.farm.jobs[o.job_id].name for o in starts(self, render))

    def test_paused_render_runs_only_jobs_ignoring_it(self) -> None:
        render = self.render(capacity=10_000)
        self.farm.render_action("root", ["r1"], "pause")
        self.clock.advance(0)
        plain = self.submit(name="plain", frames=1)
        self.assertEqual(self.running_jobs(render), [])
        self.assertIn(str(Why.PAUSED_RENDER), str(self.farm.scheduler.explain(plain)))
        self.submit(name="nimbyonly", frames=1, ignorenimby=True)
        self.assertEqual(self.running_jobs(render), [])
        self.submit(name="maint", frames=1, ignorepaused=True)
        self.assertEqual(self.running_jobs(render), ["maint"])

    def test_nimby_and_NIMBY_renders(self) -> None:
        nimby = self.render("ws1", capacity=10_000, owner="bob")
        big = self.render("ws2", capacity=10_000)
        self.farm.render_action("root", ["ws1"], "nimby")
        self.farm.render_action("root", ["ws2"], "NIMBY")
        self.clock.advance(0)
        self.submit(name="anna's", frames=1)
        self.submit(user="bob", name="bob's", frames=1)
        self.assertEqual((self.running_jobs(nimby), self.running_jobs(big)), (["bob's"], []))
        self.submit(name="urgent", frames=2, ignorenimby=True)
        self.assertEqual(len(self.running_jobs(nimby)) + len(self.running_jobs(big)), 2)

    def test_without_such_jobs_paused_renders_cost_no_pick(self) -> None:
        render = self.render(capacity=10_000)
        self.farm.render_action("root", ["r1"], "pause")
        job = self.submit(name="maint", frames=1, ignorepaused=True)
        self.assertEqual(self.farm.jobs_ignoring_states, 1)
        self.farm.job_action("anna", [job.id], "delete")
        self.assertEqual(self.farm.jobs_ignoring_states, 0)
        self.submit(name="plain", frames=1)
        self.assertEqual(render.solved_empty_at, -1)  # never picked for


class CommandPreTests(SystemJobTestCase):
    def test_job_waits_for_its_pre_commands(self) -> None:
        """Afanasy runs the job's and blocks' command_pre when it registers the job, before
        solving it: the job's tasks wait for them (WD)."""
        spec, _ = parse_job({"name": "shot", "command_pre": "mkdir -p /tmp/out", "blocks": [
            {"name": "b", "command": "echo @#@", "command_pre": "touch /tmp/out/b"}]})
        job = self.farm.submit(spec, "anna")
        self.clock.advance(0)
        self.assertEqual(self.farm.scheduler.job_waits(job, self.clock.seconds()), Why.COMMANDS_PRE)
        self.assertEqual(self.farm.scheduler.display_state(job), TaskState.WD)
        render = self.render("r1", capacity=10_000, services=["postcmd", "generic"])
        pre = starts(self, render)
        self.assertEqual(sorted(o.command for o in pre), ["mkdir -p /tmp/out", "touch /tmp/out/b"])
        self.assertEqual({o.service for o in pre}, {"postcmd"})
        self.finish(render, pre[0])
        self.assertEqual(starts(self, render), [])  # one still runs
        # Afanasy ignores a pre command's result: one that ends in error releases the job too.
        self.farm.fail_task(self.farm.task(pre[1].key), "failed past its retries")
        self.clock.advance(0)
        [task] = [o for o in starts(self, render) if o.job_id == job.id]
        self.assertEqual((task.job_id, task.command), (job.id, "echo 0"))


class NoEffectWarningTests(FarmTestCase):
    def test_a_key_without_effect_gets_a_warning_naming_it(self) -> None:
        _, warnings = parse_job({"name": "j", "ppa": True, "blocks": [
            {"name": "b", "command": "x", "need_memory": 4096, "flags": 1 | 1 << 4,
             "tasks": [{"name": "t", "command": "y", "files": ["a.exr"]}]}]})
        self.assertEqual(sorted(warnings), sorted([
            "job.ppa: accepted but has no effect in farmnet (no preview-pending-approval)",
            "job.blocks[0].flags: numeric flag set on a block with explicit tasks; tasks win",
            "job.blocks[0].flags: dependsubtask accepted but has no effect in farmnet "
            "(tasks_depend_mask waits for whole tasks)",
            "job.blocks[0].tasks[0].files: accepted but has no effect in farmnet "
            "(no previews and no file checks)",
        ]))

    def test_afanasys_defaults_need_no_warning(self) -> None:
        _, warnings = parse_job({"name": "j", "need_os": "", "ppa": False, "pools": {}, "blocks": [
            {"name": "b", "command": "x", "capacity_coeff_min": -1, "files": []}]})
        self.assertEqual(warnings, [])


#: Every key af.py's Task, Block and Job setters write (CGRU 3.4.1, afanasy/python/af.py), with
#: where its effect is tested, or None when farmnet answers with a "no effect" warning.
AF_PY_TASK_KEYS = {
    "name": "test_afanasy_keys.py NoEffectWarningTests / test_farm.py (task names)",
    "command": "CommandTests",
    "files": None,
    "environment": "TaskEnvironmentTests",
}
AF_PY_BLOCK_KEYS = {
    "flags": "FrameTests (numeric); NoEffectWarningTests (the other bits)",
    "name": "BlockNameTests", "service": "test_scheduler.py (services)",
    "parser": "test_parsers.py", "capacity": "test_farm.py test_capacity_bounds_parallel_tasks",
    "working_directory": "test_integration.py", "frame_first": "FrameTests", "frame_last": "FrameTests",
    "frames_per_task": "FrameTests", "frames_inc": "FrameTests", "sequential": "test_scheduler.py",
    "capacity_coeff_min": "test_needs.py VariableCapacityTests",
    "capacity_coeff_max": "test_needs.py VariableCapacityTests", "command": "CommandTests",
    "command_pre": "CommandPreTests", "command_post": "test_sysjob.py PostCommandTests",
    "files": "test_needs.py FileCheckTests, test_previews.py",
    "environment": "TaskEnvironmentTests", "tickets": "test_scheduler.py (tickets)",
    "tasks_name": "test_farm.py", "parser_coeff": "test_needs.py FileCheckTests (handed to the parser)",
    "errors_avoid_host": "test_farm.py", "errors_forgive_time": "test_farm.py",
    "errors_retries": "test_farm.py", "errors_task_same_host": "test_farm.py",
    **dict.fromkeys(("need_hdd", "need_memory", "need_gpu_mem_mb", "need_cpu_freq_mgz", "need_cpu_cores",
                     "need_cpu_freq_cores", "need_power", "need_properties"), "test_needs.py NeedsTests"),
    "task_max_run_time": "test_farm.py", "task_min_run_time": "test_farm.py",
    "task_progress_change_timeout": "test_farm.py",
    "max_running_tasks": "test_scheduler.py", "max_running_tasks_per_host": "test_scheduler.py",
    "hosts_mask": "test_scheduler.py", "hosts_mask_exclude": "test_scheduler.py",
    "depend_mask": "test_scheduler.py", "tasks_depend_mask": "test_scheduler.py; FrameTests",
    "file_size_min": "test_needs.py FileCheckTests", "file_size_max": "test_needs.py FileCheckTests",
    "multihost_min": "test_multihost.py", "multihost_max": "test_multihost.py",
    "multihost_max_wait": "test_multihost.py", "multihost_service": "test_multihost.py",
    "multihost_service_wait": "test_multihost.py",
    "tasks": "TaskEnvironmentTests, CommandTests",
}
AF_PY_JOB_KEYS = {
    "name": "test_farm.py", "user_name": "UserNameTests", "host_name": "ShownKeysTests",
    "priority": "test_scheduler.py", "time_creation": "TimeTests",
    "command_pre": "CommandPreTests", "command_post": "test_sysjob.py PostCommandTests",
    "folders": "test_stats.py (job_folder)", "pools": "test_pools.py JobPoolsTests",
    "try_this_tasks_num": None, "try_this_blocks_num": None, "branch": "test_pools.py BranchTests",
    "blocks": "test_farm.py", "annotation": "ShownKeysTests", "description": "ShownKeysTests",
    "project": "ShownKeysTests", "department": "ShownKeysTests", "time_wait": "test_scheduler.py",
    "max_running_tasks": "test_scheduler.py", "max_running_tasks_per_host": "test_scheduler.py",
    "hosts_mask": "test_scheduler.py", "hosts_mask_exclude": "test_scheduler.py",
    "depend_mask": "test_scheduler.py", "depend_mask_global": "test_scheduler.py",
    "need_os": "test_needs.py NeedsTests", "need_properties": "test_needs.py NeedsTests",
    "ppa": None, "maintenance": None,
    "ignorenimby": "RenderStateTests", "ignorepaused": "RenderStateTests", "offline": "test_farm.py",
    "time_life": "TimeTests",
}
#: Block flag bits af.py sets (afcommon.BlockFlags), None when a warning says it has no effect.
AF_PY_BLOCK_FLAGS = {
    "numeric": "FrameTests", "varcapacity": "test_needs.py VariableCapacityTests",
    "multihost": "test_multihost.py", "masteronslave": "test_multihost.py", "dependsubtask": None,
    "skipthumbnails": "test_previews.py",
    "skipexistingfiles": "test_needs.py FileCheckTests", "checkrenderedfiles": "test_needs.py FileCheckTests",
    "slavelostignore": "test_multihost.py", "suspendnewtasks": None,
}
FLAG_BITS = {"numeric": 0, "varcapacity": 1, "multihost": 2, "masteronslave": 3, "dependsubtask": 4,
             "skipthumbnails": 5, "skipexistingfiles": 6, "checkrenderedfiles": 7, "slavelostignore": 8,
             "suspendnewtasks": 10}
#: Flags af.py sets with setMultiHost (with multihost_min), or on a multi-host block.
MULTIHOST_FLAGS = ("multihost", "masteronslave", "slavelostignore")
#: A value af.py could write for each key without an effect (not Afanasy's default).
SAMPLE = {"pools": {"fast": 10}, "try_this_tasks_num": [0], "try_this_blocks_num": [0], "branch": "/p",
          "need_os": "linux", "need_properties": "gpu", "ppa": True, "maintenance": True,
          "ignorenimby": True, "ignorepaused": True, "offline": True, "files": ["a.@####@.exr"],
          "multihost_service": "s"}


class KeyWalkTests(FarmTestCase):
    """Walks af.py's keys: each has an effect (tested where named) or a warning naming it."""

    def warnings_for(self, level: str, key: str) -> list[str]:
        value = SAMPLE.get(key, 5)
        block: dict[str, Any] = {"name": "b", "command": "x @#@"}
        job: dict[str, Any] = {"name": "j", "blocks": [block]}
        if level == "job":
            job[key] = value
        elif level == "block":
            block[key] = value
        else:
            block["tasks"] = [{"name": "t", "command": "y", key: value}]
        if key.startswith("multihost_"):  # af.py writes them on a multi-host block only
            block.setdefault("multihost_min", 1)
        _, warnings = parse_job(job)
        return warnings

    def walk(self, level: str, keys: dict[str, str | None], no_effect: dict[str, str]) -> None:
        structural = {"name", "blocks", "tasks", "command", "flags", "environment", "frame_first",
                      "frame_last", "frames_per_task", "frames_inc", "tickets", "user_name", "folders",
                      # warned about without the checkrenderedfiles / skipexistingfiles flag
                      "files", "file_size_min", "file_size_max"}
        for key, tested in keys.items():
            with self.subTest(level=level, key=key):
                if tested is None:
                    self.assertIn(key, no_effect)
                    self.assertIn(f".{key}: accepted but has no effect in farmnet (",
                                  " ".join(self.warnings_for(level, key)))
                else:
                    self.assertNotIn(key, no_effect)
                    if key not in structural:
                        self.assertEqual(self.warnings_for(level, key), [], key)
        self.assertEqual(set(no_effect) - set(keys), set() if level != "block" else {"custom_data"})

    def test_task_keys(self) -> None:
        self.walk("task", AF_PY_TASK_KEYS, NO_EFFECT_TASK)

    def test_block_keys(self) -> None:
        self.walk("block", AF_PY_BLOCK_KEYS, NO_EFFECT_BLOCK)

    def test_job_keys(self) -> None:
        self.walk("job", AF_PY_JOB_KEYS, NO_EFFECT_JOB)

    def test_block_flags(self) -> None:
        for flag, tested in AF_PY_BLOCK_FLAGS.items():
            with self.subTest(flag=flag):
                multihost = {"multihost_min": 2} if flag in MULTIHOST_FLAGS else {}
                _, warnings = parse_job({"name": "j", "blocks": [
                    {"name": "b", "command": "x", "flags": 1 | 1 << FLAG_BITS[flag], **multihost}]})
                said = [w for w in warnings if f"flags: {flag} accepted but has no effect in farmnet (" in w]
                self.assertEqual(len(said), 0 if tested else 1, warnings)


class ShownKeysTests(FarmTestCase):
    def test_descriptive_keys_are_shown(self) -> None:
        """Afanasy shows these in its job info; farmnet's show_job (CLI, web) does."""
        job = self.submit(host_name="ws07", annotation="for review", description="fx pass",
                          project="film", department="fx")
        shown = self.farm.show_job(job.id)
        self.assertEqual({k: getattr(shown, k) for k in ("host_name", "annotation", "description", "project",
                                                "department")},
                         {"host_name": "ws07", "annotation": "for review", "description": "fx pass",
                          "project": "film", "department": "fx"})
