# finops-svc: one image for `finops serve` (the default), `finops worker` and `finops migrate`.
#   docker build -t finops-svc .
#   docker run -e JWT_SECRET=... -e CLICKHOUSE_URL=http://user:pass@clickhouse:8123/finops -p 8080:8080 finops-svc
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
# The project and every dependency as wheels, installed below without a compiler.
RUN pip wheel --wheel-dir /wheels .


FROM python:3.11-slim

# The migrations are not part of the installed package: FINOPS_MIGRATIONS_DIR points at them.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FINOPS_MIGRATIONS_DIR=/app/clickhouse/migrations \
    HOST=0.0.0.0 \
    PORT=8080

RUN groupadd --system --gid 10001 finops \
    && useradd --system --uid 10001 --gid finops --home-dir /app --shell /usr/sbin/nologin finops

COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels finops-svc && rm -rf /wheels

WORKDIR /app
COPY clickhouse/migrations ./clickhouse/migrations
# ./data holds the embedded engine when CLICKHOUSE_URL names no server
RUN mkdir -p /app/data && chown -R finops:finops /app/data

USER 10001:10001
EXPOSE 8080

# /health answers 503 when ClickHouse is unreachable or migrations are pending.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8080') + '/health', timeout=4)"]

ENTRYPOINT ["finops"]
CMD ["serve"]
