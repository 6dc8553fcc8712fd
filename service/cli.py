"""`finops`: serve, migrate, token, demo."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
from tqdm import tqdm

from service.auth.principal import Principal, Role
from service.auth.tokens import DEVELOPMENT_SECRET, issue_token
from service.errors import DataPathInUse, DomainError, StorageUnavailable
from service.logs import configure_logging
from service.settings import Settings, SettingsError, get_settings
from service.storage.clickhouse import embedded_path
from service.usage.schemas import UsageEventIn

log = logging.getLogger("finops")


class CommandError(Exception):
    """A failure the CLI reports in one line and exit code 1."""


def with_jwt_secret(settings: Settings) -> Settings:
    """Settings with a usable JWT secret, or a clear refusal outside development."""
    if settings.auth.jwt_secret:
        return settings
    if not settings.server.development:
        raise CommandError(
            "JWT_SECRET is not set. Set it to a long random value (e.g. `openssl rand -hex 32`), "
            "or run with FINOPS_ENV=development for a local development secret."
        )
    log.warning("FINOPS_ENV=development: using the built-in development JWT_SECRET; never use it in production")
    return dataclasses.replace(settings, auth=dataclasses.replace(settings.auth, jwt_secret=DEVELOPMENT_SECRET))


def api_answers(api_url: str) -> bool:
    """Whether a finops service answers at `api_url`."""
    try:
        httpx.get(api_url.rstrip("/") + "/health", timeout=1.0)
    except httpx.HTTPError:
        return False
    return True


def _held_message(settings: Settings) -> str:
    return (
        f"the embedded ClickHouse at {embedded_path(settings.database.url)} is held by a running "
        f"finops service; use its API at {settings.server.api_url}, or stop it and retry"
    )


# -- commands ----------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from service.app import create_app, open_database
    from service.storage.migrations import pending

    settings = with_jwt_secret(settings)
    host = args.host or settings.server.host
    port = args.port or settings.server.port
    try:
        db = open_database(settings)
    except DataPathInUse as exc:
        raise CommandError(exc.detail) from exc
    if args.no_migrate and pending(db):
        db.close()
        raise CommandError("migrations are pending: run `finops migrate` (or serve without --no-migrate)")
    app = create_app(settings, db=db, apply_migrations=not args.no_migrate)
    log.info("serving on http://%s:%d (docs at /docs)", host, port)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, log_config=None)
    return 0


def cmd_migrate(_: argparse.Namespace, settings: Settings) -> int:
    from service.app import open_database
    from service.pricing.catalog import sync_bundled_catalog
    from service.storage.migrations import migrate

    if settings.database.url.startswith("chdb:") and api_answers(settings.server.api_url):
        raise CommandError(_held_message(settings) + " (it applies migrations when it starts)")
    try:
        db = open_database(settings)
    except DataPathInUse as exc:
        raise CommandError(exc.detail) from exc
    try:
        applied = migrate(db, progress=lambda line: print(line, file=sys.stderr))
        added, changed = sync_bundled_catalog(db)
    finally:
        db.close()
    print(f"database {db.database}: {len(applied)} migrations applied, schema current")
    print(f"price catalog: {added} prices added, {changed} changed")
    return 0


def cmd_worker(_: argparse.Namespace, settings: Settings) -> int:
    from service.app import open_database
    from workers.settings import build_worker

    if not settings.redis_url:
        raise CommandError(
            "REDIS_URL is not set: without it `finops serve` runs every job in-process and needs no worker"
        )
    try:
        db = open_database(settings)
    except DataPathInUse as exc:
        raise CommandError(
            exc.detail + ". Workers beside an API need a ClickHouse server (CLICKHOUSE_URL=http://...)"
        ) from exc
    log.info("arq worker on %s", settings.redis_url.split("@")[-1])
    if settings.operations.worker_metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.operations.worker_metrics_port)
        log.info("worker metrics on :%d/metrics", settings.operations.worker_metrics_port)
    try:
        build_worker(settings, db=db).run()
    finally:
        db.close()
    return 0


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    settings = with_jwt_secret(settings)
    try:
        token = issue_token(
            settings.auth.jwt_secret,
            role=Role(args.role),
            tenant_id=args.tenant,
            subject=args.subject,
            minutes=args.minutes or settings.auth.jwt_expiration_minutes,
            algorithm=settings.auth.jwt_algorithm,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    print(token)
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from service.usage.demo import synthetic_events

    if args.events < 1:
        raise CommandError("--events must be at least 1")
    events = synthetic_events(args.events, seed=args.seed, days=args.days, now=datetime.now(UTC))
    if api_answers(settings.server.api_url):
        settings = with_jwt_secret(settings)
        stored, duplicates = _demo_through_api(settings, events, args.events, args.batch_size)
        where = f"through the API at {settings.server.api_url}"
    else:
        stored, duplicates = _demo_in_process(settings, events, args.events, args.batch_size)
        where = "in-process (no service answered at " + settings.server.api_url + ")"
    print(f"demo: {stored} events stored, {duplicates} duplicates, {where}")
    return 0


def _demo_through_api(
    settings: Settings, events: Iterator[UsageEventIn], total: int, batch_size: int
) -> tuple[int, int]:
    token = issue_token(settings.auth.jwt_secret, role=Role.SERVICE, subject="finops-demo", minutes=60)
    stored = duplicates = 0
    url = settings.server.api_url.rstrip("/") + "/usage-events/batch"
    batch: list[UsageEventIn] = []
    with (
        httpx.Client(timeout=120, headers={"Authorization": f"Bearer {token}"}) as client,
        tqdm(total=total, unit="ev", desc="demo") as bar,
    ):

        def send() -> None:
            nonlocal stored, duplicates
            response = client.post(
                url,
                content=msgspec.json.encode({"events": batch}),
                headers={"Content-Type": "application/json"},
            )
            if response.status_code == 401:
                raise CommandError(
                    "the running service refused the demo token (401): its JWT_SECRET differs from this shell's"
                )
            if response.status_code >= 300:
                raise CommandError(f"POST /usage-events/batch answered {response.status_code}: {response.text[:300]}")
            body = response.json()
            stored += body["accepted"]
            duplicates += body["duplicates"]
            bar.update(len(batch))
            batch.clear()

        for event in events:
            batch.append(event)
            if len(batch) >= batch_size:
                send()
        if batch:
            send()
    return stored, duplicates


def _demo_in_process(
    settings: Settings, events: Iterator[UsageEventIn], total: int, batch_size: int
) -> tuple[int, int]:
    from service.app import open_database, prepare_database
    from service.pricing.overrides import PricingState
    from service.usage.ingest import GroupCommitBuffer, Ingestor

    try:
        db = open_database(settings)
    except DataPathInUse as exc:
        raise CommandError(_held_message(settings)) from exc

    async def run() -> tuple[int, int]:
        book = prepare_database(db, settings, apply_migrations=True)
        buffer = GroupCommitBuffer(db, settings.ingest)
        buffer.start()
        ingestor = Ingestor(PricingState(book), buffer, settings.ingest)
        principal = Principal(subject="finops-demo", role=Role.SERVICE, tenant_id=None)
        stored = duplicates = 0
        batch: list[UsageEventIn] = []
        try:
            with tqdm(total=total, unit="ev", desc="demo") as bar:
                for event in events:
                    batch.append(event)
                    if len(batch) >= batch_size:
                        result = await ingestor.record_many(batch, principal)
                        stored, duplicates = stored + result.accepted, duplicates + result.duplicates
                        bar.update(len(batch))
                        batch = []
                if batch:
                    result = await ingestor.record_many(batch, principal)
                    stored, duplicates = stored + result.accepted, duplicates + result.duplicates
                    bar.update(len(batch))
        finally:
            await buffer.stop()
        return stored, duplicates

    try:
        return asyncio.run(run())
    finally:
        db.close()


def cmd_pricing(args: argparse.Namespace, settings: Settings) -> int:
    """`finops pricing update | import FILE | reprice`: through the running API when one answers."""
    body: bytes
    if args.action == "update":
        path, body, params = "/pricing/update", b"", ({"source": args.source} if args.source else {})
    elif args.action == "import":
        try:
            body = Path(args.file).read_bytes()
        except OSError as exc:
            raise CommandError(f"cannot read {args.file}: {exc.strerror}") from exc
        path, params = "/pricing/import", {}
    else:
        request = {
            "start": args.start,
            "end": args.end,
            "provider": args.provider,
            "model": args.model,
            "tenant_id": args.tenant,
        }
        path, params = "/pricing/reprice", {}
        body = msgspec.json.encode({k: v for k, v in request.items() if v})
    if api_answers(settings.server.api_url):
        settings = with_jwt_secret(settings)
        token = issue_token(settings.auth.jwt_secret, role=Role.ADMIN, subject="finops-cli", minutes=60)
        print(f"pricing {args.action}: through the API at {settings.server.api_url} ...", file=sys.stderr)
        response = httpx.post(
            settings.server.api_url.rstrip("/") + path,
            content=body,
            params=params,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=3600,
        )
        if response.status_code >= 300:
            raise CommandError(f"POST {path} answered {response.status_code}: {response.text[:500]}")
        result: Any = response.json()
    else:
        result = _pricing_in_process(args, settings, body)
    print(msgspec.json.format(msgspec.json.encode(result), indent=2).decode())
    return 0


def _pricing_in_process(args: argparse.Namespace, settings: Settings, body: bytes) -> Any:
    from service.alerts.senders import Senders
    from service.app import open_database, prepare_database
    from service.pricing.overrides import PricingState
    from service.pricing.reprice import RepriceIn
    from service.pricing.service import PricingService
    from service.pricing.sources.base import SourceError

    try:
        db = open_database(settings)
    except DataPathInUse as exc:
        raise CommandError(_held_message(settings)) from exc
    try:
        book = prepare_database(db, settings, apply_migrations=False)
        service = PricingService(
            db, PricingState(book), settings.pricing, Senders(settings.alerts), settings.ingest.bedrock_default_region
        )
        service.reload()
        if args.action == "update":
            try:
                return msgspec.to_builtins(service.update(args.source))
            except SourceError as exc:
                raise CommandError(str(exc)) from exc
        if args.action == "import":
            try:
                return msgspec.to_builtins(service.import_catalog(body))
            except (ValueError, msgspec.ValidationError) as exc:
                raise CommandError(f"invalid price catalog: {exc}") from exc
        try:
            request = msgspec.json.decode(body, type=RepriceIn)
        except msgspec.ValidationError as exc:
            raise CommandError(f"invalid range: {exc}") from exc
        if request.start.tzinfo is None or request.end.tzinfo is None or request.end <= request.start:
            raise CommandError("--end must be after --start, both with a time zone (e.g. 2026-11-01T00:00:00Z)")
        with tqdm(unit="ev", desc="reprice") as bar:

            def advance(examined: int) -> None:
                bar.update(examined - bar.n)

            summary = service.reprice(request, progress=advance)
        return msgspec.to_builtins(summary)
    finally:
        db.close()


# -- entry point -------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finops", description="finops-svc: AI inference cost metering.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the API (and in-process jobs without REDIS_URL)")
    serve.add_argument("--host", help="bind address (default HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default PORT or 8080)")
    serve.add_argument("--no-migrate", action="store_true", help="do not apply pending migrations at start")
    serve.set_defaults(handler=cmd_serve)

    migrate = sub.add_parser("migrate", help="apply pending ClickHouse migrations and load the price catalog")
    migrate.set_defaults(handler=cmd_migrate)

    worker = sub.add_parser("worker", help="run an arq worker for budget evaluation and summaries (needs REDIS_URL)")
    worker.set_defaults(handler=cmd_worker)

    pricing = sub.add_parser("pricing", help="keep prices current: update, import, reprice")
    actions = pricing.add_subparsers(dest="action", required=True)
    update = actions.add_parser("update", help="run the configured price sources now")
    update.add_argument("--source", help="only this source (litellm, openai, bedrock, gemini)")
    imported = actions.add_parser("import", help="import prices: our catalog format or a LiteLLM price map")
    imported.add_argument("file")
    again = actions.add_parser("reprice", help="recompute stored events' costs under today's prices")
    again.add_argument("--start", required=True, help="RFC 3339, inclusive")
    again.add_argument("--end", required=True, help="RFC 3339, exclusive")
    again.add_argument("--provider")
    again.add_argument("--model")
    again.add_argument("--tenant")
    pricing.set_defaults(handler=cmd_pricing)

    token = sub.add_parser("token", help="print a signed JWT")
    token.add_argument("--role", required=True, choices=[r.value for r in Role])
    token.add_argument("--tenant", help="tenant the token is limited to (required for tenant-admin and user)")
    token.add_argument("--subject", help="who the token stands for (default derived from role and tenant)")
    token.add_argument("--minutes", type=int, help="lifetime (default JWT_EXPIRATION_MINUTES)")
    token.set_defaults(handler=cmd_token)

    demo = sub.add_parser("demo", help="write realistic synthetic usage events")
    demo.add_argument("--events", type=int, default=10_000, help="how many events (default 10000)")
    demo.add_argument("--days", type=int, default=30, help="spread over the last N days (default 30)")
    demo.add_argument("--seed", type=int, default=7, help="random seed for the traffic mix")
    demo.add_argument("--batch-size", type=int, default=1000, help="events per batch request")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
        configure_logging(settings.operations.log_level, settings.operations.log_format)
        return int(args.handler(args, settings))
    except (CommandError, SettingsError) as exc:
        print(f"finops {args.command}: {exc}", file=sys.stderr)
        return 1
    except (StorageUnavailable, DomainError) as exc:
        print(f"finops {args.command}: {exc.detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
