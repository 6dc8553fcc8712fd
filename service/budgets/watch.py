"""Which ingested events touch a budget's scope, so evaluation runs within seconds."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence

from service.budgets.schemas import Budget
from service.usage.schemas import UsageEvent

# (tenant_id, service, learner_id or "") of a stored event.
Triple = tuple[str, str, str]
# Which of (tenant, service, learner) a budget's scope names.
Mask = tuple[bool, bool, bool]
MASKS: tuple[Mask, ...] = tuple((t, s, lr) for t in (False, True) for s in (False, True) for lr in (False, True))


def _project(triple: Triple, mask: Mask) -> tuple[str, ...]:
    return tuple(value for value, named in zip(triple, mask, strict=True) if named)


def scope_mask(budget: Budget) -> Mask:
    scope = budget.scope
    return (bool(scope.tenant_id), bool(scope.service), bool(scope.learner_id))


def scope_values(budget: Budget) -> tuple[str, ...]:
    scope = budget.scope
    return tuple(v for v in (scope.tenant_id, scope.service, scope.learner_id) if v)


class Touched:
    """The scopes ingest wrote to since the last triggered pass: the distinct
    (tenant, service, learner) of the events stored.

    A budget may have changed by them when every field its scope names equals the
    event's (a global budget matches every event); a per-learner budget only by
    events that name a learner, and only for those learners.
    """

    def __init__(self, triples: Iterable[Triple] = ()) -> None:
        self.triples: set[Triple] = set(triples)
        self._index: dict[Mask, set[tuple[str, ...]]] | None = None
        self._learners: dict[Mask, dict[tuple[str, ...], set[tuple[str, str]]]] | None = None

    def add(self, events: Sequence[UsageEvent]) -> None:
        for event in events:
            self.triples.add((event.tenant_id, event.service, event.learner_id or ""))
        self._index = self._learners = None

    def __bool__(self) -> bool:
        return bool(self.triples)

    def __len__(self) -> int:
        return len(self.triples)

    def _build(self) -> None:
        index: dict[Mask, set[tuple[str, ...]]] = {mask: set() for mask in MASKS}
        learners: dict[Mask, dict[tuple[str, ...], set[tuple[str, str]]]] = {mask: {} for mask in MASKS}
        for triple in self.triples:
            for mask in MASKS:
                key = _project(triple, mask)
                index[mask].add(key)
                if triple[2] and not mask[2]:
                    learners[mask].setdefault(key, set()).add((triple[0], triple[2]))
        self._index, self._learners = index, learners

    def matches(self, budget: Budget) -> bool:
        """Whether an event written since may count towards `budget`."""
        if budget.per_learner and not budget.scope.learner_id:
            return bool(self.learners(budget))
        if self._index is None:
            self._build()
        assert self._index is not None
        return scope_values(budget) in self._index[scope_mask(budget)]

    def learners(self, budget: Budget) -> set[tuple[str, str]]:
        """For a per-learner budget: the (tenant, learner) pairs written to inside its scope."""
        if self._learners is None:
            self._build()
        assert self._learners is not None
        return self._learners[scope_mask(budget)].get(scope_values(budget), set())


class BudgetWatch:
    """An in-memory index of budget scopes; `notify` triggers evaluation when an event matches,
    and records what it touched for the triggered pass (`drain`).

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
        self._loaded: Sequence[Budget] | None = None
        self._lock = threading.Lock()
        self._touched = Touched()

    def load(self, budgets: Sequence[Budget]) -> None:
        if budgets is self._loaded:  # the evaluation pass's cached list: nothing changed
            self._stale = False
            return
        enabled = [b for b in budgets if b.enabled]
        self.has_global = any(not (b.scope.tenant_id or b.scope.service or b.scope.learner_id) for b in enabled)
        self.tenants = {b.scope.tenant_id for b in enabled if b.scope.tenant_id}
        self.services = {b.scope.service for b in enabled if b.scope.service and not b.scope.tenant_id}
        self.learners = {
            b.scope.learner_id for b in enabled if b.scope.learner_id and not b.scope.tenant_id and not b.scope.service
        }
        self._loaded = budgets
        self._stale = False

    def changed(self) -> None:
        """A budget changed: evaluate now (the pass reloads this index)."""
        self._stale = True
        self._trigger()

    def drain(self) -> Touched | None:
        """What the next triggered pass must evaluate, and start collecting afresh;
        None means every budget (the index is stale: a budget changed)."""
        with self._lock:
            touched, self._touched = self._touched, Touched()
            stale = self._stale
        return None if stale else touched

    def notify(self, events: Sequence[UsageEvent]) -> None:
        """Called after each ingest write with the events it stored."""
        if not events:
            return
        if self._stale or self.has_global:
            self._record(events)
            self._trigger()
            return
        matching = [
            event
            for event in events
            if event.tenant_id in self.tenants
            or event.service in self.services
            or (event.learner_id is not None and event.learner_id in self.learners)
        ]
        if matching:
            self._record(matching)
            self._trigger()

    def _record(self, events: Sequence[UsageEvent]) -> None:
        with self._lock:
            self._touched.add(events)
