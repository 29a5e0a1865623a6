"""The farm: every change to jobs, tasks, users and renders happens through it.

`Farm` is the state (state.py) with each concern mixed in from its own module:

- a task's life — submit, start, output, finish, retry, time limits, lost, re-attached:
  lifecycle.py (`TaskLife`)
- multi-host tasks (hosts gathered, primary and secondaries): multihost.py
- actions on jobs, tasks, users, renders: actions.py
- permissions, settings and input checks: policy.py
- read views (listings, dicts): views.py
- restore from the store: restore.py
- render pools and job branches: pools.py

Each change is published once on ``farm.bus`` (events.py). No I/O: time comes from the
clock passed in.
"""

from __future__ import annotations

from farmnet.model.actions import Actions
from farmnet.model.multihost import MultiHost
from farmnet.model.pools import PoolActions
from farmnet.model.restore import Restore
from farmnet.model.views import Views


class Farm(Actions, MultiHost, Views, Restore, PoolActions):
    pass


__all__ = ["Farm"]
