"""The checks: each reads the window's usage and the catalog and returns suggestions.

Every figure is per tenant: groups, peers, baselines and distributions never mix
tenants, so a suggestion (and its evidence) is about one tenant only.

Savings are estimated at the catalog's list prices in force when the run
starts, for the window's volumes, and scaled to a 30-day month
(x 30 / window_days), rounded half-even to the cent. Spikes and learners use
the recorded cost instead (what was actually spent). Each suggestion is
estimated on its own; two about the same traffic do not add up.

The checks and their rules:

- model_selection/smaller_model: a group (tenant, service, provider, model,
  region) with at least MIN_EVENTS requests averaging at most
  SHORT_OUTPUT_TOKENS output and SMALL_PROMPT_TOKENS input tokens, whose model
  has a smaller sibling (`catalog_map.SMALLER`) priced in the same region.
  Savings: list cost on the current model - list cost on the sibling.
- batch_processing/steady_traffic: a group with at least MIN_EVENTS requests
  active in at least STEADY_HOURS of the 24 UTC hours of the day, whose busiest
  hour of the day holds at most PEAK_RATIO x the mean hour's requests (flat
  traffic around the clock is machine-driven, not people waiting), on a model
  with a batch discount. Savings: list cost of its non-batch requests x the
  discount.
- token_optimization/prompt_size: a group whose input tokens per request are
  at least PROMPT_PEER_RATIO x those of the tenant's other services on the same
  model (at least MIN_EVENTS requests each side). Savings: the input tokens
  above the peers' average x the input rate.
- token_optimization/long_context: requests whose prompt exceeds the model's
  long-context threshold (read from the raw events). Savings: their cost at
  the long-context rates - their cost at the base rates.
- token_optimization/prompt_caching: a group of at least MIN_EVENTS requests
  averaging at least CACHE_MIN_PROMPT input tokens, less than CACHE_LOW_SHARE
  of them read from the cache, on a model with a discounted cached-input
  rate. Savings: (CACHE_TARGET_SHARE x input tokens - cached tokens) x (input
  rate - cached rate).
- provider_switching/other_region and /same_family: the same model in another
  Bedrock region, or a newer model of the same family and size
  (`catalog_map.SAME_FAMILY`), priced lower. Savings: list cost now - list
  cost there (the cheapest such option).
- usage_patterns/spend_spike: per tenant and service, cost per UTC day from
  its first day with spend in the window to the window's end (days without
  spend count as 0; at least SPIKE_MIN_DAYS days). The baseline is the median
  day; a day costing more than SPIKE_RATIO x the baseline is a spike. Savings:
  the spike days' cost above the baseline, scaled to a month.
- usage_patterns/learner_outlier: per tenant with at least LEARNER_MIN_COUNT
  learners, a learner costing more than LEARNER_RATIO x the tenant's median
  learner (the LEARNER_TOP costliest such). Savings: its cost above that line.
- usage_patterns/unpriced: a group with events the catalog could not price.
  Savings are unknown ("0"): its spend is missing from every figure.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from service.money import money_str
from service.optimization.catalog_map import SAME_FAMILY, SMALLER
from service.optimization.data import GroupKey, WindowData
from service.optimization.pricing import ZERO, Prices, Volume, list_cost, per_mtok
from service.optimization.schemas import (
    Confidence,
    EvidenceQuery,
    Figure,
    Kind,
    Suggestion,
    SuggestionScope,
)
from service.pricing.calculator import Price

MONTH_DAYS = Decimal(30)
CENT = Decimal("0.01")
MIN_EVENTS = 20
SHORT_OUTPUT_TOKENS = 300
SMALL_PROMPT_TOKENS = 2000
STEADY_HOURS = 20
PEAK_RATIO = 2
PROMPT_PEER_RATIO = 3
CACHE_MIN_PROMPT = 1024
CACHE_LOW_SHARE = Decimal("0.10")
CACHE_TARGET_SHARE = Decimal("0.50")
SPIKE_RATIO = 3
SPIKE_MIN_DAYS = 7
LEARNER_MIN_COUNT = 5
LEARNER_RATIO = 5
LEARNER_TOP = 5
KIND_ORDER: dict[str, int] = {
    "model_selection": 0,
    "provider_switching": 1,
    "batch_processing": 2,
    "token_optimization": 3,
    "usage_patterns": 4,
}


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def usd(amount: Decimal) -> str:
    """Money for a sentence: dollars and cents."""
    cents = amount.quantize(CENT, rounding=ROUND_HALF_EVEN)
    if cents.is_zero() and not amount.is_zero():
        return "less than $0.01"
    return f"${cents:,}"


def average(total: int, count: int) -> Decimal:
    return (Decimal(total) / Decimal(count)).quantize(CENT, rounding=ROUND_HALF_EVEN) if count else ZERO


def avg_str(total: int, count: int) -> str:
    return money_str(average(total, count))


@dataclass
class Context:
    data: WindowData
    prices: Prices
    window_days: int

    def monthly(self, window_amount: Decimal) -> Decimal:
        return (window_amount * MONTH_DAYS / Decimal(self.window_days)).quantize(CENT, rounding=ROUND_HALF_EVEN)

    def query(self, **params: str) -> EvidenceQuery:
        window = {"start": iso(self.data.start), "end": iso(self.data.end)}
        return EvidenceQuery("/costs/query", {**window, **{k: v for k, v in params.items() if v}})

    def group_query(self, key: GroupKey, **extra: str) -> EvidenceQuery:
        return self.query(
            tenant_id=key.tenant_id,
            service=key.service,
            provider=key.provider,
            model=key.model,
            region=key.region,
            **extra,
        )

    def days_phrase(self) -> str:
        return f"the last {self.window_days} days"


def suggestion(
    kind: Kind,
    rule: str,
    scope: SuggestionScope,
    target: str,
    *,
    title: str,
    explanation: str,
    evidence: dict[str, Figure],
    monthly: Decimal,
    confidence: Confidence,
    query: EvidenceQuery,
) -> Suggestion:
    """A suggestion whose id depends only on what it is about, so it is stable across runs."""
    identity = "|".join(
        [
            kind,
            rule,
            scope.tenant_id,
            scope.service or "",
            scope.learner_id or "",
            scope.provider or "",
            scope.model or "",
            scope.region or "",
            target,
        ]
    )
    return Suggestion(
        id="opt_" + hashlib.sha256(identity.encode()).hexdigest()[:16],
        kind=kind,
        rule=rule,
        scope=scope,
        title=title,
        explanation=explanation,
        evidence=evidence,
        estimated_monthly_savings_usd=money_str(monthly),
        confidence=confidence,
        query=query,
    )


def group_scope(key: GroupKey) -> SuggestionScope:
    return SuggestionScope(
        tenant_id=key.tenant_id,
        service=key.service or None,
        provider=key.provider,
        model=key.model,
        region=key.region or None,
    )


def volume_evidence(volume: Volume) -> dict[str, Figure]:
    return {
        "events": volume.events,
        "input_tokens": volume.input_tokens,
        "output_tokens": volume.output_tokens,
        "cached_input_tokens": volume.cached_input_tokens,
        "avg_input_tokens": avg_str(volume.input_tokens, volume.events),
        "avg_output_tokens": avg_str(volume.output_tokens, volume.events),
        "cost_usd": money_str(volume.cost_usd),
    }


def priced_groups(ctx: Context) -> Iterable[tuple[GroupKey, Volume, Price]]:
    for key in sorted(ctx.data.groups):
        volume = ctx.data.groups[key]
        price = ctx.prices.current(key.provider, key.model, key.region)
        if price is not None and volume.events > volume.unpriced_events:
            yield key, volume, price


# -- model selection -------------------------------------------------------------


def model_selection(ctx: Context) -> list[Suggestion]:
    out = []
    for key, volume, price in priced_groups(ctx):
        target_name = SMALLER.get((key.provider, price.model))
        if target_name is None or volume.events < MIN_EVENTS:
            continue
        if (
            volume.output_tokens > SHORT_OUTPUT_TOKENS * volume.events
            or volume.input_tokens > SMALL_PROMPT_TOKENS * volume.events
        ):
            continue
        target = ctx.prices.current(key.provider, target_name, key.region)
        if target is None:
            continue
        now, then = list_cost(price.base, volume), list_cost(target.base, volume)
        if now is None or then is None or then >= now:
            continue
        monthly = ctx.monthly(now - then)
        if monthly < CENT:
            continue
        out.append(
            suggestion(
                "model_selection",
                "smaller_model",
                group_scope(key),
                target.model,
                title=f"Move {key.service}'s short requests from {key.model} to {target.model}",
                explanation=(
                    f"{key.service} sent {volume.events:,} requests to {key.model} averaging "
                    f"{avg_str(volume.input_tokens, volume.events)} input and "
                    f"{avg_str(volume.output_tokens, volume.events)} output tokens, short work that the smaller "
                    f"{target.model} usually handles. At list prices that traffic costs {usd(then)} on "
                    f"{target.model} instead of {usd(now)} over {ctx.days_phrase()}."
                ),
                evidence={
                    **volume_evidence(volume),
                    "list_cost_usd": money_str(now),
                    "target_model": target.model,
                    "target_list_cost_usd": money_str(then),
                    "input_per_mtok_usd": per_mtok(price.base.input),
                    "output_per_mtok_usd": per_mtok(price.base.output),
                    "target_input_per_mtok_usd": per_mtok(target.base.input),
                    "target_output_per_mtok_usd": per_mtok(target.base.output),
                    "price_version": price.version_id,
                    "target_price_version": target.version_id,
                },
                monthly=monthly,
                confidence="medium",
                query=ctx.group_query(key),
            )
        )
    return out


# -- batch processing ------------------------------------------------------------


def batch_processing(ctx: Context) -> list[Suggestion]:
    out = []
    for key, volume, price in priced_groups(ctx):
        multiplier = price.batch_multiplier
        if multiplier is None or multiplier >= 1 or volume.events < MIN_EVENTS:
            continue
        hours = ctx.data.hours.get(key, [0] * 24)
        active = sum(1 for events in hours if events)
        busiest = max(hours)
        if active < STEADY_HOURS or busiest * 24 > PEAK_RATIO * volume.events:
            continue
        batched = ctx.data.batched.get(key, Volume())
        waiting = volume.minus(batched)
        if waiting.events <= 0:
            continue
        now = list_cost(price.base, waiting)
        if now is None:
            continue
        saved = now * (1 - multiplier)
        monthly = ctx.monthly(saved)
        if monthly < CENT:
            continue
        discount = money_str((1 - multiplier) * 100)
        out.append(
            suggestion(
                "batch_processing",
                "steady_traffic",
                group_scope(key),
                "batch",
                title=f"Send {key.service}'s steady {key.model} traffic through the batch API",
                explanation=(
                    f"{key.service} calls {key.model} around the clock ({active} of 24 hours of the day, the busiest "
                    f"hour holding {busiest:,} of {volume.events:,} requests), a pattern of background work that can "
                    f"wait for the provider's batch API. Its {discount}% batch discount on the "
                    f"{waiting.events:,} requests sent one by one would have saved {usd(saved)} over "
                    f"{ctx.days_phrase()}."
                ),
                evidence={
                    **volume_evidence(volume),
                    "batch_events": batched.events,
                    "non_batch_events": waiting.events,
                    "active_hours_of_day": active,
                    "busiest_hour_events": busiest,
                    "mean_hour_events": avg_str(volume.events, 24),
                    "non_batch_list_cost_usd": money_str(now),
                    "batch_discount_pct": discount,
                    "price_version": price.version_id,
                },
                monthly=monthly,
                confidence="medium",
                query=ctx.group_query(key, granularity="hour"),
            )
        )
    return out


# -- token optimization ----------------------------------------------------------


def prompt_size(ctx: Context) -> list[Suggestion]:
    by_model: dict[tuple[str, str, str], list[tuple[GroupKey, Volume, Price]]] = defaultdict(list)
    for key, volume, price in priced_groups(ctx):
        by_model[(key.tenant_id, key.provider, price.model)].append((key, volume, price))
    out = []
    for members in by_model.values():
        for key, volume, price in members:
            if volume.events < MIN_EVENTS or price.base.input is None:
                continue
            peers = [v for k, v, _ in members if k.service != key.service]
            peer_events = sum(v.events for v in peers)
            peer_input = sum(v.input_tokens for v in peers)
            if peer_events < MIN_EVENTS or peer_input == 0:
                continue
            if volume.input_tokens * peer_events < PROMPT_PEER_RATIO * peer_input * volume.events:
                continue
            excess = Decimal(volume.input_tokens) - Decimal(volume.events) * Decimal(peer_input) / Decimal(peer_events)
            saved = excess * price.base.input
            monthly = ctx.monthly(saved)
            if monthly < CENT:
                continue
            ratio = Decimal(volume.input_tokens * peer_events) / Decimal(peer_input * volume.events)
            out.append(
                suggestion(
                    "token_optimization",
                    "prompt_size",
                    group_scope(key),
                    "",
                    title=f"Trim {key.service}'s prompts to {key.model}",
                    explanation=(
                        f"{key.service} sends {avg_str(volume.input_tokens, volume.events)} input tokens per request "
                        f"to {key.model}, {ratio.quantize(Decimal('0.1'), rounding=ROUND_HALF_EVEN)} times the "
                        f"{avg_str(peer_input, peer_events)} of this tenant's other services on the same model. "
                        f"Trimming prompts to their size would have saved {usd(saved)} over {ctx.days_phrase()}."
                    ),
                    evidence={
                        **volume_evidence(volume),
                        "peer_events": peer_events,
                        "peer_input_tokens": peer_input,
                        "peer_avg_input_tokens": avg_str(peer_input, peer_events),
                        "excess_input_tokens": money_str(excess.quantize(CENT, rounding=ROUND_HALF_EVEN)),
                        "input_per_mtok_usd": per_mtok(price.base.input),
                        "price_version": price.version_id,
                    },
                    monthly=monthly,
                    confidence="low",
                    query=ctx.query(
                        tenant_id=key.tenant_id,
                        provider=key.provider,
                        model=key.model,
                        group_by="service",
                    ),
                )
            )
    return out


def long_context(ctx: Context) -> list[Suggestion]:
    out = []
    for key, _, price in priced_groups(ctx):
        threshold, rates = price.long_context_threshold, price.long_context
        if threshold is None or rates is None:
            continue
        over = ctx.data.long_context.get((key, threshold))
        if over is None or over.events == 0:
            continue
        base, long = list_cost(price.base, over), list_cost(rates, over)
        if base is None or long is None or long <= base:
            continue
        monthly = ctx.monthly(long - base)
        if monthly < CENT:
            continue
        out.append(
            suggestion(
                "token_optimization",
                "long_context",
                group_scope(key),
                str(threshold),
                title=f"Keep {key.service}'s prompts to {key.model} under {threshold:,} tokens",
                explanation=(
                    f"{over.events:,} of {key.service}'s requests to {key.model} sent more than {threshold:,} input "
                    f"tokens, so the whole request was billed at the long-context rates. Splitting or trimming them "
                    f"below the threshold would have saved {usd(long - base)} over {ctx.days_phrase()}."
                ),
                evidence={
                    "long_context_events": over.events,
                    "long_context_input_tokens": over.input_tokens,
                    "long_context_output_tokens": over.output_tokens,
                    "avg_input_tokens": avg_str(over.input_tokens, over.events),
                    "threshold_tokens": threshold,
                    "cost_usd": money_str(over.cost_usd),
                    "base_rate_cost_usd": money_str(base),
                    "long_context_rate_cost_usd": money_str(long),
                    "input_per_mtok_usd": per_mtok(price.base.input),
                    "long_context_input_per_mtok_usd": per_mtok(rates.input),
                    "output_per_mtok_usd": per_mtok(price.base.output),
                    "long_context_output_per_mtok_usd": per_mtok(rates.output),
                    "price_version": price.version_id,
                },
                monthly=monthly,
                confidence="medium",
                query=ctx.group_query(key),
            )
        )
    return out


def prompt_caching(ctx: Context) -> list[Suggestion]:
    out = []
    for key, volume, price in priced_groups(ctx):
        rates = price.base
        if rates.input is None or rates.cached_input is None or rates.cached_input >= rates.input:
            continue
        if volume.events < MIN_EVENTS or volume.input_tokens < CACHE_MIN_PROMPT * volume.events:
            continue
        if volume.cached_input_tokens >= CACHE_LOW_SHARE * volume.input_tokens:
            continue
        more = CACHE_TARGET_SHARE * volume.input_tokens - volume.cached_input_tokens
        saved = more * (rates.input - rates.cached_input)
        monthly = ctx.monthly(saved)
        if monthly < CENT:
            continue
        share = average(volume.cached_input_tokens * 100, volume.input_tokens)
        out.append(
            suggestion(
                "token_optimization",
                "prompt_caching",
                group_scope(key),
                "",
                title=f"Cache the repeated start of {key.service}'s prompts to {key.model}",
                explanation=(
                    f"{key.service}'s prompts to {key.model} average {avg_str(volume.input_tokens, volume.events)} "
                    f"tokens but only {money_str(share)}% were read from the provider's cache, which bills them at "
                    f"{per_mtok(rates.cached_input)} instead of {per_mtok(rates.input)} USD per million. Putting the "
                    f"fixed instructions first so half the input is cached would have saved {usd(saved)} over "
                    f"{ctx.days_phrase()}."
                ),
                evidence={
                    **volume_evidence(volume),
                    "cached_share_pct": money_str(share),
                    "target_cached_share_pct": money_str(CACHE_TARGET_SHARE * 100),
                    "input_per_mtok_usd": per_mtok(rates.input),
                    "cached_input_per_mtok_usd": per_mtok(rates.cached_input),
                    "price_version": price.version_id,
                },
                monthly=monthly,
                confidence="low",
                query=ctx.group_query(key),
            )
        )
    return out


# -- provider switching ----------------------------------------------------------


def provider_switching(ctx: Context) -> list[Suggestion]:
    out = []
    for key, volume, price in priced_groups(ctx):
        now = list_cost(price.base, volume)
        if now is None:
            continue
        options: list[tuple[Decimal, str, Price]] = []
        for region in ctx.prices.regions(key.provider, price.model):
            if region == price.region:
                continue
            there = ctx.prices.current(key.provider, price.model, region)
            if there is not None and there.region == region:
                cost = list_cost(there.base, volume)
                if cost is not None:
                    options.append((cost, "other_region", there))
        for successor in SAME_FAMILY.get((key.provider, price.model), ()):
            there = ctx.prices.current(key.provider, successor, key.region)
            if there is not None:
                cost = list_cost(there.base, volume)
                if cost is not None:
                    options.append((cost, "same_family", there))
        if not options:
            continue
        cost, rule, best = min(options, key=lambda option: (option[0], option[2].model, option[2].region))
        if cost >= now:
            continue
        monthly = ctx.monthly(now - cost)
        if monthly < CENT:
            continue
        where = f"{best.model} in {best.region}" if best.region else best.model
        here = f"{price.model} in {price.region}" if price.region else price.model
        caveat = (
            "Check data-residency and latency needs before moving regions."
            if rule == "other_region"
            else "It is the same model family and size, in a newer release."
        )
        out.append(
            suggestion(
                "provider_switching",
                rule,
                group_scope(key),
                f"{best.provider}/{best.model}/{best.region}",
                title=f"Run {key.service}'s {price.model} traffic as {where}",
                explanation=(
                    f"The catalog prices {where} below {here}: {key.service}'s {volume.events:,} requests would have "
                    f"cost {usd(cost)} instead of {usd(now)} over {ctx.days_phrase()}. {caveat}"
                ),
                evidence={
                    **volume_evidence(volume),
                    "list_cost_usd": money_str(now),
                    "target_provider": best.provider,
                    "target_model": best.model,
                    "target_region": best.region,
                    "target_list_cost_usd": money_str(cost),
                    "input_per_mtok_usd": per_mtok(price.base.input),
                    "output_per_mtok_usd": per_mtok(price.base.output),
                    "target_input_per_mtok_usd": per_mtok(best.base.input),
                    "target_output_per_mtok_usd": per_mtok(best.base.output),
                    "price_version": price.version_id,
                    "target_price_version": best.version_id,
                },
                monthly=monthly,
                confidence="medium",
                query=ctx.group_query(key),
            )
        )
    return out


# -- usage patterns --------------------------------------------------------------


def median(values: list[Decimal]) -> Decimal:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def spend_spikes(ctx: Context) -> list[Suggestion]:
    out = []
    last_day = (ctx.data.end - timedelta(microseconds=1)).astimezone(UTC).date()
    for (tenant, service), by_day in sorted(ctx.data.daily.items()):
        spent = [day for day, cost in by_day.items() if cost > 0]
        if not spent:
            continue
        first = min(spent)
        days: list[date] = [first + timedelta(days=n) for n in range((last_day - first).days + 1)]
        if len(days) < SPIKE_MIN_DAYS:
            continue
        costs = [by_day.get(day, ZERO) for day in days]
        baseline = median(costs)
        if baseline <= 0:
            continue
        spikes = [(day, cost) for day, cost in zip(days, costs, strict=True) if cost > SPIKE_RATIO * baseline]
        if not spikes:
            continue
        excess = sum((cost - baseline for _, cost in spikes), ZERO)
        monthly = ctx.monthly(excess)
        if monthly < CENT:
            continue
        top_day, top_cost = max(spikes, key=lambda spike: (spike[1], spike[0]))
        out.append(
            suggestion(
                "usage_patterns",
                "spend_spike",
                SuggestionScope(tenant_id=tenant, service=service or None),
                "",
                title=f"Find out what drove {service}'s {len(spikes)} spend spike{'s' if len(spikes) > 1 else ''}",
                explanation=(
                    f"On {len(spikes)} of {len(days)} days {service} cost more than {SPIKE_RATIO} times its median "
                    f"day of {usd(baseline)} (the highest: {usd(top_cost)} on {top_day.isoformat()}). Those days "
                    f"cost {usd(excess)} above the median; if such spikes recur, preventing them saves about that "
                    "much a month."
                ),
                evidence={
                    "baseline_days": len(days),
                    "median_daily_cost_usd": money_str(baseline),
                    "spike_threshold_usd": money_str(SPIKE_RATIO * baseline),
                    "spike_days": len(spikes),
                    "highest_spike_day": top_day.isoformat(),
                    "highest_spike_cost_usd": money_str(top_cost),
                    "spike_cost_usd": money_str(sum((cost for _, cost in spikes), ZERO)),
                    "excess_cost_usd": money_str(excess),
                },
                monthly=monthly,
                confidence="low",
                query=ctx.query(tenant_id=tenant, service=service, granularity="day"),
            )
        )
    return out


def learner_outliers(ctx: Context) -> list[Suggestion]:
    out = []
    for tenant, learners in sorted(ctx.data.learners.items()):
        if len(learners) < LEARNER_MIN_COUNT:
            continue
        typical = median([cost for _, cost, _ in learners])
        if typical <= 0:
            continue
        line = LEARNER_RATIO * typical
        outliers = sorted(
            ((learner, cost, events) for learner, cost, events in learners if cost > line),
            key=lambda item: (-item[1], item[0]),
        )[:LEARNER_TOP]
        for learner, cost, events in outliers:
            monthly = ctx.monthly(cost - line)
            if monthly < CENT:
                continue
            out.append(
                suggestion(
                    "usage_patterns",
                    "learner_outlier",
                    SuggestionScope(tenant_id=tenant, learner_id=learner),
                    "",
                    title=f"Review {learner}'s usage",
                    explanation=(
                        f"{learner} cost {usd(cost)} over {ctx.days_phrase()}, "
                        f"{(cost / typical).quantize(Decimal('0.1'), rounding=ROUND_HALF_EVEN)} times the median "
                        f"learner of this tenant ({usd(typical)} across {len(learners):,} learners). A per-learner "
                        f"budget at {LEARNER_RATIO} times the median would cap {usd(cost - line)} of it."
                    ),
                    evidence={
                        "learner_cost_usd": money_str(cost),
                        "learner_events": events,
                        "tenant_learners": len(learners),
                        "median_learner_cost_usd": money_str(typical),
                        "outlier_threshold_usd": money_str(line),
                        "excess_cost_usd": money_str(cost - line),
                    },
                    monthly=monthly,
                    confidence="low",
                    query=ctx.query(tenant_id=tenant, learner_id=learner),
                )
            )
    return out


def unpriced(ctx: Context) -> list[Suggestion]:
    out = []
    for key in sorted(ctx.data.groups):
        volume = ctx.data.groups[key]
        if not volume.unpriced_events:
            continue
        out.append(
            suggestion(
                "usage_patterns",
                "unpriced",
                group_scope(key),
                "",
                title=f"Price {volume.unpriced_events:,} calls to {key.model}",
                explanation=(
                    f"{volume.unpriced_events:,} of {key.service}'s calls to {key.provider} {key.model} could not be "
                    "priced from the catalog, so their spend is missing from every cost figure. Correct the model "
                    "name the service reports, or add the model's price to the catalog."
                ),
                evidence={
                    "unpriced_events": volume.unpriced_events,
                    **volume_evidence(volume),
                },
                monthly=ZERO,
                confidence="high",
                query=ctx.group_query(key),
            )
        )
    return out


CHECKS: tuple[Callable[[Context], list[Suggestion]], ...] = (
    model_selection,
    batch_processing,
    prompt_size,
    long_context,
    prompt_caching,
    provider_switching,
    spend_spikes,
    learner_outliers,
    unpriced,
)


def rank(suggestions: Iterable[Suggestion]) -> list[Suggestion]:
    """Highest savings first; ties by kind, then id."""
    return sorted(
        suggestions,
        key=lambda s: (-Decimal(s.estimated_monthly_savings_usd), KIND_ORDER[s.kind], s.id),
    )


def analyse(data: WindowData, prices: Prices, window_days: int) -> list[Suggestion]:
    """Every check's suggestions for the window, ranked."""
    ctx = Context(data, prices, window_days)
    return rank(found for check in CHECKS for found in check(ctx))
