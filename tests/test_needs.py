"""Issue 14's resource rules on a `task.Clock`: block and job needs against what renders report,
variable capacity, file checks and parser_coeff as orders carry them, and the reservation that
keeps a block waiting for free capacity from starving. `farmnet why` (Farm.explain) answers
from the same checks."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from test_farm import FarmTestCase
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from farmnet.config import SchedulingConfig
from farmnet.messages import HostFacts, HostResources, StartOrder
from farmnet.model.data import Render, TaskState
from farmnet.model.farm import Farm
from farmnet.model.scheduler import Why
from farmnet.model.spec import afanasy_find, parse_job
from farmnet.render import files, resources

LINUX = HostFacts(os="unix linux 64 debian 12", cpu_mhz=3000, properties="gpu,houdini", power=10)


class NeedsTestCase(FarmTestCase):
    def host(self, name: str = "r1", *, facts: HostFacts = LINUX, cpus: int = 8, capacity: int = 1100,
             **res: Any) -> Render:
        """A render that registered with ``facts`` and reported ``res`` (free memory, disk, ...)."""
        render = self.farm.register_render(name, capacity=capacity, cpus=cpus, facts=facts)
        self.farm.render_seen(render, HostResources(**res))
        self.clock.advance(0)
        return render

    def starts(self, render: Render) -> list[StartOrder]:
        return [o for o in self.orders(render) if isinstance(o, StartOrder)]

    def why(self, job_id: int) -> dict[str, Any]:
        return self.farm.explain(job_id)["blocks"][0]


class NeedsTests(NeedsTestCase):
    def test_need_memory_waits_for_a_render_with_that_much_free(self) -> None:
        small = self.host("small", mem_free_mb=4000)
        job = self.submit(block={"need_memory": 32000})
        self.assertEqual(self.starts(small), [])
        why = self.why(job.id)
        self.assertEqual(why["renders"], {str(Why.NEED_MEMORY): 1})
        self.assertIn("need_memory 32000 MB free: the best render, small, has 4000 MB free", why["reasons"])
        big = self.host("big", mem_free_mb=64000)
        self.assertEqual(len(self.starts(big)), 1)

    def test_memory_freed_on_a_render_is_seen_at_its_next_report(self) -> None:
        render = self.host(mem_free_mb=1000)
        job = self.submit(block={"need_memory": 2000})
        self.assertEqual(self.starts(render), [])
        self.farm.render_seen(render, HostResources(mem_free_mb=3000))
        self.clock.advance(0)
        self.assertEqual(len(self.starts(render)), 1)
        self.assertEqual(job.counts[TaskState.RUN], 1)

    def test_a_value_not_reported_refuses(self) -> None:
        render = self.farm.register_render("r1", capacity=1100, cpus=8)  # no resources yet
        self.clock.advance(0)
        job = self.submit(block={"need_hdd": 10})
        self.assertEqual(self.starts(render), [])
        self.assertIn("need_hdd 10 GB free: no render reported it", self.why(job.id)["reasons"])

    def test_each_numeric_need_against_its_value(self) -> None:
        cases = [
            ({"need_hdd": 50}, {"hdd_free_gb": 49.9}, {"hdd_free_gb": 50.2}, Why.NEED_HDD),
            ({"need_gpu_mem_mb": 8192}, {"gpu_mem_total_mb": 12000, "gpu_mem_used_mb": 4000},
             {"gpu_mem_total_mb": 12000, "gpu_mem_used_mb": 3000}, Why.NEED_GPU_MEM),
            ({"need_cpu_cores": 16}, {}, {}, Why.NEED_CPU_CORES),
            ({"need_cpu_freq_mgz": 3500}, {}, {}, Why.NEED_CPU_FREQ),
            ({"need_cpu_freq_cores": 40000}, {}, {}, Why.NEED_CPU_FREQ_CORES),
            ({"need_power": 20}, {}, {}, Why.NEED_POWER),
        ]
        fast = HostFacts(os=LINUX.os, cpu_mhz=4000, power=20)
        for need, short, enough, why in cases:
            with self.subTest(need=need):
                self.setUp()
                weak = self.host("weak", **short)  # 8 cores x 3000 MHz, power 10
                job = self.submit(block=need)
                self.assertEqual(self.starts(weak), [])
                self.assertEqual(self.why(job.id)["renders"], {str(why): 1})
                strong = self.host("strong", facts=fast, cpus=16, **enough)
                self.assertEqual(len(self.starts(strong)), 1, need)

    def test_need_properties_any_word_contained(self) -> None:
        self.assertTrue(afanasy_find("gpu", "gpu,houdini"))
        self.assertTrue(afanasy_find("nuke|houd", "gpu,houdini"))  # Afanasy's find: contained
        self.assertFalse(afanasy_find("maya", "gpu,houdini"))
        self.assertTrue(afanasy_find("", ""))
        plain = self.host("plain", facts=HostFacts(os=LINUX.os))
        job = self.submit(block={"need_properties": "houdini"})
        self.assertEqual(self.starts(plain), [])
        why = self.why(job.id)
        self.assertEqual(why["renders"], {str(Why.NEED_PROPERTIES): 1})
        self.assertIn("need_properties 'houdini': renders have ''", why["reasons"])
        self.assertEqual(len(self.starts(self.host("fx"))), 1)

    def test_job_need_os_and_properties(self) -> None:
        mac = self.host("mac", facts=HostFacts(os="unix macosx 64"))
        job = self.submit(need_os="linux")
        self.assertEqual(self.starts(mac), [])
        self.assertEqual(self.why(job.id)["renders"], {str(Why.JOB_NEED_OS): 1})
        self.assertIn("need_os 'linux': renders have 'unix macosx 64'", self.why(job.id)["reasons"])
        linux = self.host("linux")
        self.assertEqual(len(self.starts(linux)), 1)
        other = self.submit(name="props", need_properties="maya")
        self.assertEqual(self.why(other.id)["renders"],
                         {str(Why.JOB_NEED_PROPERTIES): 2})

    def test_needs_may_be_changed_on_a_waiting_job(self) -> None:
        render = self.host(mem_free_mb=4000)
        job = self.submit(need_os="windows", block={"need_memory": 8000})
        self.assertEqual(self.starts(render), [])
        self.farm.job_action("anna", [job.id], "set", {"need_os": "linux"})
        self.farm.job_action("anna", [job.id], "set_block", {"block": 0, "need_memory": 2000})
        self.clock.advance(0)
        self.assertEqual(len(self.starts(render)), 1)

    def test_needs_of_a_job_round_trip_through_its_document(self) -> None:
        spec, warnings = parse_job({"name": "j", "need_os": "windows", "blocks": [
            {"name": "b", "command": "x", "need_memory": 100, "need_properties": "gpu"}]})
        self.assertEqual(warnings, [])
        self.assertEqual((spec.need_os, spec.blocks[0].needs, spec.blocks[0].need_properties),
                         ("windows", (("need_memory", 100),), "gpu"))

    def test_os_words_are_afanasys(self) -> None:
        words = resources.os_words().split()
        self.assertEqual(words[0], "windows" if os.name == "nt" else "unix")
        self.assertIn("linux", words)  # these tests run on Linux
        self.assertTrue({"64", "32", "aarch64", "arm32"} & set(words))


class VariableCapacityTests(NeedsTestCase):
    def test_a_task_takes_what_fits_between_the_coefficients(self) -> None:
        render = self.host(capacity=5000)
        job = self.submit(frames=3, block={"command": "render -t @AF_CAPACITY@ @#@", "capacity": 1000,
                                           "capacity_coeff_min": 2, "capacity_coeff_max": 3})
        [first, second] = self.starts(render)
        self.assertEqual((first.capacity_coeff, first.capacity, first.command), (3, 3000, "render -t 3 1"))
        self.assertEqual(first.environment["FARMNET_CAPACITY_COEFF"], "3")
        self.assertEqual((second.capacity_coeff, second.capacity), (2, 2000))  # 2000 left: the min
        self.assertEqual(render.capacity_used, 5000)
        self.assertEqual(self.farm.users["anna"].running_capacity, 5000)
        self.finish(render, first)
        self.assertEqual(render.capacity_used, 2000 + 3000)  # the third took the 3000 freed
        self.finish(render, second)
        [third] = self.starts(render)
        self.assertEqual(third.capacity_coeff, 3)
        self.finish(render, third)
        self.assertEqual((render.capacity_used, job.state), (0, TaskState.DON))
        self.assertEqual(self.farm.users["anna"].running_capacity, 0)

    def test_the_minimum_must_fit(self) -> None:
        render = self.host(capacity=1500)
        job = self.submit(block={"capacity": 1000, "capacity_coeff_min": 2, "capacity_coeff_max": 0})
        self.assertEqual(self.starts(render), [])
        self.assertEqual(self.why(job.id)["renders"], {str(Why.TOO_SMALL): 1})

    def test_no_maximum_takes_all_the_free_capacity(self) -> None:
        render = self.host(capacity=4500)
        self.submit(frames=1, block={"capacity": 1000, "capacity_coeff_min": 0, "capacity_coeff_max": 0})
        [order] = self.starts(render)
        self.assertEqual((order.capacity_coeff, order.capacity), (4, 4000))

    def test_a_fixed_block_keeps_the_literal_and_sends_no_coefficient(self) -> None:
        render = self.host()
        self.submit(frames=1, block={"command": "r @AF_CAPACITY@"})
        [order] = self.starts(render)
        self.assertEqual((order.capacity_coeff, order.command), (0, "r @AF_CAPACITY@"))
        self.assertNotIn("FARMNET_CAPACITY_COEFF", order.environment)

    def test_the_flag_alone_means_no_bounds(self) -> None:
        spec, warnings = parse_job({"name": "j", "blocks": [{"name": "b", "command": "x", "flags": 2}]})
        self.assertEqual((warnings, spec.blocks[0].variable_capacity), ([], True))
        spec, _ = parse_job({"name": "j", "blocks": [
            {"name": "b", "command": "x", "capacity_coeff_min": -1, "capacity_coeff_max": -1}]})
        self.assertFalse(spec.blocks[0].variable_capacity)  # af.py's "not set"


class FileCheckTests(NeedsTestCase):
    def test_orders_carry_the_tasks_files_and_bounds(self) -> None:
        render = self.host()
        self.submit(frames=4, block={"frames_per_task": 2, "files": ["out/img.@####@.exr"], "flags": 1 << 7,
                                     "file_size_min": 10, "file_size_max": 1000, "parser_coeff": 3})
        [order] = self.starts(render)
        self.assertEqual(order.files, ("out/img.0001.exr", "out/img.0002.exr"))
        self.assertEqual((order.file_size_min, order.file_size_max, order.check_rendered_files,
                          order.skip_existing_files, order.parser_coeff), (10, 1000, True, False, 3))

    def test_files_without_a_checking_flag_are_not_sent(self) -> None:
        """They are kept for previews (no warning for them); their size bounds check nothing."""
        spec, warnings = parse_job({"name": "j", "blocks": [
            {"name": "b", "command": "x", "files": ["a.exr"], "file_size_min": 5}]})
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("job.blocks[0].file_size_min: accepted but has no effect in farmnet", warnings[0])
        self.assertEqual(spec.blocks[0].files, ("a.exr",))
        render = self.host()
        self.farm.submit(spec, "anna")
        self.clock.advance(0)
        [order] = self.starts(render)
        self.assertEqual(order.files, ())

    def test_rendered_files_bounds(self) -> None:
        with tempfile.TemporaryDirectory() as directory:
            with open(os.path.join(directory, "a.exr"), "wb") as f:
                f.write(b"x" * 100)
            self.assertIsNone(files.rendered_files_problem(["a.exr"], directory, 10, 1000))
            self.assertIsNone(files.rendered_files_problem(["a.exr"], directory))
            self.assertIn("less than minimum (100 < 200)",
                          files.rendered_files_problem(["a.exr"], directory, 200, -1) or "")
            self.assertIn("greater than maximum (100 > 50)",
                          files.rendered_files_problem(["a.exr"], directory, -1, 50) or "")
            self.assertIn("does not exist", files.rendered_files_problem(["a.exr", "b.exr"], directory) or "")
            self.assertTrue(files.all_exist(["a.exr"], directory, 10, -1))
            self.assertFalse(files.all_exist(["a.exr"], directory, 200, -1))
            self.assertFalse(files.all_exist([], directory))


class ReservationTests(NeedsTestCase):
    """A big block behind a stream of small tasks: each small task that ends frees too little
    for it, and a small one takes the room, until the reservation keeps a render for it."""

    def setUp(self) -> None:
        super().setUp()
        self.farm = Farm(self.clock, SchedulingConfig(users_solving="order", capacity_reserve_after=60))

    def stream(self) -> tuple[Render, Any]:
        render = self.host(capacity=1000)
        small = self.submit(name="small", frames=1000, priority=10, block={"capacity": 500})
        first = self.starts(render)
        self.assertEqual(len(first), 2)
        big = self.submit(name="big", frames=2, priority=200, block={"capacity": 1000})
        self.running = first
        return render, (small, big)

    def step(self, render: Render, seconds: float = 10) -> list[StartOrder]:
        """The oldest running small task ends after ``seconds``; what starts then."""
        self.clock.advance(seconds)
        self.finish(render, self.running.pop(0))
        started = self.starts(render)
        self.running += [o for o in started if o.job_id == self.small_id]
        return started

    def test_without_reservation_the_big_block_starves(self) -> None:
        self.farm = Farm(self.clock, SchedulingConfig(users_solving="order", capacity_reserve_after=0))
        render, (small, big) = self.stream()
        self.small_id = small.id
        for _ in range(30):
            self.step(render)
        self.assertEqual(big.counts[TaskState.RUN], 0)
        self.assertEqual(self.farm.scheduler.reserved, {})

    def test_after_the_wait_a_render_is_kept_until_the_big_task_runs(self) -> None:
        render, (small, big) = self.stream()
        self.small_id = small.id
        for _ in range(6):  # small tasks take the room that frees (big noted waiting at 10 s)
            started = self.step(render)
            self.assertEqual([o.job_id for o in started], [small.id])
        why = self.why(big.id)
        self.assertEqual(why["renders"], {str(Why.BUSY): 1})
        self.assertIn("waits for free capacity (50 s); renders are kept for it after 60 s", why["reasons"])
        self.assertEqual(self.step(render), [])  # at 60 s the render is kept: the freed half stays free
        self.assertEqual(self.farm.scheduler.reserved, {render.id: big.blocks[0]})
        self.assertEqual(self.why(small.id)["renders"],
                         {f"{Why.RESERVED}: job {big.id} block 0 render": 1})
        self.assertIn("waits for free capacity (60 s): renders kept for it, taking no other task until "
                      "it runs: r1", self.why(big.id)["reasons"])
        [order] = self.step(render)  # the last small task ends: the big one starts
        self.assertEqual(order.job_id, big.id)
        self.finish(render, order)
        [order] = self.starts(render)  # the render stays kept while the block has ready tasks
        self.assertEqual(order.job_id, big.id)
        self.finish(render, order)
        self.assertEqual(big.state, TaskState.DON)
        self.assertEqual(self.farm.scheduler.reserved, {})  # done: small tasks flow again
        self.assertEqual(len(self.starts(render)), 2)

    def test_a_block_that_gets_work_elsewhere_is_not_starving(self) -> None:
        render, (small, big) = self.stream()
        self.small_id = small.id
        self.step(render)  # big noted waiting for capacity on r1
        self.assertIn(big.blocks[0], self.farm.scheduler.capacity_waits)
        free = self.host("r2", capacity=1000)
        [order] = self.starts(free)
        self.assertEqual(order.job_id, big.id)
        self.assertNotIn(big.blocks[0], self.farm.scheduler.capacity_waits)
        self.clock.advance(120)
        self.step(render)
        self.assertEqual(self.farm.scheduler.reserved, {})

    def test_a_kept_render_that_goes_offline_is_replaced(self) -> None:
        renders = [self.host(name, capacity=1000) for name in ("r1", "r2")]
        small = self.submit(name="small", frames=1000, priority=10, block={"capacity": 500})
        running = {r.name: self.starts(r) for r in renders}
        big = self.submit(name="big", frames=2, priority=200, block={"capacity": 1000})
        for step in range(8):  # each render in turn ends a small task, and takes a small one
            self.clock.advance(10)
            render = renders[step % 2]
            self.finish(render, running[render.name].pop(0))
            running[render.name] += self.starts(render)
        [kept] = self.farm.scheduler.reserved
        self.farm.render_lost(self.farm.renders[kept])
        self.clock.advance(1)
        self.farm.solve()
        [other] = [r for r in renders if r.id != kept]
        self.assertEqual(self.farm.scheduler.reserved, {other.id: big.blocks[0]})
        # the first kept render did not take a small task after it was kept: 3 of 4 places
        self.assertEqual(small.counts[TaskState.RUN] + small.counts[TaskState.WRC], 3)

    def test_a_paused_or_deleted_block_gives_its_renders_back(self) -> None:
        render, (small, big) = self.stream()
        self.small_id = small.id
        for _ in range(7):
            self.step(render)
        self.assertEqual(self.farm.scheduler.reserved, {render.id: big.blocks[0]})
        self.farm.job_action("anna", [big.id], "pause")
        self.step(render)
        self.assertEqual(self.farm.scheduler.reserved, {})


class GpuReaderTests(TestCase):
    """nvidia-smi as a real child process (a script standing in for it): read, summed over
    GPUs; a failing or missing one is no GPU, never an error."""

    def fake(self, script: str) -> str:
        directory = tempfile.mkdtemp(prefix="farmnet-gpu-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "nvidia-smi")
        with open(path, "w") as f:
            f.write("#!/bin/sh\n" + script + "\n")
        os.chmod(path, 0o755)
        return path

    async def test_two_gpus_are_summed(self) -> None:
        reader = resources.GpuReader(reactor, 30, self.fake('printf "24576, 1000\\n8192, 24\\n"'))
        await reader.read()
        self.assertEqual(reader.latest, (32768, 1024))
        self.assertEqual(resources.sample("/", reader.latest).gpu_mem_used_mb, 1024)

    async def test_a_failing_or_missing_nvidia_smi_is_no_gpu(self) -> None:
        reader = resources.GpuReader(reactor, 30, self.fake("echo 'NVIDIA-SMI has failed'; exit 9"))
        await reader.read()
        self.assertIsNone(reader.latest)
        missing = resources.GpuReader(reactor, 30, "/nonexistent/nvidia-smi")
        await missing.read()
        self.assertIsNone(missing.latest)
        self.assertIsNone(resources.parse_nvidia_smi(b"[N/A], [N/A]\n"))

    def test_no_nvidia_smi_no_loop(self) -> None:
        reader = resources.GpuReader(reactor, 30, None)
        reader.executable = None
        reader.start()
        self.assertIsNone(reader._loop)
