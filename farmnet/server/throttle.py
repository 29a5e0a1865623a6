"""Failed logins back off per address, and are logged at a bounded rate.

A wrong render secret or password costs its address: after ``free_failures`` failures
each further one refuses that address for a growing time (1 s, 2 s, 4 s ... up to
``max_delay``), without even checking what it sends, so guessing goes at a few tries a
minute instead of thousands a second, however many connections it opens. A right
secret after the refusal time works; an address quiet for ``forget_after`` starts afresh.
The table keeps at most ``max_addresses`` addresses (the least recently failed go first),
so a flood of addresses costs bounded memory.

The log gets the first failure of an interval as it happens and, at the interval's end,
one summary line of the rest: at most two lines per ``log_interval`` whatever the rate.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from farmnet import errors

__all__ = ["LoginThrottle"]

log = Logger()


@attrs.define
class _Address:
    failures: int = 0
    #: Attempts from the address are refused unchecked until this time.
    refused_until: float = 0.0
    last_failure: float = 0.0


class LoginThrottle:
    """Per-address backoff of failed logins (AMP Hello and the web alike)."""

    def __init__(self, clock: IReactorTime, *, free_failures: int = 5, max_delay: float = 60.0,
                 forget_after: float = 900.0, max_addresses: int = 10_000,
                 log_interval: float = 60.0) -> None:
        self.clock = clock
        self.free_failures = free_failures
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.max_addresses = max_addresses
        self.log_interval = log_interval
        self._addresses: OrderedDict[str, _Address] = OrderedDict()
        #: Failures and refusals since the interval's first line, per address (bounded).
        self._unlogged: Counter[str] = Counter()
        self._unlogged_total = 0
        self._summary: IDelayedCall | None = None
        self._stopped = False

    def __len__(self) -> int:
        return len(self._addresses)

    def _entry(self, address: str) -> _Address | None:
        entry = self._addresses.get(address)
        if entry is not None and self.clock.seconds() - entry.last_failure > self.forget_after:
            del self._addresses[address]
            return None
        return entry

    def check(self, address: str) -> None:
        """Raise PermissionDenied while ``address`` is backed off (its attempt is not checked)."""
        entry = self._entry(address)
        now = self.clock.seconds()
        if entry is not None and now < entry.refused_until:
            self._note(address, "", "")
            wait = math.ceil(entry.refused_until - now)
            raise errors.PermissionDenied(
                f"too many failed logins from {address}: try again in {wait} s")

    def failed(self, address: str, who: str, reason: str) -> None:
        """A wrong secret or password from ``address``; ``who`` and ``reason`` for the log."""
        now = self.clock.seconds()
        entry = self._entry(address) or _Address()
        self._addresses.pop(address, None)
        entry.failures += 1
        entry.last_failure = now
        beyond = entry.failures - self.free_failures
        if beyond > 0:
            entry.refused_until = now + min(self.max_delay, 2.0 ** (beyond - 1))
        self._addresses[address] = entry  # the most recently failed last
        while len(self._addresses) > self.max_addresses:
            self._addresses.popitem(last=False)
        self._note(address, who, reason)

    def _note(self, address: str, who: str, reason: str) -> None:
        if self._summary is None and not self._stopped:  # the first of an interval: logged now
            if who:
                log.warn("refused {who} from {address}: {reason} (more failed logins are summed up "
                         "every {interval} s)", who=who, address=address, reason=reason,
                         interval=self.log_interval)
            else:
                log.warn("refused a login from {address}: backing off after failed logins", address=address)
            self._summary = self.clock.callLater(self.log_interval, self._log_summary)
            return
        self._unlogged_total += 1
        if address in self._unlogged or len(self._unlogged) < self.max_addresses:
            self._unlogged[address] += 1

    def _log_summary(self) -> None:
        self._summary = None
        total, self._unlogged_total = self._unlogged_total, 0
        counts, self._unlogged = self._unlogged, Counter()
        now = self.clock.seconds()
        if not total:
            return  # a quiet interval: the next failure is logged as it happens
        top = ", ".join(f"{address} ({count})" for address, count in counts.most_common(3))
        log.warn("{total} more failed or refused logins in {interval} s from {addresses} address(es); "
                 "most from {top}; {backing_off} address(es) backing off",
                 total=total, interval=self.log_interval, addresses=len(counts), top=top,
                 backing_off=sum(1 for e in self._addresses.values() if e.refused_until > now))
        if not self._stopped:
            self._summary = self.clock.callLater(self.log_interval, self._log_summary)

    def stop(self) -> None:
        """No more timers (the server is stopping); what was not summed up yet is logged now."""
        self._stopped = True
        if self._summary is not None:
            if self._summary.active():
                self._summary.cancel()
            self._summary = None
            self._log_summary()
