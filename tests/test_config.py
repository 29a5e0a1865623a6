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
    Config,
    ConfigError,
    RenderConfig,
    SchedulingConfig,
    ServerConfig,
    _convert,
    default_config_path,
    default_state_dir,
    load_config,
    moved_keys,
)

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent / "etc" / "farmnet.yaml"
#: etc/farmnet.yaml as it was before the sections: what studios' files look like.
FLAT_SAMPLE = HERE / "data" / "farmnet-flat.yaml"


def keys_of(cls: type, prefix: str = "") -> list[str]:
    """Every key of ``cls`` and its sections, dotted, in order (a section before its keys)."""
    keys: list[str] = []
    for field in attrs.fields(cls):
        if field.name == "moved":
            continue
        keys.append(prefix + field.name)
        if attrs.has(field.type):
            keys.extend(keys_of(field.type, f"{prefix}{field.name}."))
    return keys

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
        self.assertEqual(config.server.web.listen, "tcp:51180:interface=127.0.0.1")
        self.assertEqual(config.server.store.path, os.path.join(state, "server"))
        self.assertEqual(config.server.connections.heartbeat_hold, 60.0)
        self.assertEqual(config.server.scheduling.admins, ())
        self.assertEqual(config.server.store.output_max_bytes, 10 * 1024 * 1024)
        self.assertEqual(config.server.scheduling.errors_forgive_time, 18000.0)
        self.assertTrue(config.server.stats.enabled)
        self.assertEqual(config.server.sysjob.custom_data, {})
        self.assertEqual(config.moved, ())
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
        classes = [Config]
        for cls in classes:
            for field in attrs.fields(cls):
                self.assertTrue(field.metadata.get("doc"), f"{cls.__name__}.{field.name}")
                if attrs.has(field.type):
                    classes.append(field.type)
        self.assertIn(SchedulingConfig, classes)

    def test_scheduling_is_what_the_farm_takes(self) -> None:
        """The farm model's settings are the scheduling section itself, defaults included."""
        from farmnet.model.farm import Farm

        farm = Farm(object())  # type: ignore[arg-type]
        self.assertEqual(farm.settings, Config().server.scheduling)

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
  web:
    listen: ""
  connections:
    heartbeat_hold: 5
  scheduling:
    admins: [alice, bob]
  sysjob:
    custom_data: {events: {RENDER_SICK: {}}, emails: [w@studio]}
render:
  capacity: 2000
  services: [blender]
  tasks:
    kill_grace: 3
client:
  timeout: 2.5
"""
        )
        self.assertEqual(config.server.listen, "tcp:6000")
        self.assertEqual(config.server.web.listen, "")
        self.assertEqual(config.server.connections.heartbeat_hold, 5.0)
        self.assertIsInstance(config.server.connections.heartbeat_hold, float)
        self.assertEqual(config.server.scheduling.admins, ("alice", "bob"))
        self.assertEqual(config.server.sysjob.custom_data,
                         {"events": {"RENDER_SICK": {}}, "emails": ["w@studio"]})
        self.assertEqual(config.render.capacity, 2000)
        self.assertEqual(config.render.services, ("blender",))
        self.assertEqual(config.render.tasks.kill_grace, 3.0)
        self.assertEqual(config.client.timeout, 2.5)
        # Untouched keys keep their defaults.
        self.assertEqual(config.server.connections.zombie_time, 16.0)
        self.assertTrue(config.server.web.public)
        self.assertEqual(config.render.server, "tcp:127.0.0.1:51100")
        self.assertEqual(config.moved, ())

    def test_empty_file_and_empty_sections(self) -> None:
        """Comments only, or a section with every key commented out, mean defaults."""
        defaults = load_config(environ=ENV)
        self.assertEqual(self.load("# nothing\n"), defaults)
        self.assertEqual(self.load("server:\n  # listen: x\n  stats:\nrender:\n  tasks:\n"), defaults)

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
        self.assertEqual(self.errors("server:\n  scheduling: [a]\n"),
                         ["server.scheduling: expected a mapping, got a list"])

    def test_unknown_key_and_section(self) -> None:
        errors = self.errors("server:\n  lisen: tcp:1\n  zzz: 1\n  scheduling:\n    errors_retires: 1\n"
                             "  stats:\n    dns: x\n  errors_retires: 2\nrendr:\n  capacity: 3\n")
        self.assertEqual(
            errors,
            [
                "rendr: unknown key (did you mean 'render'?)",
                "server.lisen: unknown key (did you mean 'listen'?)",
                "server.zzz: unknown key (known: " + SERVER_KEYS + ")",
                # A close old key: its new place is suggested.
                "server.errors_retires: unknown key (did you mean 'scheduling.errors_retries'?)",
                "server.scheduling.errors_retires: unknown key (did you mean 'errors_retries'?)",
                "server.stats.dns: unknown key (did you mean 'dsn'?)",
            ],
        )

    def test_wrong_types(self) -> None:
        errors = self.errors(
            """
server:
  listen: 12
  web: {listen: [a]}
  store: {output_max_bytes: 1.5}
  scheduling: {admins: {a: 1}, errors_retries: true}
  connections: {heartbeat_hold: fast, zombie_time: .inf}
  sysjob: {custom_data: {when: 2024-05-01}}
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
                "server.store.output_max_bytes: expected an integer, got 1.5",
                "server.scheduling.admins: expected a list or a comma-separated string, got a mapping",
                "server.scheduling.errors_retries: expected an integer, got true",
                "server.connections.heartbeat_hold: expected a number, got 'fast'",
                "server.connections.zombie_time: expected a finite number, got inf",
                "server.web.listen: expected a string, got a list",
                "server.sysjob.custom_data: must hold only strings, numbers, booleans, null, lists"
                " and mappings",
                "render.capacity: expected an integer, got '12x'",
                "render.services[1]: expected a string, got 3",
                "client.user: expected a string, got null",
            ],
        )

    def test_numbers_as_strings(self) -> None:
        """Quoted numbers are accepted: they are what ${VAR} produces."""
        config = self.load('render:\n  capacity: " 1500 "\n  tasks:\n    kill_grace: "2.5"\n'
                           'client:\n  timeout: 3\n')
        self.assertEqual(config.render.capacity, 1500)
        self.assertEqual(config.render.tasks.kill_grace, 2.5)
        self.assertEqual(config.client.timeout, 3.0)
        self.assertIsInstance(config.client.timeout, float)

    def test_range_checks(self) -> None:
        errors = self.errors(
            """
server:
  connections: {heartbeat_hold: 0}
  scheduling: {errors_retries: -1, users_solving: fair}
  listen: ""
render:
  capacity: 0
  max_tasks: -2
  tasks: {kill_grace: -0.5}
"""
        )
        self.assertEqual(
            errors,
            [
                "server.listen: must not be empty",
                "server.scheduling.errors_retries: must be >= 0, got -1",
                "server.scheduling.users_solving: must be 'need' or 'order', got 'fair'",
                "server.connections.heartbeat_hold: must be > 0, got 0.0",
                "render.capacity: must be > 0, got 0",
                "render.max_tasks: must be >= 0, got -2",
                "render.tasks.kill_grace: must be >= 0, got -0.5",
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
            'server:\n  listen: "${LISTEN:-tcp:1:interface=127.0.0.2}"\n  web:\n    listen: "${WEB:-}"\n'
            '  store:\n    path: "${EMPTY:-/srv/farm}"\n',
            {**ENV, "EMPTY": ""},
        )
        self.assertEqual(config.server.listen, "tcp:1:interface=127.0.0.2")
        self.assertEqual(config.server.web.listen, "")
        # As in the shell, ":-" also covers a variable set to "".
        self.assertEqual(config.server.store.path, "/srv/farm")

    def test_endpoints_are_checked_with_the_rest(self) -> None:
        """A listener or server Twisted cannot parse is a config error, found at load with the
        others, not a server that cannot listen later (a URL is the usual slip)."""
        with self.assertRaises(ConfigError) as caught:
            self.load('server:\n  listen: "tcp:abc"\n  web:\n    listen: "http://127.0.0.1:47302"\n'
                      'client:\n  server: "farm:51100:x"\n', ENV)
        errors = caught.exception.errors
        self.assertEqual([e.split(":", 1)[0] for e in errors], ["server.listen", "server.web.listen",
                                                                 "client.server"])
        self.assertIn("Unknown endpoint type: 'http'", errors[1])
        config = self.load('client:\n  server: "farm.example.com"\n', ENV)  # HOST is shorthand
        self.assertEqual(config.client.server, "farm.example.com")

    def test_set_overrides_default(self) -> None:
        config = self.load('server:\n  listen: "${LISTEN:-tcp:1}"\n', {**ENV, "LISTEN": "tcp:2"})
        self.assertEqual(config.server.listen, "tcp:2")

    def test_set_but_empty_without_default(self) -> None:
        config = self.load('server:\n  web:\n    listen: "${WEB}"\n', {**ENV, "WEB": ""})
        self.assertEqual(config.server.web.listen, "")

    def test_dollar_escape(self) -> None:
        config = self.load(
            'server:\n  store:\n    path: "/a$$b/$${X}/$$${X}/c$d"\n',
            {**ENV, "X": "x"},
        )
        self.assertEqual(config.server.store.path, "/a$b/${X}/$x/c$d")

    def test_in_lists(self) -> None:
        env = {**ENV, "ME": "alice", "THEM": "bob, carol"}
        config = self.load(
            'server:\n  scheduling:\n    admins: ["${ME}", root]\nrender:\n  services: "${THEM}"\n', env)
        self.assertEqual(config.server.scheduling.admins, ("alice", "root"))
        self.assertEqual(config.render.services, ("bob", "carol"))

    def test_no_second_expansion(self) -> None:
        """A value's "$$" becomes "$" once; the comma split does not expand it again."""
        config = self.load('render:\n  services: "a$${B}, c"\n', {**ENV, "B": "no"})
        self.assertEqual(config.render.services, ("a${B}", "c"))

    def test_numbers(self) -> None:
        env = {**ENV, "CAP": "2200", "HOLD": "1.5", "N": "lots"}
        config = self.load(
            'render:\n  capacity: "${CAP}"\nserver:\n  connections:\n    heartbeat_hold: "${HOLD}"\n', env)
        self.assertEqual(config.render.capacity, 2200)
        self.assertEqual(config.server.connections.heartbeat_hold, 1.5)
        errors = self.errors('render:\n  capacity: "${N}"\n', env)
        self.assertEqual(errors, ["render.capacity: expected an integer, got 'lots' (from '${N}')"])

    def test_undefined_variable(self) -> None:
        errors = self.errors(
            'server:\n  web:\n    listen: "tcp:${NOPE}"\nrender:\n  services: [a, "${GONE}"]\n')
        self.assertEqual(
            errors,
            [
                "server.web.listen: environment variable NOPE is not set"
                " (give a default with ${NOPE:-value})",
                "render.services[1]: environment variable GONE is not set"
                " (give a default with ${GONE:-value})",
            ],
        )

    def test_malformed(self) -> None:
        errors = self.errors('server:\n  web:\n    listen: "${1X}"\n  listen: "tcp:${PORT"\n')
        self.assertEqual(
            errors,
            [
                "server.listen: unterminated '${' in 'tcp:${PORT'",
                "server.web.listen: bad substitution '${1X}'",
            ],
        )

    def test_uses_os_environ_by_default(self) -> None:
        self.patch(os, "environ", {**os.environ, "FARMNET_TEST_PORT": "tcp:9"})
        config = load_config(self.write('server:\n  listen: "${FARMNET_TEST_PORT}"\n'))
        self.assertEqual(config.server.listen, "tcp:9")


class OverrideTests(FileMixin):
    def test_on_top_of_file(self) -> None:
        config = self.load(
            "server:\n  listen: tcp:1\n  web:\n    listen: tcp:2\n  store:\n    path: /a\n",
            overrides={"server": {"listen": "tcp:0", "web": {"listen": None}, "store": {"path": "/b"}},
                       "client": {"timeout": "5"}},
        )
        self.assertEqual(config.server.listen, "tcp:0")
        self.assertEqual(config.server.web.listen, "tcp:2")  # None: not given
        self.assertEqual(config.server.store.path, "/b")
        self.assertEqual(config.client.timeout, 5.0)

    def test_without_file(self) -> None:
        config = load_config(None, environ=ENV, overrides={"render": {"capacity": 50, "services": "a,b"}})
        self.assertEqual(config.render.capacity, 50)
        self.assertEqual(config.render.services, ("a", "b"))

    def test_not_substituted(self) -> None:
        """Flags were expanded by the shell already; a "$" in them is literal."""
        config = load_config(None, environ=ENV, overrides={"server": {"store": {"path": "/x/${HOME}"}}})
        self.assertEqual(config.server.store.path, "/x/${HOME}")

    def test_replaces_bad_file_value(self) -> None:
        config = self.load('server:\n  listen: "${UNSET}"\n', overrides={"server": {"listen": "tcp:3"}})
        self.assertEqual(config.server.listen, "tcp:3")

    def test_validated(self) -> None:
        error = self.assertRaises(
            ConfigError,
            load_config,
            None,
            ENV,
            {"server": {"listen": 5, "connections": {"zombie_time": -1}, "nope": 1}, "other": {}},
        )
        self.assertEqual(
            error.errors,
            [
                "other: unknown key (known: server, render, client)",
                "server.nope: unknown key (known: " + SERVER_KEYS + ")",
                "server.listen: expected a string, got 5",
                "server.connections.zombie_time: must be > 0, got -1.0",
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

    def test_any(self) -> None:
        """Free-form data (custom_data) is taken as written, never substituted."""
        self.assertEqual(self.convert({"a": ["${X}", 1]}, dict[str, Any]), ({"a": ["${X}", 1]}, []))

    def test_unsupported_type(self) -> None:
        self.assertRaises(TypeError, self.convert, 1, list[int])
        self.assertRaises(TypeError, self.convert, 1, int | str)


class SampleFileTests(SynchronousTestCase):
    """etc/farmnet.yaml documents every key, in order, and stays loadable."""

    KEY = re.compile(r"^((?:  )*)(#)?([a-z_]+):")

    def sample_keys(self, path: Path = SAMPLE) -> list[tuple[str, bool]]:
        """[(dotted key, commented out)], read from the text since comments matter."""
        keys: list[tuple[str, bool]] = []
        stack: list[str] = []
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            match = self.KEY.match(line)
            if not match:
                continue
            depth = len(match[1]) // 2
            self.assertLessEqual(depth, len(stack), f"line {number + 1}: key outside a section")
            stack[depth:] = [match[3]]
            keys.append((".".join(stack), bool(match[2])))
            if depth:
                self.assertTrue(lines[number - 1].startswith(match[1] + "# "),
                                f"line {number + 1}: {match[3]} has no comment line above")
        return keys

    def test_every_field_documented(self) -> None:
        self.assertEqual([key for key, _ in self.sample_keys()], keys_of(Config))

    def test_loads_to_defaults(self) -> None:
        """The live values in the sample are exactly the defaults."""
        self.assertEqual(load_config(str(SAMPLE), environ=ENV), load_config(environ=ENV))

    def test_var_example(self) -> None:
        config = load_config(str(SAMPLE), environ={**ENV, "FARMNET_LISTEN": "tcp:4444"})
        self.assertEqual(config.server.listen, "tcp:4444")

    def test_commented_examples_valid(self) -> None:
        """Uncommenting the "#key:" examples still gives a valid configuration."""
        config = load_config(uncommented(self, SAMPLE), environ=ENV)
        self.assertEqual(config.client.user, "alice")
        self.assertEqual(config.server.store.path, "/var/lib/farmnet/server")
        self.assertEqual(config.server.manhole.ssh_host_key, "/var/lib/farmnet/server/manhole_host_key")
        self.assertEqual(config.moved, ())


def uncommented(case: SynchronousTestCase, sample: Path) -> str:
    """A copy of ``sample`` with its "#key:" examples uncommented."""
    path = temp_path(case)
    text = re.sub(r"(?m)^( +)#([a-z_]+):", r"\1\2:", sample.read_text(encoding="utf-8"))
    Path(path).write_text(text, encoding="utf-8")
    return path


#: A flat (old) server section with a value other than the default for every key, and
#: where each must land: old key -> (YAML value, new dotted path, expected value).
FLAT_SERVER = {
    "listen": ("tcp:7000", "listen", "tcp:7000"),
    "web": ('""', "web.listen", ""),
    "store": ("/srv/farm", "store.path", "/srv/farm"),
    "heartbeat_hold": ("5", "connections.heartbeat_hold", 5.0),
    "admins": ("[boss, root]", "scheduling.admins", ("boss", "root")),
    "output_max_bytes": ("1000", "store.output_max_bytes", 1000),
    "errors_retries": ("1", "scheduling.errors_retries", 1),
    "errors_avoid_host": ("2", "scheduling.errors_avoid_host", 2),
    "errors_task_same_host": ("4", "scheduling.errors_task_same_host", 4),
    "errors_forgive_time": ("60", "scheduling.errors_forgive_time", 60.0),
    "zombie_time": ("9", "connections.zombie_time", 9.0),
    "task_reconnect_timeout": ("7", "scheduling.task_reconnect_timeout", 7.0),
    "sick_errors_count": ("3", "scheduling.sick_errors_count", 3),
    "users_solving": ("order", "scheduling.users_solving", "order"),
    "solve_by_capacity": ("false", "scheduling.solve_by_capacity", False),
    "tickets": ("{NUKE: 20}", "scheduling.tickets", {"NUKE": 20}),
    "tickets_per_host": ("{NUKE: 1}", "scheduling.tickets_per_host", {"NUKE": 1}),
    "max_tasks_per_job": ("500", "scheduling.max_tasks_per_job", 500),
    "manhole_telnet": ("tcp:1:interface=127.0.0.1", "manhole.telnet", "tcp:1:interface=127.0.0.1"),
    "manhole_ssh": ("tcp:2", "manhole.ssh", "tcp:2"),
    "manhole_passwords": ("/etc/pw", "manhole.passwords", "/etc/pw"),
    "manhole_ssh_host_key": ("/etc/hk", "manhole.ssh_host_key", "/etc/hk"),
    "manhole_authorized_keys": ("/etc/ak", "manhole.authorized_keys", "/etc/ak"),
    "stats": ("false", "stats.enabled", False),
    "stats_dsn": ("host=db", "stats.dsn", "host=db"),
    "stats_embedded_dir": ("/pg", "stats.embedded_dir", "/pg"),
    "stats_pg_bin": ("/bin/pg", "stats.pg_bin", "/bin/pg"),
    "stats_spool_max_bytes": ("100", "stats.spool_max_bytes", 100),
    "stats_batch_rows": ("10", "stats.batch_rows", 10),
    "stats_flush_interval": ("2", "stats.flush_interval", 2.0),
    "stats_reconnect_max_delay": ("3", "stats.reconnect_max_delay", 3.0),
    "close_wait": ("1", "connections.close_wait", 1.0),
    "idle_timeout": ("0", "connections.idle_timeout", 0.0),
    "render_secret": ("s3cret", "auth.render_secret", "s3cret"),
    "users_file": ("/etc/users", "auth.users_file", "/etc/users"),
    "max_connections_per_address": ("0", "limits.max_connections_per_address", 0),
    "max_box_bytes": ("1024", "limits.max_box_bytes", 1024),
    "max_boxes_per_second": ("50", "limits.max_boxes_per_second", 50.0),
    "stats_interval": ("0", "log_stats_interval", 0.0),
    "sysjob_tasklife": ("60", "sysjob.tasklife", 60.0),
    "sysjob_tasksmax": ("5", "sysjob.tasksmax", 5),
    "sysjob_postcmd_service": ("pc", "sysjob.postcmd_service", "pc"),
    "sysjob_events_service": ("ev", "sysjob.events_service", "ev"),
    "sysjob_wol_service": ("wol", "sysjob.wol_service", "wol"),
    "render_cmd_wolwake": ("wake", "sysjob.cmd_wolwake", "wake"),
    "sysjob_custom_data": ("""'{"emails": ["w@studio"]}'""", "sysjob.custom_data", {"emails": ["w@studio"]}),
    "log_format": ("json", "log_format", "json"),
    "web_public": ("false", "web.public", False),
}
FLAT_RENDER = {
    "kill_grace": ("1", "tasks.kill_grace", 1.0),
    "output_flush": ("0.5", "tasks.output_flush", 0.5),
    "task_log_max": ("10", "tasks.log_max", 10),
    "task_memory_limit_mb": ("512", "tasks.memory_limit_mb", 512),
    "task_limit_method": ("rlimit", "tasks.limit_method", "rlimit"),
    "events_service_class": ("a.b:C", "sysjob.events_service_class", "a.b:C"),
    "wol_broadcast": ("10.0.0.255", "sysjob.wol_broadcast", "10.0.0.255"),
    "wol_port": ("7", "sysjob.wol_port", 7),
    "resources_disk_path": ("/data", "resources.disk_path", "/data"),
    "resources_every": ("0", "resources.every", 0),
    "cmd_wolsleep": ("sleep-now", "sysjob.cmd_wolsleep", "sleep-now"),
}


def value_at(section: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        section = getattr(section, name)
    return section


class FlatFormatTests(FileMixin):
    """Files of the flat shape (before sections) load to the same values, with warnings."""

    def test_flat_sample_loads_to_defaults(self) -> None:
        """The old etc/farmnet.yaml, as studios copied it: defaults, every old key noted."""
        config = load_config(str(FLAT_SAMPLE), environ=ENV)
        self.assertEqual(config, load_config(environ=ENV))
        self.assertIn("server.errors_retries: moved to server.scheduling.errors_retries", config.moved)
        self.assertIn("server.stats: moved to server.stats.enabled", config.moved)
        self.assertIn("render.kill_grace: moved to render.tasks.kill_grace", config.moved)

    def test_flat_sample_every_key(self) -> None:
        config = load_config(uncommented(self, FLAT_SAMPLE), environ=ENV)
        self.assertEqual(config.server.store.path, "/var/lib/farmnet/server")
        old = {line.split(":")[0] for line in config.moved}
        expected = {f"server.{key}" for key in FLAT_SERVER} | {f"render.{key}" for key in FLAT_RENDER}
        unmoved = {"server.listen", "server.log_format"}  # kept their place
        self.assertEqual(old, expected - unmoved)

    def test_same_values(self) -> None:
        """Every old key, set to a value other than its default, lands where it belongs."""
        text = "server:\n" + "".join(f"  {key}: {yaml}\n" for key, (yaml, _, _) in FLAT_SERVER.items())
        text += "render:\n" + "".join(f"  {key}: {yaml}\n" for key, (yaml, _, _) in FLAT_RENDER.items())
        config = self.load(text)
        for section, table in (("server", FLAT_SERVER), ("render", FLAT_RENDER)):
            for key, (_, path, expected) in table.items():
                self.assertEqual(value_at(getattr(config, section), path), expected, f"{section}.{key}")
        self.assertEqual(config.moved[:2], ("server.web: moved to server.web.listen",
                                            "server.store: moved to server.store.path"))

    def test_mixed_with_sections(self) -> None:
        config = self.load("server:\n  errors_retries: 5\n  scheduling:\n    errors_avoid_host: 1\n"
                           "  stats: false\n")
        scheduling = config.server.scheduling
        self.assertEqual((scheduling.errors_retries, scheduling.errors_avoid_host), (5, 1))
        self.assertFalse(config.server.stats.enabled)

    def test_old_and_new_is_an_error(self) -> None:
        errors = self.errors("server:\n  errors_retries: 5\n  scheduling:\n    errors_retries: 4\n"
                             "render:\n  wol_port: 7\n  sysjob: {wol_port: 8}\n")
        self.assertEqual(errors, [
            "server.errors_retries: moved to server.scheduling.errors_retries, which is given too:"
            " keep only server.scheduling.errors_retries",
            "render.wol_port: moved to render.sysjob.wol_port, which is given too:"
            " keep only render.sysjob.wol_port",
        ])

    def test_errors_name_the_key_as_written(self) -> None:
        errors = self.errors("server:\n  errors_retries: -1\n  admins: [a, 3]\n  web: 5\n")
        self.assertEqual(errors, [
            "server.scheduling.admins[1]: expected a string, got 3 (written as server.admins)",
            "server.scheduling.errors_retries: must be >= 0, got -1 (written as server.errors_retries)",
            "server.web.listen: expected a string, got 5 (written as server.web)",
        ])

    def test_custom_data_json(self) -> None:
        config = self.load("""server:\n  sysjob_custom_data: '{"to": "${WHO}"}'\n""", {**ENV, "WHO": "me"})
        self.assertEqual(config.server.sysjob.custom_data, {"to": "me"})
        self.assertEqual(self.load("server:\n  sysjob_custom_data: ''\n").server.sysjob.custom_data, {})
        errors = self.errors("server:\n  sysjob_custom_data: '{x'\n")
        self.assertEqual(len(errors), 1)
        self.assertTrue(errors[0].startswith("server.sysjob_custom_data: not JSON: "), errors)
        self.assertEqual(self.errors("server:\n  sysjob_custom_data: '[1]'\n"),
                         ["server.sysjob_custom_data: must be a JSON object"])

    def test_moved_keys_warning(self) -> None:
        config = self.load("server:\n  zombie_time: 9\nrender:\n  kill_grace: 1\n")
        self.assertEqual(moved_keys(config, "server"), "old configuration keys, still read but to be moved:\n"
                         "  server.zombie_time: moved to server.connections.zombie_time")
        self.assertIsNone(moved_keys(config, "client"))


class TapOptionsTests(FileMixin):
    """``twistd farmnet server|render`` options: flags still override, old keys are reported."""

    def test_server_flags(self) -> None:
        from twisted.python.usage import UsageError

        from farmnet.tap import ServerOptions

        options = ServerOptions()
        path = self.write("server:\n  web: tcp:1\n  stats: false\n")
        options.parseOptions(["--config", path, "--listen", "tcp:0", "--web", "", "--store", "/tmp/s"])
        config = options.config
        self.assertEqual((config.listen, config.web.listen, config.store.path), ("tcp:0", "", "/tmp/s"))
        self.assertFalse(config.stats.enabled)
        self.assertIn("server.stats: moved to server.stats.enabled", options.moved)
        self.assertEqual(config.afanasy.listen, "tcp:51000:interface=127.0.0.1")  # on by default
        options = ServerOptions()
        options.parseOptions(["--config", path, "--afanasy", ""])
        self.assertEqual(options.config.afanasy.listen, "")
        options = ServerOptions()
        with self.assertRaises(UsageError) as raised:
            options.parseOptions(["--config", path, "--afanasy", "http://0.0.0.0:51000"])
        self.assertIn("server.afanasy.listen: 'http://0.0.0.0:51000' is not an endpoint",
                      str(raised.exception))

    def test_render_flags(self) -> None:
        from farmnet.tap import RenderOptions

        options = RenderOptions()
        path = self.write("server:\n  zombie_time: 3\nrender:\n  task_log_max: 10\n")
        options.parseOptions(["--config", path, "--capacity", "5", "--services", "a,b"])
        self.assertEqual((options.config.capacity, options.config.services), (5, ("a", "b")))
        self.assertEqual(options.config.tasks.log_max, 10)
        self.assertNotIn("server.", options.moved)  # the server's old keys are the server's business
        self.assertIn("render.task_log_max: moved to render.tasks.log_max", options.moved)
