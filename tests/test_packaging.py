"""
Packaging checks: the twistd plugin is installed so that `twistd farmnet` works.

These run against the environment pytest runs in (scripts/test uses .venv, installed by scripts/bootstrap).
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

CHECKOUT = Path(__file__).resolve().parent.parent


def _twistd() -> Path:
    """The twistd console script of the environment running the tests."""
    # Not resolved: a venv's bin/python is often a symlink to the base interpreter.
    return Path(sys.executable).parent / "twistd"


class PluginTests(SynchronousTestCase):
    def test_no_init_in_twisted_dirs(self):
        """
        twisted/ and twisted/plugins/ in the checkout must stay plain directories: an __init__.py would make
        the checkout's `twisted` shadow the real Twisted package, or stop Twisted from adding
        twisted/plugins to the plugin search path.
        """
        self.assertTrue((CHECKOUT / "twisted" / "plugins" / "farmnet_plugin.py").is_file())
        for d in (CHECKOUT / "twisted", CHECKOUT / "twisted" / "plugins"):
            self.assertFalse((d / "__init__.py").exists(), f"{d}/__init__.py must not exist")

    def test_getplugins_finds_farmnet(self):
        makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "farmnet"]
        self.assertEqual(len(makers), 1, makers)
        self.assertEqual(makers[0].module, "farmnet.tap")

    def test_twistd_farmnet_help(self):
        """
        The installed twistd finds the plugin, run from outside the checkout and without PYTHONPATH: this
        is what the install (scripts/bootstrap) must provide.
        """
        twistd = _twistd()
        if not twistd.exists():
            self.fail(f"no twistd next to {sys.executable}; is farmnet installed (scripts/bootstrap)?")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        with tempfile.TemporaryDirectory() as elsewhere:
            result = subprocess.run(
                [str(twistd), "farmnet", "--help"],
                cwd=elsewhere,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
            )
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        self.assertIn("server", result.stdout, output)
        self.assertIn("render", result.stdout, output)


def test_protocol_doc_lists_every_command() -> None:
    """doc/protocol.md stays true: every AMP command's wire name is in it."""
    import inspect
    from pathlib import Path

    from twisted.protocols import amp

    from farmnet.protocol import commands

    doc = (Path(__file__).parent.parent / "doc" / "protocol.md").read_text()
    names = [cls.commandName.decode() for _, cls in inspect.getmembers(commands, inspect.isclass)
             if issubclass(cls, amp.Command) and cls.__module__ == commands.__name__]
    assert names and [n for n in names if f"`{n}`" not in doc] == []


class WheelTests(SynchronousTestCase):
    def test_wheel_carries_config_units_and_the_docs_they_name(self) -> None:
        """An install from the wheel has the example config, the systemd units and the docs the
        units point at (under the install's prefix, e.g. /opt/farmnet/share/...)."""
        import re
        import zipfile

        with tempfile.TemporaryDirectory() as out:
            result = subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out,
                 str(CHECKOUT)], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            [wheel] = Path(out).glob("farmnet-*.whl")
            names = zipfile.ZipFile(wheel).namelist()
        shared = {re.sub(r"^farmnet-[^/]*\.data/data/", "", n) for n in names if ".data/data/" in n}
        self.assertLessEqual({"share/farmnet/farmnet.yaml", "share/farmnet/systemd/farmnet-server.service",
                              "share/farmnet/systemd/farmnet-render.service",
                              "share/doc/farmnet/operations.md", "share/doc/farmnet/cli.md"}, shared)
        for unit in (CHECKOUT / "etc" / "systemd").glob("*.service"):
            [doc] = re.findall(r"^Documentation=file:///opt/farmnet/(\S+)$", unit.read_text(), re.M)
            self.assertIn(doc, shared, unit.name)
