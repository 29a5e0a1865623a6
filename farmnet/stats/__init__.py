"""Statistics: every task run, finished job and farm event, kept in PostgreSQL.

- :mod:`farmnet.stats.service`: ``StatsService(reactor, config, farm)``, the Twisted
  service the server runs (embedded PostgreSQL, recorder, writer, spool).
- :mod:`farmnet.stats.queries`: ``StatsQueries``, the read queries of the web site's
  statistics pages (``StatsService.queries``).
- :mod:`farmnet.stats.admin`: ``farmnet db check`` / ``farmnet db reset``.
- :mod:`farmnet.stats.db`: the one module wrapping txpostgres/psycopg2.
- :mod:`farmnet.stats.schema`, :mod:`~farmnet.stats.recorder`, :mod:`~farmnet.stats.spool`,
  :mod:`~farmnet.stats.embedded`, :mod:`~farmnet.stats.pgtest` (throwaway clusters for tests).

Import the submodules themselves: importing this package pulls in nothing (and no
database driver).
"""
