"""Task outputs with a users file: their owner and admins read them (``server.auth.outputs``),
over AMP and on the web alike; without a users file the localhost farm reads them as before."""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from farmnet import errors
from farmnet.client import FarmClient, connect
from farmnet.config import AuthConfig, SchedulingConfig
from farmnet.model.farm import Farm
from farmnet.server.amp import FarmServer, ServerFactory
from farmnet.server.outputs import OutputStore
from farmnet.testing import ProcessFarm, wait_until
from farmnet.web.testing import FarmPlayer, serve, write_users_file

PASSWORD = "correct horse battery"
SECRET = "top-secret-token-42"


def basic(user: str) -> dict[bytes, list[bytes]]:
    token = base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
    return {b"authorization": [f"Basic {token}".encode()]}


class RealServerTests(TestCase):
    """A real ``twistd farmnet server`` with a users file and a web site, a real render."""

    timeout = 120

    async def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="farmnet-privacy-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        users = write_users_file(self.base / "users", {"anna": PASSWORD, "bob": PASSWORD, "boss": PASSWORD})
        config = self.base / "server.yaml"
        config.write_text(f"server:\n  stats:\n    enabled: false\n  scheduling:\n    admins: [boss]\n"
                          f"  auth:\n    users_file: {users}\n")
        self.farm = ProcessFarm(reactor, self.base)
        self.addCleanup(self.farm.stop)
        await self.farm.start_server("--config", str(config), "--web", "tcp:0:interface=127.0.0.1")
        # The web listener starts a moment after the AMP one (whose address start_server waited for).
        web_address = self.base / "server-store" / "web.address"
        await wait_until(reactor, web_address.exists, 20, "the web listener's address file")
        address = web_address.read_text().strip()  # tcp:HOST:PORT
        self.web = "http://" + address.split(":", 1)[1]
        await self.farm.start_render("r1")
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.clients: dict[str, FarmClient] = {}
        for user in ("anna", "bob", "boss"):
            client = await connect(reactor, self.farm.endpoint, user, password=PASSWORD, timeout=20)
            self.addCleanup(client.aclose)
            self.clients[user] = client

    async def http(self, path: str, user: str | None) -> tuple[int, str]:
        response = await treq.get(self.web + path, headers=basic(user) if user else None, pool=self.pool,
                                  allow_redirects=False)
        return response.code, await response.text()

    async def test_owner_and_admins_read_outputs_others_do_not(self) -> None:
        anna = self.clients["anna"]
        job_id, _ = await anna.submit({"job": {"name": "secret", "blocks": [
            {"name": "b", "command": "printf '%s-%s\\n' top-secret token-42", "parser": "none"}]}})
        job = await anna.wait(job_id)
        self.assertEqual(job["state"], "DON")

        for user in ("anna", "boss"):  # the owner and an admin, over AMP
            self.assertIn(SECRET.encode(), await self.clients[user].output(job_id, 0, 0))
        with self.assertRaises(errors.PermissionDenied) as refused:
            await self.clients["bob"].output(job_id, 0, 0)
        self.assertIn("owner and admins", refused.exception.message)

        path = f"/api/jobs/{job_id}/0/0/output"
        for user in ("anna", "boss"):  # and on the web
            code, body = await self.http(path, user)
            self.assertEqual(code, 200)
            self.assertIn(SECRET, json.loads(body)["result"]["data"])
        code, body = await self.http(path, "bob")
        self.assertEqual((code, json.loads(body)["error"]["type"]), (403, "PermissionDenied"))
        code, body = await self.http(path, None)  # anonymous, though the site is public
        self.assertEqual((code, json.loads(body)["error"]["type"]), (401, "NotAuthenticated"))
        for user in (None, "bob"):  # the task's page: its facts, not its output
            code, body = await self.http(f"/jobs/{job_id}/0/0", user)
            self.assertEqual(code, 200)
            self.assertIn("Output of run 1", body)
            self.assertNotIn(SECRET, body)
        code, body = await self.http(f"/jobs/{job_id}/0/0", "anna")
        self.assertIn(SECRET, body)


class ReadersSettingTests(TestCase):
    """``outputs: users`` and ``public``, and no users file at all, in one process."""

    timeout = 60

    async def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="farmnet-readers-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.users = write_users_file(self.base / "users", {"anna": PASSWORD, "bob": PASSWORD})
        self.farm = Farm(reactor, SchedulingConfig())
        self.addCleanup(self.farm.stop)
        self.outputs = OutputStore(self.base / "output")
        self.addCleanup(self.outputs.close_all)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)

    async def amp_server(self, auth: AuthConfig) -> str:
        server = FarmServer(reactor, self.farm, self.outputs, auth=auth)
        port = reactor.listenTCP(0, ServerFactory(server), interface="127.0.0.1")

        async def stop() -> None:
            await port.stopListening()
            await server.shutdown()

        self.addCleanup(stop)
        return f"tcp:127.0.0.1:{port.getHost().port}"

    async def job_with_output(self) -> int:
        """anna's job, its task run once by a played render, its output on disk."""
        player = FarmPlayer(reactor, self.farm)
        render = await player.render("r1")
        job = await player.submit({"job": {"name": "secret", "blocks": [{"name": "b", "command": "true"}]}},
                                  "anna")
        self.assertEqual(await player.play(render), 1)
        self.outputs.append((job.id, 0, 0), 1, SECRET.encode())
        return job.id

    async def read_as(self, endpoint: str, user: str, job_id: int, password: str | None = PASSWORD) -> Any:
        client = await connect(reactor, endpoint, user, password=password, timeout=10)
        self.addCleanup(client.aclose)
        return await client.output(job_id, 0, 0)

    async def web_get(self, site: Any, path: str, user: str | None = None) -> int:
        response = await treq.get(site.url + path, headers=basic(user) if user else None, pool=self.pool)
        await response.content()
        return response.code

    async def test_users_any_logged_in_user_reads(self) -> None:
        job_id = await self.job_with_output()
        endpoint = await self.amp_server(AuthConfig(users_file=str(self.users), outputs="users"))
        self.assertEqual(await self.read_as(endpoint, "bob", job_id), SECRET.encode())
        site = await serve(reactor, self.farm, None, self.outputs, users_file=str(self.users),
                           output_readers="users")
        self.addCleanup(site.stop)
        path = f"/api/jobs/{job_id}/0/0/output"
        self.assertEqual(await self.web_get(site, path, "bob"), 200)
        self.assertEqual(await self.web_get(site, path), 401)

    async def test_public_anonymous_web_readers_too(self) -> None:
        job_id = await self.job_with_output()
        site = await serve(reactor, self.farm, None, self.outputs, users_file=str(self.users),
                           output_readers="public")
        self.addCleanup(site.stop)
        self.assertEqual(await self.web_get(site, f"/api/jobs/{job_id}/0/0/output"), 200)

    async def test_without_users_file_as_before(self) -> None:
        job_id = await self.job_with_output()
        endpoint = await self.amp_server(AuthConfig())
        self.assertEqual(await self.read_as(endpoint, "bob", job_id, None), SECRET.encode())
        site = await serve(reactor, self.farm, None, self.outputs)
        self.addCleanup(site.stop)
        self.assertEqual(await self.web_get(site, f"/api/jobs/{job_id}/0/0/output"), 200)

