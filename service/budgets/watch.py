"""Which ingested events touch a budget's scope, so evaluation runs within seconds."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from service.budgets.schemas import Budget
from service.usage.schemas import UsageEvent


class Touched:
    """The scopes ingest wrote to since the last triggered pass."""


class BudgetWatch:
    """An in-memory index of budget scopes; `notify` triggers evaluation when an event matches.

    It over-approximates (a tenant with any budget matches all its events); the
    evaluation pass decides what actually crossed.
    """

    def __init__(self, trigger: Callable[[], None]) -> None:
        self._trigger = trigger
        self.has_global = False
        self.tenants: set[str] = set()
        self.services: set[str] = set()
        self.learners: set[str] = set()
        self._stale = True

    def load(self, budgets: Sequence[Budget]) -> None:
        enabled = [b for b in budgets if b.enabled]
        self.has_global = any(not (b.scope.tenant_id or b.scope.service or b.scope.learner_id) for b in enabled)
        self.tenants = {b.scope.tenant_id for b in enabled if b.scope.tenant_id}
        self.services = {b.scope.service for b in enabled if b.scope.service and not b.scope.tenant_id}
        self.learners = {
            b.scope.learner_id for b in enabled if b.scope.learner_id and not b.scope.tenant_id and not b.scope.service
        }
        self._stale = False

    def changed(self) -> None:
        """A budget changed: evaluate now (the pass reloads this index)."""
        self._stale = True
        self._trigger()

    def drain(self) -> Touched | None:
        """What the next triggered pass must evaluate, and start collecting afresh;
        None means every budget."""
        return None

    def notify(self, events: Sequence[UsageEvent]) -> None:
        """Called after each ingest write with the events it stored."""
        if self._stale or self.has_global:
            if events:
                self._trigger()
            return
        for event in events:
            if (
                event.tenant_id in self.tenants
                or event.service in self.services
                or (event.learner_id is not None and event.learner_id in self.learners)
            ):
                self._trigger()
                return
