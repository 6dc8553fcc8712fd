"""Ingest throughput, as ratios against baselines measured in the same run.

Run by `make bench` as `.venv/bin/python benchmarks/ingest.py`. Three phases:

1. Single events: requests/s of a bare Litestar app that decodes the same JSON
   into a msgspec Struct and echoes it, against the real `POST /usage-events`
   (JWT auth, validation, pricing, group-commit write: with the embedded engine an
   fdatasync'd append to the ingest journal, which the service moves into chDB with an
   INSERT at most every INGEST_MOVE_INTERVAL_MS). The phase ends by reading the number of
   stored events back through GET /costs/query: it must equal the acknowledged ones. Each app runs
   under uvicorn in its own subprocess with the same options; the load comes
   from this process over keep-alive HTTP/1.1 connections to 127.0.0.1.
2. Batches: events/s of `POST /usage-events/batch` (1,000-event batches)
   against a raw columnar INSERT of the same rows through clickhouse-connect
   into a `usage_events` table migrated on a separate chDB path in this
   process (chDB allows one engine path per process).
3. The price calculator alone: `PriceBook.price_for` + `Price.cost` over
   prepared events with a realistic model mix.

Timings are printed, never asserted: a slow figure says "below target" and the
exit code stays 0. The script exits non-zero only when it cannot measure (a
server that does not start, a phase whose requests fail).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.util
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec
import uvicorn
from litestar import Litestar, get, post

from benchmarks.report import render_table, say, verdict
from service.auth.principal import Principal, Role
from service.auth.tokens import issue_token
from service.pricing import catalog as catalog_module
from service.pricing.calculator import PriceBook
from service.pricing.catalog import (
    Catalog,
    CatalogPrice,
    LongContextRates,
    load_bundled_catalog,
    parse_catalog,
)
from service.pricing.overrides import PricingState
from service.settings import IngestSettings
from service.storage.clickhouse import ClickHouse
from service.storage.migrations import migrate
from service.usage.demo import synthetic_events
from service.usage.ingest import EVENT_COLUMNS, GroupCommitBuffer, Ingestor, _columns
from service.usage.schemas import UsageEvent, UsageEventIn

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
JWT_SECRET = "finops-bench-" + "0123456789abcdef" * 3
DATABASE = "bench"

# Targets: the real path as a share of its in-run baseline, and an absolute pricing rate.
SINGLE_TARGET = 0.60
BATCH_TARGET = 0.40
CALCULATOR_TARGET = 200_000.0

Loop = Literal["uvloop", "asyncio"]
Http = Literal["httptools", "h11"]


# -- payloads ------------------------------------------------------------------

# How callers also name the demo's models: dated snapshots, Gemini's `models/` prefix,
# Bedrock cross-region inference profiles. The calculator resolves each to the catalog name.
_MODEL_VARIANTS: dict[str, tuple[str, ...]] = {
    "gpt-4o-mini": ("gpt-4o-mini-2024-07-18",),
    "gpt-4o": ("gpt-4o-2024-08-06",),
    "gemini-1.5-flash": ("models/gemini-1.5-flash-002", "gemini-1.5-flash-latest"),
    "gemini-1.5-pro": ("gemini-1.5-pro-002",),
    "anthropic.claude-3-5-sonnet-20240620-v1:0": ("us.anthropic.claude-3-5-sonnet-20240620-v1:0",),
}


def usage_events(count: int, *, seed: int, days: int) -> list[UsageEventIn]:
    """`count` realistic events (tenants, services, learners, model mix), each with its own event_id.

    Built on `service.usage.demo.synthetic_events`; one event in ten names its model the
    way many clients do (snapshot suffix, prefix), and one chat event in twenty carries a
    long prompt (long-context rates for Gemini 1.5)."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:10]
    out: list[UsageEventIn] = []
    for index, event in enumerate(synthetic_events(count, seed=seed, days=days, now=datetime.now(UTC))):
        changes: dict[str, Any] = {"event_id": f"bench-{run}-{index}", "metadata": {"source": "finops-bench"}}
        variants = _MODEL_VARIANTS.get(event.model)
        if variants and rng.random() < 0.1:
            changes["model"] = rng.choice(variants)
        if event.provider == "gemini" and event.output_tokens and rng.random() < 0.05:
            changes["input_tokens"] = rng.randint(130_000, 400_000)
        out.append(msgspec.structs.replace(event, **changes))
    return out


def event_json(event: UsageEventIn) -> dict[str, Any]:
    """The event as a client sends it: fields it does not set are left out."""
    return {k: v for k, v in msgspec.to_builtins(event).items() if v is not None}


# -- fallback catalog ----------------------------------------------------------


def _price(
    provider: Literal["openai", "gemini", "bedrock"],
    model: str,
    since: str,
    region: str = "",
    *,
    long_context: LongContextRates | None = None,
    **rates: str,
) -> CatalogPrice:
    return CatalogPrice(
        provider=provider,
        model=model,
        region=region,
        effective_from=datetime.fromisoformat(since).replace(tzinfo=UTC),
        aliases=[],
        long_context=long_context,
        source="finops-bench fallback (list prices, approximate)",
        **{name: Decimal(value) for name, value in rates.items()},
    )


def fallback_catalog() -> list[CatalogPrice]:
    """List prices for the models the demo traffic uses (USD per 1M tokens)."""
    gemini_lc_flash = LongContextRates(
        threshold_tokens=128_000,
        input_per_mtok=Decimal("0.15"),
        output_per_mtok=Decimal("0.60"),
        cached_input_per_mtok=Decimal("0.0375"),
    )
    gemini_lc_pro = LongContextRates(
        threshold_tokens=128_000,
        input_per_mtok=Decimal("2.50"),
        output_per_mtok=Decimal("10.00"),
        cached_input_per_mtok=Decimal("0.625"),
    )
    return [
        _price(
            "openai",
            "gpt-4o-mini",
            "2024-07-18",
            input_per_mtok="0.15",
            output_per_mtok="0.60",
            cached_input_per_mtok="0.075",
            batch_discount_pct="50",
        ),
        _price(
            "openai",
            "gpt-4o",
            "2024-10-02",
            input_per_mtok="2.50",
            output_per_mtok="10.00",
            cached_input_per_mtok="1.25",
            batch_discount_pct="50",
        ),
        _price(
            "openai",
            "gpt-4.1-mini",
            "2025-04-14",
            input_per_mtok="0.40",
            output_per_mtok="1.60",
            cached_input_per_mtok="0.10",
            batch_discount_pct="50",
        ),
        _price("openai", "text-embedding-3-small", "2024-01-25", input_per_mtok="0.02", batch_discount_pct="50"),
        _price(
            "gemini",
            "gemini-1.5-flash",
            "2024-10-01",
            input_per_mtok="0.075",
            output_per_mtok="0.30",
            cached_input_per_mtok="0.01875",
            long_context=gemini_lc_flash,
        ),
        _price(
            "gemini",
            "gemini-2.0-flash",
            "2025-02-05",
            input_per_mtok="0.10",
            output_per_mtok="0.40",
            cached_input_per_mtok="0.025",
        ),
        _price(
            "gemini",
            "gemini-1.5-pro",
            "2024-10-01",
            input_per_mtok="1.25",
            output_per_mtok="5.00",
            cached_input_per_mtok="0.3125",
            long_context=gemini_lc_pro,
        ),
        _price(
            "bedrock",
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
            "2024-06-20",
            "us-east-1",
            input_per_mtok="3.00",
            output_per_mtok="15.00",
            batch_discount_pct="50",
        ),
        _price(
            "bedrock",
            "anthropic.claude-3-haiku-20240307-v1:0",
            "2024-03-07",
            "eu-central-1",
            input_per_mtok="0.25",
            output_per_mtok="1.25",
            batch_discount_pct="50",
        ),
        _price("bedrock", "amazon.titan-embed-text-v2:0", "2024-04-30", "us-west-2", input_per_mtok="0.02"),
        _price(
            "bedrock",
            "meta.llama3-1-70b-instruct-v1:0",
            "2024-07-23",
            "us-west-2",
            input_per_mtok="0.72",
            output_per_mtok="0.72",
            batch_discount_pct="50",
        ),
    ]


def load_catalog(workdir: Path) -> tuple[list[CatalogPrice], Path | None, str]:
    """The bundled catalog, or the in-script fallback written to a file the API can load.

    Returns (prices, file for the API to load instead of the bundled one or None, description)."""
    try:
        prices = load_bundled_catalog()
    except FileNotFoundError:
        reason = f"{catalog_module.BUNDLED_CATALOG.relative_to(ROOT)} is missing"
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        reason = f"{catalog_module.BUNDLED_CATALOG.relative_to(ROOT)} is not loadable ({exc})"
    else:
        return prices, None, f"bundled catalog ({len(prices)} prices)"
    prices = fallback_catalog()
    path = workdir / "fallback-catalog.json"
    path.write_bytes(msgspec.json.encode(Catalog(format="finops-catalog/1", prices=prices)))
    parse_catalog(path.read_bytes())  # the API will load it: check it is valid
    say(f"NOTE: {reason}; using the small in-script fallback catalog ({len(prices)} prices)")
    return prices, path, f"FALLBACK in-script catalog ({len(prices)} prices): {reason}"


def price_book(prices: Sequence[CatalogPrice]) -> PriceBook:
    return PriceBook.from_catalog([(p, 1) for p in prices])


# -- servers (subprocess side) -------------------------------------------------


def bare_app() -> Litestar:
    """One POST route that decodes the payload into the same Struct and returns it."""

    @post("/usage-events")
    async def echo(data: UsageEventIn) -> UsageEventIn:
        return data

    @get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return Litestar(route_handlers=[echo, health], openapi_config=None)


def real_app(catalog_file: str | None) -> Litestar:
    from service.app import create_app

    if catalog_file:
        # The bundled catalog is missing: the app syncs this one instead at start-up.
        catalog_module.BUNDLED_CATALOG = Path(catalog_file)
    return create_app()  # settings from the environment the parent set, migrations applied


def serve(target: str, port: int, loop: Loop, http: Http, catalog_file: str | None) -> int:
    app = bare_app() if target == "bare" else real_app(catalog_file)
    uvicorn.run(app, host=HOST, port=port, loop=loop, http=http, access_log=False, log_level="warning")
    return 0


# -- servers (benchmark side) --------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@functools.cache
def server_options() -> tuple[Loop, Http]:
    """uvicorn's fastest available event loop and HTTP parser, decided once per run for both apps."""
    loop: Loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http: Http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return loop, http


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def start_server(
    name: str, target: str, workdir: Path, env: dict[str, str], catalog_file: Path | None = None
) -> Server:
    loop, http = server_options()
    port = free_port()
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--serve",
        target,
        "--port",
        str(port),
        "--loop",
        loop,
        "--http",
        http,
    ]
    if catalog_file is not None:
        command += ["--catalog", str(catalog_file)]
    log = workdir / f"{name}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
        )
    say(f"{name}: uvicorn pid {process.pid} on {HOST}:{port} (1 worker, --loop {loop} --http {http})")
    return Server(name, process, port, log)


def stop_server(server: Server) -> None:
    process = server.process
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully: lifespan flushes, closes chDB
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    say(f"{server.name}: stopped (exit code {process.returncode})")


async def wait_healthy(server: Server, timeout_s: float = 90.0) -> None:
    deadline = time.perf_counter() + timeout_s
    request = f"GET /health HTTP/1.1\r\nHost: {HOST}:{server.port}\r\n\r\n".encode()
    last = "no answer"
    while time.perf_counter() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with code {server.process.returncode} before it was healthy:\n"
                + server.log_tail()
            )
        try:
            connection = Http1Connection(HOST, server.port)
            await connection.open()
            try:
                status, body = await connection.request(request)
            finally:
                connection.close()
            if status == 200:
                return
            last = f"{status} {body[:200]!r}"
        except OSError as exc:
            last = str(exc)
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{server.name} not healthy after {timeout_s:.0f}s ({last}):\n{server.log_tail()}")


# -- HTTP/1.1 load generator ---------------------------------------------------


class Http1Connection:
    """One keep-alive HTTP/1.1 connection sending prebuilt requests, one at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self._writer is None or self._reader is None:
            await self.open()
        reader, writer = self._reader, self._writer
        if reader is None or writer is None:
            raise ConnectionError("connection not open")
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        chunked = close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if chunked:
            body = await self._read_chunked(reader)
        else:
            body = await reader.readexactly(length) if length else b""
        if close:
            self.close()
        return status, body

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)


def get_request(port: int, path: str, token: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}:{port}", f"Authorization: Bearer {token}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def events_stored(server: Server) -> int:
    """Events the real server holds, read back through GET /costs/query (which first
    waits for everything acknowledged to be in ClickHouse)."""
    token = issue_token(JWT_SECRET, role=Role.ADMIN, subject="finops-bench", minutes=10)
    now = datetime.now(UTC)
    query = urlencode({"start": (now - timedelta(days=3)).isoformat(), "end": (now + timedelta(days=1)).isoformat()})
    connection = Http1Connection(HOST, server.port)
    try:
        status, body = await connection.request(get_request(server.port, f"/costs/query?{query}", token))
    finally:
        connection.close()
    if status != 200:
        raise RuntimeError(f"GET /costs/query answered {status}: {body[:300]!r}")
    return int(msgspec.json.decode(body)["total"]["events"])


def post_request(port: int, path: str, token: str | None, body: bytes) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {HOST}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class LoadResult:
    label: str
    sent: int
    seconds: float
    latencies: list[float]
    statuses: Counter[int]
    first_error: str | None = None
    timed_out: bool = False

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def rate(self) -> float:
        """Successful requests per second."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def describe(self) -> str:
        statuses = ", ".join(f"{status}: {n}" for status, n in sorted(self.statuses.items()))
        text = (
            f"{self.label}: {self.ok}/{self.sent} ok in {self.seconds:.2f}s = {self.rate:,.0f} req/s; "
            f"latency p50 {self.percentile(0.5) * 1000:.1f} ms, p95 {self.percentile(0.95) * 1000:.1f} ms "
            f"[{statuses}]"
        )
        if self.timed_out:
            text += " (stopped at the time limit)"
        return text


@dataclass
class LoadGenerator:
    """A fixed set of keep-alive connections, reused across runs (warm-up then measured)."""

    port: int
    concurrency: int
    connections: list[Http1Connection] = field(default_factory=list)

    async def open(self) -> None:
        self.connections = [Http1Connection(HOST, self.port) for _ in range(self.concurrency)]
        await asyncio.gather(*(c.open() for c in self.connections))

    def close(self) -> None:
        for connection in self.connections:
            connection.close()

    async def run(self, label: str, requests: Sequence[bytes], time_limit_s: float) -> LoadResult:
        todo = deque(requests)
        result = LoadResult(label, 0, 0.0, [], Counter())
        clock = time.perf_counter

        async def worker(connection: Http1Connection) -> None:
            while todo:
                raw = todo.popleft()
                result.sent += 1
                started = clock()
                try:
                    status, body = await connection.request(raw)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                    connection.close()
                    status, body = 0, repr(exc).encode()
                result.latencies.append(clock() - started)
                result.statuses[status] += 1
                if not 200 <= status < 300 and result.first_error is None:
                    result.first_error = f"{status}: {body[:300].decode(errors='replace')}"

        started = clock()
        try:
            async with asyncio.timeout(time_limit_s):
                await asyncio.gather(*(worker(c) for c in self.connections))
        except TimeoutError:
            result.timed_out = True
            for connection in self.connections:  # requests cut off mid-flight leave the stream unusable
                connection.close()
        result.seconds = clock() - started
        return result


# -- phase 1: single events ----------------------------------------------------


@dataclass
class SingleFigures:
    bare: LoadResult
    real: LoadResult
    acknowledged: int = 0
    stored: int = 0

    @property
    def ratio(self) -> float:
        return self.real.rate / self.bare.rate if self.bare.rate else 0.0


async def load_server(
    server: Server, label: str, warmup: Sequence[bytes], measured: Sequence[bytes], concurrency: int
) -> LoadResult:
    await wait_healthy(server)
    generator = LoadGenerator(server.port, concurrency)
    await generator.open()
    try:
        say(f"{label}: warm-up, {len(warmup)} requests over {concurrency} connections")
        warm = await generator.run(label + " warm-up", warmup, time_limit_s=120)
        if warm.ok < len(warmup):
            raise RuntimeError(f"{label}: warm-up failed: {warm.describe()}; first error {warm.first_error}")
        say(f"{label}: measuring {len(measured)} requests")
        result = await generator.run(label, measured, time_limit_s=180)
    finally:
        generator.close()
    say(result.describe())
    if result.first_error:
        say(f"{label}: first non-2xx answer: {result.first_error}")
    return result


def single_event_bodies(count: int) -> list[bytes]:
    return [msgspec.json.encode(event_json(e)) for e in usage_events(count, seed=11, days=1)]


def phase_single(
    workdir: Path, real_env: dict[str, str], catalog_file: Path | None, args: argparse.Namespace
) -> tuple[SingleFigures, Server]:
    """Returns the figures and the real server, left running for the batch phase."""
    say(f"phase 1/3 single events: starting ({args.requests} measured requests per app)")
    bodies = single_event_bodies(args.warmup + args.requests)  # distinct event_ids throughout
    token = issue_token(JWT_SECRET, role=Role.SERVICE, subject="finops-bench", minutes=60)

    bare = start_server("bare-litestar", "bare", workdir, dict(os.environ))
    try:
        requests = [post_request(bare.port, "/usage-events", None, b) for b in bodies]
        bare_result = asyncio.run(
            load_server(bare, "bare Litestar echo", requests[: args.warmup], requests[args.warmup :], args.concurrency)
        )
    finally:
        stop_server(bare)

    real = start_server("finops-api", "real", workdir, real_env, catalog_file)
    try:
        requests = [post_request(real.port, "/usage-events", token, b) for b in bodies]
        real_result = asyncio.run(
            load_server(
                real,
                "real POST /usage-events",
                requests[: args.warmup],
                requests[args.warmup :],
                args.concurrency,
            )
        )
    except BaseException:
        stop_server(real)
        raise
    try:
        stored = asyncio.run(events_stored(real))
    except BaseException:
        stop_server(real)
        raise
    acknowledged = args.warmup + real_result.ok
    say(f"real: {stored:,} events stored of {acknowledged:,} acknowledged (read back through GET /costs/query)")
    if stored != acknowledged:
        stop_server(real)
        raise RuntimeError(f"{acknowledged - stored} acknowledged events are missing from ClickHouse")
    figures = SingleFigures(bare_result, real_result, acknowledged, stored)
    say(f"phase 1/3 single events: done, real/bare = {figures.ratio:.1%} (target >= {SINGLE_TARGET:.0%})")
    return figures, real


# -- phase 2: batches ----------------------------------------------------------


@dataclass
class BatchFigures:
    api_events: int
    api_seconds: float
    api_batch: LoadResult
    raw_events: int
    raw_seconds: float

    @property
    def api_rate(self) -> float:
        return self.api_events / self.api_seconds if self.api_seconds else 0.0

    @property
    def raw_rate(self) -> float:
        return self.raw_events / self.raw_seconds if self.raw_seconds else 0.0

    @property
    def ratio(self) -> float:
        return self.api_rate / self.raw_rate if self.raw_rate else 0.0


def chunks(events: Sequence[UsageEventIn], size: int) -> list[list[UsageEventIn]]:
    return [list(events[i : i + size]) for i in range(0, len(events), size)]


async def api_batches(
    server: Server, warmup: Sequence[bytes], measured: Sequence[bytes], concurrency: int
) -> LoadResult:
    await wait_healthy(server)
    generator = LoadGenerator(server.port, concurrency)
    await generator.open()
    try:
        warm = await generator.run("batch warm-up", warmup, time_limit_s=180)
        if warm.ok < len(warmup):
            raise RuntimeError(f"batch warm-up failed: {warm.describe()}; first error {warm.first_error}")
        return await generator.run("POST /usage-events/batch", measured, time_limit_s=300)
    finally:
        generator.close()


def prepared_rows(events: Sequence[UsageEventIn], book: PriceBook) -> list[UsageEvent]:
    """The rows the API stores for these events (priced with the same catalog)."""
    no_buffer = cast(GroupCommitBuffer, None)  # prepare() never touches the buffer
    ingestor = Ingestor(PricingState(book), no_buffer, IngestSettings())
    principal = Principal(subject="finops-bench", role=Role.SERVICE, tenant_id=None)
    now = datetime.now(UTC)
    now = now.replace(microsecond=now.microsecond - now.microsecond % 1000)
    return [ingestor.prepare(event, principal, now) for event in events]


def raw_inserts(workdir: Path, warmup: Sequence[list[UsageEvent]], measured: Sequence[list[UsageEvent]]) -> float:
    """Seconds for columnar INSERTs of `measured` (after `warmup`) into a migrated chDB of our own."""
    db = ClickHouse(f"chdb://{workdir / 'raw-ch'}", DATABASE, pool_size=1, max_overflow=0)
    try:
        migrate(db)  # the same tables and materialized views the API writes through
        for rows in warmup:
            db.insert("usage_events", _columns(rows), EVENT_COLUMNS, column_oriented=True, label="bench.raw")
        started = time.perf_counter()
        for rows in measured:
            db.insert("usage_events", _columns(rows), EVENT_COLUMNS, column_oriented=True, label="bench.raw")
        seconds = time.perf_counter() - started
        stored = db.query("SELECT count() FROM usage_events", label="bench.count")[0][0]
        expected = sum(len(rows) for rows in (*warmup, *measured))
        if stored != expected:
            raise RuntimeError(f"raw insert stored {stored} rows, expected {expected}")
        return seconds
    finally:
        db.close()


def phase_batch(real: Server, workdir: Path, prices: Sequence[CatalogPrice], args: argparse.Namespace) -> BatchFigures:
    size, batches, warm_batches = args.batch_size, args.batches, 2
    say(
        f"phase 2/3 batches: starting ({batches} batches of {size} events, "
        f"{args.batch_concurrency} concurrent, after {warm_batches} warm-up batches)"
    )
    events = usage_events((warm_batches + batches) * size, seed=23, days=1)
    groups = chunks(events, size)
    token = issue_token(JWT_SECRET, role=Role.SERVICE, subject="finops-bench", minutes=60)
    bodies = [
        post_request(
            real.port,
            "/usage-events/batch",
            token,
            msgspec.json.encode({"events": [event_json(e) for e in group]}),
        )
        for group in groups
    ]
    size_kib = sum(map(len, bodies)) / len(bodies) / 1024
    say(f"API: sending {len(bodies)} batch requests ({size_kib:.0f} KiB each)")
    result = asyncio.run(api_batches(real, bodies[:warm_batches], bodies[warm_batches:], args.batch_concurrency))
    api_events = result.ok * size
    say(
        f"API: {api_events} events in {result.seconds:.2f}s = {api_events / result.seconds:,.0f} events/s; "
        f"per batch p50 {result.percentile(0.5) * 1000:.0f} ms, p95 {result.percentile(0.95) * 1000:.0f} ms"
    )
    if result.first_error:
        say(f"API: first non-2xx answer: {result.first_error}")

    say("raw insert: pricing the same rows, then migrating a separate chDB path in this process")
    book = price_book(prices)
    rows = [prepared_rows(group, book) for group in groups]
    raw_seconds = raw_inserts(workdir, rows[:warm_batches], rows[warm_batches:])
    raw_events = sum(len(r) for r in rows[warm_batches:])
    say(
        f"raw insert: {raw_events} events in {raw_seconds:.2f}s = {raw_events / raw_seconds:,.0f} events/s "
        f"({len(rows) - warm_batches} sequential column-oriented INSERTs of {size} rows)"
    )
    figures = BatchFigures(api_events, result.seconds, result, raw_events, raw_seconds)
    say(f"phase 2/3 batches: done, API/raw = {figures.ratio:.1%} (target >= {BATCH_TARGET:.0%})")
    return figures


# -- phase 3: calculator -------------------------------------------------------


@dataclass
class CalculatorFigures:
    events: int
    best_seconds: float
    runs: list[float]
    priced: int
    prepare_rate: float

    @property
    def rate(self) -> float:
        return self.events / self.best_seconds if self.best_seconds else 0.0


def phase_calculator(prices: Sequence[CatalogPrice], args: argparse.Namespace) -> CalculatorFigures:
    count = args.calc_events
    say(f"phase 3/3 calculator: starting (preparing {count:,} events)")
    book = price_book(prices)
    events = usage_events(count, seed=37, days=30)
    stamps = [e.timestamp.astimezone(UTC) if e.timestamp else datetime.now(UTC) for e in events]
    work = list(zip(events, stamps, strict=True))

    def run() -> tuple[float, int]:
        priced = 0
        price_for = book.price_for
        started = time.perf_counter()
        for event, at in work:
            price = price_for(event.provider, event.model, event.region, at)
            if price is not None and price.cost(event) is not None:
                priced += 1
        return time.perf_counter() - started, priced

    run()  # warm-up: fills the model-resolution cache
    runs: list[float] = []
    priced = 0
    for _ in range(3):
        seconds, priced = run()
        runs.append(seconds)
    say(
        "calculator: " + ", ".join(f"{count / s:,.0f}" for s in runs) + " events/s over 3 runs; "
        f"{priced:,} of {count:,} priced"
    )

    # For context: the whole per-event preparation the API does (rules, pricing, stored row).
    sample = events[: min(count, 50_000)]
    started = time.perf_counter()
    prepared_rows(sample, book)
    prepare_rate = len(sample) / (time.perf_counter() - started)
    say(f"calculator: Ingestor.prepare (rules + pricing + row) {prepare_rate:,.0f} events/s, for context")
    figures = CalculatorFigures(count, min(runs), runs, priced, prepare_rate)
    say(f"phase 3/3 calculator: done, {figures.rate:,.0f} events/s (target >= {CALCULATOR_TARGET:,.0f}/s)")
    return figures


# -- report --------------------------------------------------------------------


def summary(
    single: SingleFigures | None,
    batch: BatchFigures | None,
    calculator: CalculatorFigures | None,
    catalog_note: str,
) -> str:
    rows: list[tuple[str, str, str, str]] = []
    if single is not None:
        for label, result in (("bare Litestar echo", single.bare), ("POST /usage-events", single.real)):
            rows.append(
                (
                    f"single: {label}",
                    f"{result.rate:,.0f} req/s",
                    f"p50 {result.percentile(0.5) * 1000:.1f} ms / p95 {result.percentile(0.95) * 1000:.1f} ms",
                    "",
                )
            )
        rows.append(("single: stored / acknowledged", f"{single.stored:,} / {single.acknowledged:,}", "read back", ""))
        rows.append(
            (
                "single: real / bare",
                f"{single.ratio:.1%}",
                f">= {SINGLE_TARGET:.0%}",
                verdict(single.ratio >= SINGLE_TARGET),
            )
        )
    if batch is not None:
        rows.append(
            (
                "batch: POST /usage-events/batch",
                f"{batch.api_rate:,.0f} ev/s",
                f"p50 {batch.api_batch.percentile(0.5) * 1000:.0f} ms / batch",
                "",
            )
        )
        rows.append(("batch: raw columnar INSERT", f"{batch.raw_rate:,.0f} ev/s", "", ""))
        rows.append(
            (
                "batch: API / raw",
                f"{batch.ratio:.1%}",
                f">= {BATCH_TARGET:.0%}",
                verdict(batch.ratio >= BATCH_TARGET),
            )
        )
    if calculator is not None:
        rows.append(
            (
                "calculator: price_for + cost",
                f"{calculator.rate:,.0f} ev/s",
                f">= {CALCULATOR_TARGET:,.0f} ev/s",
                verdict(calculator.rate >= CALCULATOR_TARGET),
            )
        )
        rows.append(("calculator: Ingestor.prepare", f"{calculator.prepare_rate:,.0f} ev/s", "(context)", ""))
    loop, http = server_options()
    return render_table(
        rows,
        f"{os.cpu_count() or 0} CPU cores shared by the servers and the load generator; "
        f"uvicorn --loop {loop} --http {http}; {catalog_note}",
    )


# -- entry point ---------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=5000, help="measured single-event requests per app")
    parser.add_argument("--warmup", type=int, default=500, help="warm-up single-event requests per app")
    parser.add_argument(
        "--concurrency", type=int, default=64, help="single-event requests in flight (keep-alive connections)"
    )
    parser.add_argument("--batches", type=int, default=20, help="measured batch requests")
    parser.add_argument("--batch-size", type=int, default=1000, help="events per batch")
    parser.add_argument("--batch-concurrency", type=int, default=4, help="batch requests in flight")
    parser.add_argument("--calc-events", type=int, default=200_000, help="events for the calculator phase")
    # Internal: how the benchmark starts its servers in subprocesses.
    parser.add_argument("--serve", choices=["bare", "real"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="asyncio", help=argparse.SUPPRESS)
    parser.add_argument("--http", choices=["httptools", "h11"], default="h11", help=argparse.SUPPRESS)
    parser.add_argument("--catalog", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def real_environment(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CLICKHOUSE_URL=f"chdb://{workdir / 'api-ch'}",
        CLICKHOUSE_DATABASE=DATABASE,
        JWT_SECRET=JWT_SECRET,
        FINOPS_ENV="production",
    )
    return env


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        return serve(args.serve, args.port, args.loop, args.http, args.catalog)

    workdir = Path(tempfile.mkdtemp(prefix="finops-bench-"))
    single: SingleFigures | None = None
    batch: BatchFigures | None = None
    calculator: CalculatorFigures | None = None
    catalog_note = ""
    try:
        loop, http = server_options()
        say(f"finops-svc ingest benchmark; uvicorn --loop {loop} --http {http}; scratch dir {workdir}")
        prices, catalog_file, catalog_note = load_catalog(workdir)
        say(f"prices: {catalog_note}")
        single, real = phase_single(workdir, real_environment(workdir), catalog_file, args)
        try:
            batch = phase_batch(real, workdir, prices, args)
        finally:
            stop_server(real)
        calculator = phase_calculator(prices, args)
    except (RuntimeError, OSError) as exc:
        say(f"FAILED: {exc}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(summary(single, batch, calculator, catalog_note), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
