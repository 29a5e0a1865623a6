"""The statistics schema: tables, indexes, the version table and the upgrades.

Tables (Afanasy's three, with its column names where it has them, plus a ledger):

``tasks``
    One row per task run that ended (done, failed and retried, failed for good).
``jobs``
    One row per job when it is done, or when it is deleted before being done.
``logs``
    Farm events: job created, done, deleted; render online, offline, zombie, sick; user added.
``stats_batches``
    The ids of the batches written, so that a batch written twice (its answer was lost
    with the connection, so it was spooled too) is stored once.
``schema_version``
    One row per applied migration.

The schema upgrades itself: :func:`upgrade` applies the :data:`MIGRATIONS` a database
lacks, in one transaction under an advisory lock (two servers starting at once do not
both upgrade). A database newer than this farmnet is refused (:class:`SchemaTooNew`),
never written into.

Rows travel in column order (:data:`TASK_COLUMNS` …), two ways. Live, as COPY text into
temporary staging tables of the writer's COPY connection (:data:`COPY_SETUP`), moved into the
tables by one ``INSERT … SELECT`` each (:func:`copy_batches`): PostgreSQL's cheapest way in.
Spooled (and when COPY refuses a batch), as JSON arrays (:data:`BATCH_INSERT`): small to
spool, and a column appended to the end of a list keeps old spooled rows valid (the missing
value reads as NULL). Never reorder or remove columns of these lists. Both ways record the
batch's id in ``stats_batches`` in the same transaction as its rows.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import attrs

from farmnet.stats.db import Database, Transaction

__all__ = [
    "BATCH_INSERT",
    "COPY_SETUP",
    "JOB_COLUMNS",
    "LATEST",
    "LOG_COLUMNS",
    "MIGRATIONS",
    "Migration",
    "SchemaTooNew",
    "TABLES",
    "TASK_COLUMNS",
    "copy_batches",
    "current_version",
    "drop_all",
    "upgrade",
]

#: Any constant: the key of the advisory lock taken while upgrading.
_LOCK_KEY = 0x6661726D6E6574  # "farmnet"


@attrs.frozen
class Column:
    name: str
    #: Type in the table; "timestamptz" columns travel as epoch seconds (float).
    sql_type: str

    @property
    def wire_type(self) -> str:
        return "float8" if self.sql_type == "timestamptz" else self.sql_type

    def select(self, index: int) -> str:
        """The expression reading this column from JSON array ``r``."""
        value = f"(r->>{index})::{self.wire_type}"
        if self.sql_type == "timestamptz":
            return f"to_timestamp({value})"
        return value


def _columns(spec: str) -> tuple[Column, ...]:
    return tuple(Column(*line.split(None, 1)) for line in spec.strip().splitlines())


TASK_COLUMNS = _columns("""
job_id bigint
job_name text
block integer
block_name text
task integer
task_name text
run integer
user_name text
host text
service text
capacity integer
command text
frame_start integer
frame_end integer
time_started timestamptz
time_done timestamptz
exit_code integer
signal integer
state text
errors_count integer
message text
peak_memory_mb bigint
folder text
hosts text
""")

JOB_COLUMNS = _columns("""
job_id bigint
job_name text
user_name text
host_name text
service text
folder text
project text
department text
priority integer
blocks integer
tasks_quantity integer
tasks_done integer
tasks_error integer
runs integer
errors_count integer
run_time_sum double precision
capacity_time_sum double precision
time_created timestamptz
time_started timestamptz
time_done timestamptz
state text
reason text
time_recorded timestamptz
""")

LOG_COLUMNS = _columns("""
time timestamptz
subject text
type text
object text
object_id bigint
info text
""")


def _create(table: str, columns: tuple[Column, ...], extra: str = "") -> str:
    body = ",\n  ".join(f"{c.name} {c.sql_type}" for c in columns)
    return f"CREATE TABLE {table} (\n  id bigserial PRIMARY KEY,\n  {body}{extra}\n)"


def _insert(table: str, columns: tuple[Column, ...], extra: tuple[tuple[str, str], ...] = ()) -> str:
    names = [c.name for c in columns] + [name for name, _ in extra]
    values = [c.select(i) for i, c in enumerate(columns)] + [expr for _, expr in extra]
    return (f"{table}_rows AS (INSERT INTO {table} ({', '.join(names)})\n"
            f"  SELECT {', '.join(values)}\n"
            f"  FROM new_batches b, jsonb_array_elements(b.d->'{table}') r)")


def name_index(columns: tuple[Column, ...], name: str) -> int:
    return [c.name for c in columns].index(name)


_T_STARTED = name_index(TASK_COLUMNS, "time_started")
#: Migration 3 appended ``hosts``: version 1 created the columns before it.
_T_HOSTS = name_index(TASK_COLUMNS, "hosts")
_T_DONE = name_index(TASK_COLUMNS, "time_done")

#: Writes one or more batches in one statement. Its only parameter is a JSON array of
#: batch objects ``{"v": 1, "id": "...", "n": rows, "tasks": [[...], ...], "jobs": [...],
#: "logs": [...]}``. A batch whose id is already in ``stats_batches`` is skipped, so a
#: batch sent twice is stored once. One statement is one transaction.
BATCH_INSERT = "\n".join([
    "WITH batches AS (",
    "  SELECT DISTINCT ON (value->>'id') value->>'id' AS id, value AS d",
    "  FROM jsonb_array_elements(%s::jsonb)),",
    "ledger AS (INSERT INTO stats_batches (id, rows) SELECT id, (d->>'n')::integer FROM batches",
    "  ON CONFLICT (id) DO NOTHING RETURNING id),",
    "new_batches AS (SELECT batches.d FROM batches JOIN ledger USING (id)),",
    _insert("tasks", TASK_COLUMNS, (
        ("run_time", f"greatest(0, (r->>{_T_DONE})::float8 - (r->>{_T_STARTED})::float8)"),)) + ",",
    _insert("jobs", JOB_COLUMNS) + ",",
    _insert("logs", LOG_COLUMNS),
    "SELECT count(*) AS batches FROM ledger",
])


#: The tasks row's computed column, as BATCH_INSERT computes it.
_RUN_TIME = ("run_time", "greatest(0, time_done - time_started)")
_TABLE_COLUMNS = {"tasks": TASK_COLUMNS, "jobs": JOB_COLUMNS, "logs": LOG_COLUMNS}
_TABLE_EXTRA = {"tasks": (_RUN_TIME,), "jobs": (), "logs": ()}


def _staging(table: str) -> str:
    return f"farmnet_{table}_in"


#: Run once on each COPY connection: its staging tables (temporary, so neither logged nor
#: seen by other sessions; emptied at each commit). Timestamps travel as epoch seconds, as
#: in the JSON batches, and are converted by the same expressions.
COPY_SETUP = tuple(
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_staging(table)} "
    f"({', '.join(f'{c.name} {c.wire_type}' for c in columns)}) ON COMMIT DELETE ROWS"
    for table, columns in _TABLE_COLUMNS.items())


def _copy_statements(table: str) -> tuple[str, str]:
    columns = _TABLE_COLUMNS[table]
    names = [c.name for c in columns] + [name for name, _ in _TABLE_EXTRA[table]]
    values = [f"to_timestamp({c.name})" if c.sql_type == "timestamptz" else c.name for c in columns]
    values += [expr for _, expr in _TABLE_EXTRA[table]]
    return (f"COPY {_staging(table)} FROM STDIN",
            f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(values)} FROM {_staging(table)}")


_COPY = {table: _copy_statements(table) for table in _TABLE_COLUMNS}
_LEDGER_INSERT = ("INSERT INTO stats_batches (id, rows) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING "
                  "RETURNING id")


def copy_batches(cursor: Any, batches: Sequence[tuple[str, int, dict[str, bytes]]]) -> int:
    """Write batches through a blocking cursor inside its caller's transaction; returns how
    many were new. Each batch is ``(id, rows, tables)``, ``tables`` mapping a table's name to
    its rows in COPY text format (every column, in order). A batch whose id the ledger holds
    already is skipped (as BATCH_INSERT skips it); the others' rows are copied into the staging
    tables, then moved on by one ``INSERT … SELECT`` per table (the staging tables empty only
    at commit, so each is read once)."""
    copied: set[str] = set()
    new = 0
    for batch_id, rows, tables in batches:
        cursor.execute(_LEDGER_INSERT, (batch_id, rows))
        if cursor.fetchone() is None:
            continue
        new += 1
        for table, data in tables.items():
            cursor.copy_expert(_COPY[table][0], io.BytesIO(data), size=1 << 20)
            copied.add(table)
    for table, (_, insert) in _COPY.items():
        if table in copied:
            cursor.execute(insert)
    return new


@attrs.frozen
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "tasks, jobs and logs tables", (
        _create("tasks", TASK_COLUMNS[:_T_HOSTS], ",\n  run_time double precision"),
        _create("jobs", JOB_COLUMNS),
        _create("logs", LOG_COLUMNS),
    )),
    Migration(2, "indexes for the statistics queries; the batch ledger", (
        # Rows arrive in time order: a BRIN index serves time ranges at almost no cost.
        "CREATE INDEX tasks_time_done ON tasks USING brin (time_done)",
        "CREATE INDEX tasks_user_time ON tasks (user_name, time_done)",
        "CREATE INDEX tasks_host_time ON tasks (host, time_done)",
        "CREATE INDEX tasks_job ON tasks (job_id)",
        "CREATE INDEX jobs_time_recorded ON jobs (time_recorded)",
        "CREATE INDEX jobs_user_time ON jobs (user_name, time_recorded)",
        "CREATE INDEX jobs_folder ON jobs (folder text_pattern_ops)",
        "CREATE INDEX logs_time ON logs (time)",
        "CREATE INDEX logs_object ON logs (object_id, time)",
        "CREATE TABLE stats_batches (id text PRIMARY KEY, rows integer NOT NULL,"
        " time timestamptz NOT NULL DEFAULT now())",
        "CREATE INDEX stats_batches_time ON stats_batches (time)",
    )),
    Migration(3, "tasks.hosts: every host of a multi-host run", (
        "ALTER TABLE tasks ADD COLUMN hosts text",
    )),
)

LATEST = MIGRATIONS[-1].version
#: Every table of the schema, dropped by :func:`drop_all`.
TABLES = ("tasks", "jobs", "logs", "stats_batches", "schema_version")
#: How long a written batch's id is remembered (a spooled copy older than this is gone).
LEDGER_DAYS = 30


class SchemaTooNew(Exception):
    """The database was upgraded by a newer farmnet: this one must not write into it."""


async def _version(tx: Transaction) -> int:
    rows = await tx.query("SELECT coalesce(max(version), 0) AS version FROM schema_version")
    return int(rows[0]["version"])


async def current_version(db: Database) -> int:
    """The schema version of the database (0: no farmnet tables)."""
    rows = await db.query("SELECT to_regclass('schema_version') IS NOT NULL AS present")
    if not rows[0]["present"]:
        return 0
    rows = await db.query("SELECT coalesce(max(version), 0) AS version FROM schema_version")
    return int(rows[0]["version"])


async def upgrade(db: Database, migrations: tuple[Migration, ...] = MIGRATIONS) -> tuple[int, int]:
    """Apply the missing migrations; returns (version before, version after)."""
    latest = migrations[-1].version

    async def body(tx: Transaction) -> tuple[int, int]:
        await tx.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, description text,"
            " time_applied timestamptz NOT NULL DEFAULT now())")
        before = await _version(tx)
        if before > latest:
            raise SchemaTooNew(
                f"the statistics database has schema version {before}, newer than this farmnet's "
                f"{latest}: upgrade farmnet (nothing is written until then)")
        for migration in migrations:
            if migration.version <= before:
                continue
            for statement in migration.statements:
                await tx.execute(statement)
            await tx.execute("INSERT INTO schema_version (version, description) VALUES (%s, %s)",
                             (migration.version, migration.description))
        return before, max(before, latest)

    result: tuple[int, int] = await db.transaction(body)
    return result


async def forget_old_batches(db: Database, days: int = LEDGER_DAYS) -> None:
    """Drop ledger entries older than ``days``."""
    await db.execute("DELETE FROM stats_batches WHERE time < now() - make_interval(days => %s)", (days,))


async def drop_all(db: Database) -> None:
    """Drop every statistics table (``farmnet db reset``)."""

    async def body(tx: Transaction) -> None:
        await tx.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        for table in TABLES:
            await tx.execute(f"DROP TABLE IF EXISTS {table} CASCADE")

    await db.transaction(body)


def describe() -> dict[str, Any]:
    """The schema in words, for documentation and the web site."""
    return {
        "version": LATEST,
        "tasks": [c.name for c in TASK_COLUMNS] + ["run_time"],
        "jobs": [c.name for c in JOB_COLUMNS],
        "logs": [c.name for c in LOG_COLUMNS],
    }
