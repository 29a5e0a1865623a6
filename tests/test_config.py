"""Tests for farmnet.config: defaults, YAML loading, substitution, errors, overrides."""

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from farmnet.config import (
    _INVALID,
    ClientConfig,
    Config,
    ConfigError,
    RenderConfig,
    ServerConfig,
    _convert,
    default_config_path,
    default_state_dir,
    load_config,
)

SAMPLE = Path(__file__).resolve().parent.parent / "etc" / "farmnet.yaml"
SECTIONS = {"server": ServerConfig, "render": RenderConfig, "client": ClientConfig}

# A fixed environment, so results do not depend on who runs the tests.
ENV = {"HOME": "/home/alice", "USER": "alice"}


def temp_path(case: SynchronousTestCase) -> str:
    """A fresh path in a private directory removed after the test.

    Not ``case.mktemp()``: under pytest (unlike trial) that creates its tree in the
    current directory, i.e. in the checkout.
    """
    directory = tempfile.mkdtemp(prefix="farmnet-config-")
    case.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    return os.path.join(directory, "farmnet.yaml")



#: The server section's keys as the unknown-key error lists them (grows with the config).
SERVER_KEYS = ", ".join(f.name for f in attrs.fields(ServerConfig))

class FileMixin(SynchronousTestCase):
    """Write configuration text to a fresh file and load it."""

    def write(self, text: str) -> str:
        path = temp_path(self)
        Path(path).write_text(text, encoding="utf-8")
        return path

    def load(self, text: str, environ: dict[str, str] | None = None, **kwargs: Any) -> Config:
        return load_config(self.write(text), environ=ENV if environ is None else environ, **kwargs)

    def errors(self, text: str, environ: dict[str, str] | None = None, **kwargs: Any) -> list[str]:
        error = self.assertRaises(ConfigError, self.load, text, environ, **kwargs)
        return error.errors


class DefaultStateDirTests(SynchronousTestCase):
    def test_root(self) -> None:
        """Root keeps state system-wide, whatever the user's XDG variables say."""
        env = {"HOME": "/root", "XDG_STATE_HOME": "/root/.state"}
        self.assertEqual(default_state_dir(env, uid=0), "/var/lib/farmnet")

    def test_xdg(self) -> None:
        env = {"HOME": "/home/alice", "XDG_STATE_HOME": "/srv/state"}
        self.assertEqual(default_state_dir(env, uid=1000), "/srv/state/farmnet")

    def test_home(self) -> None:
        self.assertEqual(default_state_dir(ENV, uid=1000), "/home/alice/.local/state/farmnet")

    def test_relative_xdg_ignored(self) -> None:
        """The XDG spec says a relative path is invalid and must be ignored."""
        env = {"HOME": "/home/alice", "XDG_STATE_HOME": "state"}
        self.assertEqual(default_state_dir(env, uid=1000), "/home/alice/.local/state/farmnet")


class DefaultConfigPathTests(SynchronousTestCase):
    def test_set(self) -> None:
        self.assertEqual(default_config_path({"FARMNET_CONFIG": "/etc/farm.yaml"}), "/etc/farm.yaml")

    def test_unset_or_empty(self) -> None:
        self.assertIsNone(default_config_path({}))
        self.assertIsNone(default_config_path({"FARMNET_CONFIG": ""}))


class DefaultsTests(SynchronousTestCase):
    def test_no_file(self) -> None:
        """No file at all gives a working localhost-only configuration."""
        config = load_config(None, environ=ENV)
        state = default_state_dir(ENV)
        self.assertEqual(config.server.listen, "tcp:51100:interface=127.0.0.1")
        self.assertEqual(config.server.web, "tcp:51180:interface=127.0.0.1")
        self.assertEqual(config.server.store, os.path.join(state, "server"))
        self.assertEqual(config.server.heartbeat_hold, 60.0)
        self.assertEqual(config.server.admins, ())
        self.assertEqual(config.server.output_max_bytes, 10 * 1024 * 1024)
        self.assertEqual(config.server.errors_forgive_time, 18000.0)
        self.assertEqual(config.render.server, "tcp:127.0.0.1:51100")
        self.assertEqual(config.render.capacity, 1100)
        self.assertEqual(config.render.state_dir, os.path.join(state, "render"))
        self.assertEqual(config.client.user, "alice")
        self.assertEqual(config.client.timeout, 30.0)

    def test_defaults_use_given_environ(self) -> None:
        """Machine-dependent defaults follow the environ passed, not os.environ."""
        env = {"HOME": "/home/bob", "LOGNAME": "bob", "XDG_STATE_HOME": "/xdg"}
        config = load_config(environ=env)
        self.assertEqual(config.client.user, "bob")
        self.assertEqual(config.render.state_dir, os.path.join(default_state_dir(env), "render"))

    def test_same_as_plain_construction(self) -> None:
        """attrs defaults (computed from os.environ) agree with load_config's."""
        self.assertEqual(load_config(environ=os.environ), Config())

    def test_every_field_documented(self) -> None:
        for cls in (Config, *SECTIONS.values()):
            for field in attrs.fields(cls):
                self.assertTrue(field.metadata.get("doc"), f"{cls.__name__}.{field.name}")

    def test_direct_construction_checked(self) -> None:
        """The checks are attrs validators too, so code building configs is held to them."""
        error = self.assertRaises(ValueError, RenderConfig, capacity=0)
        self.assertEqual(str(error), "capacity: must be > 0, got 0")


class FileTests(FileMixin):
    def test_override_values(self) -> None:
        config = self.load(
            """
server:
  listen: "tcp:6000"
  web: ""
  heartbeat_hold: 5
  admins: [alice, bob]
render:
  capacity: 2000
  services: [blender]
client:
  timeout: 2.5
"""
        )
        self.assertEqual(config.server.listen, "tcp:6000")
        self.assertEqual(config.server.web, "")
        self.assertEqual(config.server.heartbeat_hold, 5.0)
        self.assertIsInstance(config.server.heartbeat_hold, float)
        self.assertEqual(config.server.admins, ("alice", "bob"))
        self.assertEqual(config.render.capacity, 2000)
        self.assertEqual(config.render.services, ("blender",))
        self.assertEqual(config.client.timeout, 2.5)
        # Untouched keys keep their defaults.
        self.assertEqual(config.server.zombie_time, 16.0)
        self.assertEqual(config.render.server, "tcp:127.0.0.1:51100")

    def test_empty_file_and_empty_sections(self) -> None:
        """Comments only, or a section with every key commented out, mean defaults."""
        defaults = load_config(environ=ENV)
        self.assertEqual(self.load("# nothing\n"), defaults)
        self.assertEqual(self.load("server:\n  # listen: x\nrender:\n"), defaults)

    def test_comma_separated_tuple(self) -> None:
        config = self.load('render:\n  services: "blender, nuke ,,houdini"\n  services_disabled: ""\n')
        self.assertEqual(config.render.services, ("blender", "nuke", "houdini"))
        self.assertEqual(config.render.services_disabled, ())

    def test_missing_file(self) -> None:
        path = temp_path(self)
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(len(error.errors), 1)
        self.assertTrue(error.errors[0].startswith(f"{path}: cannot read"), error.errors)

    def test_bad_yaml_names_file_and_line(self) -> None:
        path = self.write("server:\n  listen: tcp:1\n  web: [unclosed\nrender: {}\n")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(len(error.errors), 1)
        self.assertRegex(error.errors[0], rf"^{re.escape(path)}:\d+: YAML syntax error: ")
        self.assertIn(path, str(error))

    def test_bad_yaml_line_number(self) -> None:
        path = self.write("server:\n  listen: a\n   web: b\n")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertTrue(error.errors[0].startswith(f"{path}:3: "), error.errors)

    def test_bad_yaml_unclosed(self) -> None:
        """The error is at the end of the file; the line where the "[" opened is named too."""
        path = self.write("server:\n  listen: [a\n")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(
            error.errors,
            [
                f"{path}:3: YAML syntax error: while parsing a flow sequence (line 2),"
                " expected ',' or ']', but got '<stream end>'"
            ],
        )

    def test_duplicate_key(self) -> None:
        """PyYAML lets the last duplicate win silently; that would hide a mistake."""
        path = self.write("server:\n  listen: a\n  listen: b\n")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(
            error.errors, [f"{path}:3: YAML syntax error: duplicate key 'listen' (first on line 2)"]
        )

    def test_top_level_not_mapping(self) -> None:
        path = self.write("- server\n")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(
            error.errors, [f"{path}: expected a mapping of sections (server, render, client), got a list"]
        )

    def test_section_not_mapping(self) -> None:
        self.assertEqual(self.errors("server: 3\n"), ["server: expected a mapping, got 3"])

    def test_unknown_key_and_section(self) -> None:
        errors = self.errors("server:\n  lisen: tcp:1\n  zzz: 1\nrendr:\n  capacity: 3\n")
        self.assertEqual(
            errors,
            [
                "rendr: unknown key (did you mean 'render'?)",
                "server.lisen: unknown key (did you mean 'listen'?)",
                "server.zzz: unknown key (known: " + SERVER_KEYS + ")",
            ],
        )

    def test_wrong_types(self) -> None:
        errors = self.errors(
            """
server:
  listen: 12
  web: [a]
  heartbeat_hold: fast
  admins: {a: 1}
  errors_retries: true
  output_max_bytes: 1.5
  zombie_time: .inf
render:
  capacity: "12x"
  services: [blender, 3]
client:
  user:
"""
        )
        self.assertEqual(
            errors,
            [
                "server.listen: expected a string, got 12",
                "server.web: expected a string, got a list",
                "server.heartbeat_hold: expected a number, got 'fast'",
                "server.admins: expected a list or a comma-separated string, got a mapping",
                "server.output_max_bytes: expected an integer, got 1.5",
                "server.errors_retries: expected an integer, got true",
                "server.zombie_time: expected a finite number, got inf",
                "render.capacity: expected an integer, got '12x'",
                "render.services[1]: expected a string, got 3",
                "client.user: expected a string, got null",
            ],
        )

    def test_numbers_as_strings(self) -> None:
        """Quoted numbers are accepted: they are what ${VAR} produces."""
        config = self.load('render:\n  capacity: " 1500 "\n  kill_grace: "2.5"\nclient:\n  timeout: 3\n')
        self.assertEqual(config.render.capacity, 1500)
        self.assertEqual(config.render.kill_grace, 2.5)
        self.assertEqual(config.client.timeout, 3.0)
        self.assertIsInstance(config.client.timeout, float)

    def test_range_checks(self) -> None:
        errors = self.errors(
            """
server:
  heartbeat_hold: 0
  errors_retries: -1
  listen: ""
render:
  capacity: 0
  max_tasks: -2
  kill_grace: -0.5
"""
        )
        self.assertEqual(
            errors,
            [
                "server.listen: must not be empty",
                "server.heartbeat_hold: must be > 0, got 0.0",
                "server.errors_retries: must be >= 0, got -1",
                "render.capacity: must be > 0, got 0",
                "render.max_tasks: must be >= 0, got -2",
                "render.kill_grace: must be >= 0, got -0.5",
            ],
        )

    def test_all_errors_at_once(self) -> None:
        """Every kind of problem in every section is reported in one ConfigError."""
        path = self.write(
            """
server:
  listen: 12
  bogus: 1
render:
  capacity: 0
  services: ["${MISSING}"]
client:
  timeout: soon
"""
        )
        error = self.assertRaises(ConfigError, load_config, path, ENV)
        self.assertEqual(
            error.errors,
            [
                "server.bogus: unknown key (known: " + SERVER_KEYS + ")",
                "server.listen: expected a string, got 12",
                "render.capacity: must be > 0, got 0",
                "render.services[0]: environment variable MISSING is not set"
                " (give a default with ${MISSING:-value})",
                "client.timeout: expected a number, got 'soon'",
            ],
        )
        self.assertEqual(error.source, path)
        self.assertTrue(str(error).startswith(f"invalid configuration in {path}:\n  server.bogus: "))


class SubstitutionTests(FileMixin):
    def test_variable(self) -> None:
        env = {**ENV, "PORT": "7000", "HOST": "farm"}
        config = self.load(
            'server:\n  listen: "tcp:${PORT}"\nrender:\n  server: "tcp:${HOST}:${PORT}"\n', env
        )
        self.assertEqual(config.server.listen, "tcp:7000")
        self.assertEqual(config.render.server, "tcp:farm:7000")

    def test_default(self) -> None:
        config = self.load(
            'server:\n  listen: "${LISTEN:-tcp:1:interface=::1}"\n  web: "${WEB:-}"\n'
            '  store: "${EMPTY:-/srv/farm}"\n',
            {**ENV, "EMPTY": ""},
        )
        self.assertEqual(config.server.listen, "tcp:1:interface=::1")
        self.assertEqual(config.server.web, "")
        # As in the shell, ":-" also covers a variable set to "".
        self.assertEqual(config.server.store, "/srv/farm")

    def test_set_overrides_default(self) -> None:
        config = self.load('server:\n  listen: "${LISTEN:-tcp:1}"\n', {**ENV, "LISTEN": "tcp:2"})
        self.assertEqual(config.server.listen, "tcp:2")

    def test_set_but_empty_without_default(self) -> None:
        config = self.load('server:\n  web: "${WEB}"\n', {**ENV, "WEB": ""})
        self.assertEqual(config.server.web, "")

    def test_dollar_escape(self) -> None:
        config = self.load(
            'server:\n  store: "/a$$b/$${X}/$$${X}/c$d"\n',
            {**ENV, "X": "x"},
        )
        self.assertEqual(config.server.store, "/a$b/${X}/$x/c$d")

    def test_in_lists(self) -> None:
        env = {**ENV, "ME": "alice", "THEM": "bob, carol"}
        config = self.load('server:\n  admins: ["${ME}", root]\nrender:\n  services: "${THEM}"\n', env)
        self.assertEqual(config.server.admins, ("alice", "root"))
        self.assertEqual(config.render.services, ("bob", "carol"))

    def test_no_second_expansion(self) -> None:
        """A value's "$$" becomes "$" once; the comma split does not expand it again."""
        config = self.load('render:\n  services: "a$${B}, c"\n', {**ENV, "B": "no"})
        self.assertEqual(config.render.services, ("a${B}", "c"))

    def test_numbers(self) -> None:
        env = {**ENV, "CAP": "2200", "HOLD": "1.5", "N": "lots"}
        config = self.load('render:\n  capacity: "${CAP}"\nserver:\n  heartbeat_hold: "${HOLD}"\n', env)
        self.assertEqual(config.render.capacity, 2200)
        self.assertEqual(config.server.heartbeat_hold, 1.5)
        errors = self.errors('render:\n  capacity: "${N}"\n', env)
        self.assertEqual(errors, ["render.capacity: expected an integer, got 'lots' (from '${N}')"])

    def test_undefined_variable(self) -> None:
        errors = self.errors('server:\n  web: "tcp:${NOPE}"\nrender:\n  services: [a, "${GONE}"]\n')
        self.assertEqual(
            errors,
            [
                "server.web: environment variable NOPE is not set (give a default with ${NOPE:-value})",
                "render.services[1]: environment variable GONE is not set"
                " (give a default with ${GONE:-value})",
            ],
        )

    def test_malformed(self) -> None:
        errors = self.errors('server:\n  web: "${1X}"\n  listen: "tcp:${PORT"\n')
        self.assertEqual(
            errors,
            [
                "server.listen: unterminated '${' in 'tcp:${PORT'",
                "server.web: bad substitution '${1X}'",
            ],
        )

    def test_uses_os_environ_by_default(self) -> None:
        self.patch(os, "environ", {**os.environ, "FARMNET_TEST_PORT": "tcp:9"})
        config = load_config(self.write('server:\n  listen: "${FARMNET_TEST_PORT}"\n'))
        self.assertEqual(config.server.listen, "tcp:9")


class OverrideTests(FileMixin):
    def test_on_top_of_file(self) -> None:
        config = self.load(
            "server:\n  listen: tcp:1\n  web: tcp:2\n",
            overrides={"server": {"listen": "tcp:0", "web": None}, "client": {"timeout": "5"}},
        )
        self.assertEqual(config.server.listen, "tcp:0")
        self.assertEqual(config.server.web, "tcp:2")  # None: not given
        self.assertEqual(config.client.timeout, 5.0)

    def test_without_file(self) -> None:
        config = load_config(None, environ=ENV, overrides={"render": {"capacity": 50, "services": "a,b"}})
        self.assertEqual(config.render.capacity, 50)
        self.assertEqual(config.render.services, ("a", "b"))

    def test_not_substituted(self) -> None:
        """Flags were expanded by the shell already; a "$" in them is literal."""
        config = load_config(None, environ=ENV, overrides={"server": {"store": "/x/${HOME}"}})
        self.assertEqual(config.server.store, "/x/${HOME}")

    def test_replaces_bad_file_value(self) -> None:
        config = self.load('server:\n  listen: "${UNSET}"\n', overrides={"server": {"listen": "tcp:3"}})
        self.assertEqual(config.server.listen, "tcp:3")

    def test_validated(self) -> None:
        error = self.assertRaises(
            ConfigError,
            load_config,
            None,
            ENV,
            {"server": {"listen": 5, "zombie_time": -1, "nope": 1}, "other": {}},
        )
        self.assertEqual(
            error.errors,
            [
                "other: unknown key (known: server, render, client)",
                "server.nope: unknown key (known: " + SERVER_KEYS + ")",
                "server.listen: expected a string, got 5",
                "server.zombie_time: must be > 0, got -1.0",
            ],
        )
        self.assertIsNone(error.source)


class ConvertTests(SynchronousTestCase):
    """The generic conversion, for field types no section uses yet."""

    def convert(self, value: Any, tp: Any, environ: dict[str, str] | None = None) -> tuple[Any, list[str]]:
        errors: list[str] = []
        return _convert(value, tp, "s.k", errors, {} if environ is None else environ), errors

    def test_dict_of_int(self) -> None:
        self.assertEqual(
            self.convert({"a": 1, "b": "${B}"}, dict[str, int], {"B": "2"}), ({"a": 1, "b": 2}, [])
        )
        result, errors = self.convert({"a": "x", 3: 4}, dict[str, int])
        self.assertIs(result, _INVALID)
        self.assertEqual(errors, ["s.k.a: expected an integer, got 'x'", "s.k.3: expected a string, got 3"])
        self.assertEqual(self.convert([1], dict[str, int])[1], ["s.k: expected a mapping, got a list"])

    def test_bool(self) -> None:
        self.assertEqual(self.convert(True, bool), (True, []))
        self.assertEqual(self.convert("${F}", bool, {"F": "off"}), (False, []))
        self.assertEqual(self.convert("Yes", bool), (True, []))
        self.assertEqual(self.convert(1, bool)[1], ["s.k: expected a boolean (true/false), got 1"])

    def test_optional(self) -> None:
        self.assertEqual(self.convert(None, int | None), (None, []))
        self.assertEqual(self.convert("7", int | None), (7, []))
        self.assertEqual(self.convert(None, int)[1], ["s.k: expected an integer, got null"])

    def test_tuple_of_int(self) -> None:
        self.assertEqual(self.convert("1, 2", tuple[int, ...]), ((1, 2), []))
        self.assertEqual(self.convert([1, "x"], tuple[int, ...])[1], ["s.k[1]: expected an integer, got 'x'"])

    def test_unsupported_type(self) -> None:
        self.assertRaises(TypeError, self.convert, 1, list[int])
        self.assertRaises(TypeError, self.convert, 1, int | str)


class SampleFileTests(SynchronousTestCase):
    """etc/farmnet.yaml documents every key and stays loadable."""

    KEY = re.compile(r"^  (#)?([a-z_]+):")

    def sample_keys(self) -> dict[str, list[tuple[str, bool]]]:
        """Section -> [(key, commented out)], read from the text since comments matter."""
        keys: dict[str, list[tuple[str, bool]]] = {}
        section = None
        lines = SAMPLE.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if re.match(r"^[a-z_]+:\s*$", line):
                section = line.split(":", 1)[0]
                keys[section] = []
                continue
            match = self.KEY.match(line)
            if match:
                self.assertIsNotNone(section, f"line {number + 1}: key outside a section")
                assert section is not None
                keys[section].append((match[2], bool(match[1])))
                previous = lines[number - 1]
                self.assertTrue(
                    previous.startswith("  # "), f"line {number + 1}: {match[2]} has no comment line above"
                )
        return keys

    def test_every_field_documented(self) -> None:
        keys = self.sample_keys()
        self.assertEqual(set(keys), set(SECTIONS))
        for name, cls in SECTIONS.items():
            self.assertEqual(
                [key for key, _ in keys[name]], [field.name for field in attrs.fields(cls)], name
            )

    def test_loads_to_defaults(self) -> None:
        """The live values in the sample are exactly the defaults."""
        self.assertEqual(load_config(str(SAMPLE), environ=ENV), load_config(environ=ENV))

    def test_var_example(self) -> None:
        config = load_config(str(SAMPLE), environ={**ENV, "FARMNET_LISTEN": "tcp:4444"})
        self.assertEqual(config.server.listen, "tcp:4444")

    def test_commented_examples_valid(self) -> None:
        """Uncommenting the "#key:" examples still gives a valid configuration."""
        text = re.sub(r"(?m)^  #([a-z_]+):", r"  \1:", SAMPLE.read_text(encoding="utf-8"))
        path = temp_path(self)
        Path(path).write_text(text, encoding="utf-8")
        config = load_config(path, environ=ENV)
        self.assertEqual(config.client.user, "alice")
        self.assertEqual(config.server.store, "/var/lib/farmnet/server")
