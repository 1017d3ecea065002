# syntax=docker/dockerfile:1
#
# Two stages: the builder installs the service with the Makefile's own target (the path CI uses)
# at the versions pinned in constraints.txt; the runtime stage gets only the virtualenv and what
# `vipps-pos serve` reads at run time.
#
# The image runs in production mode: it refuses to start until every secret is the deployer's
# own (it names each missing or placeholder setting). See docker-compose.yml for the full list.
#
#   docker build -t vipps-pos .
#   docker run -p 127.0.0.1:8000:8000 --env-file production.env vipps-pos

FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN apt-get update \
    && apt-get install --yes --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY Makefile pyproject.toml constraints.txt README.md ./
COPY app ./app
# `make install-prod` = `python3 -m venv .venv && .venv/bin/pip install -c constraints.txt .`,
# stamped in .venv/.installed.
# The pip cache lives in a build cache mount, so it speeds up rebuilds without entering the image.
RUN --mount=type=cache,target=/root/.cache/pip make install-prod


FROM python:3.11-slim AS runtime

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIPPS_POS_ENVIRONMENT=production \
    VIPPS_POS_LOGGING__JSON_LOGS=true

RUN groupadd --system --gid 10001 vipps \
    && useradd --system --uid 10001 --gid vipps --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin vipps

WORKDIR /app
# The virtualenv keeps its absolute paths (/app/.venv, /usr/local/bin/python3.11): same in both stages.
COPY --from=builder /app/.venv /app/.venv
COPY app ./app
COPY alembic ./alembic
# alembic.ini is optional: the bracket glob copies it when present and is a no-op otherwise.
COPY pyproject.toml alembic.in[i] ./
# Code stays root-owned and read-only for the service; only var/ (SQLite, local state) is writable.
RUN mkdir -p /app/var && chown vipps:vipps /app/var

USER vipps
EXPOSE 8000

# Ready = the database answers and its schema is at head (/readyz); slim has no curl, and
# urlopen raises on anything but 2xx, which exits non-zero.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]

# Same start command as `make serve`: apply Alembic migrations, then uvicorn on 0.0.0.0:8000.
CMD ["/app/.venv/bin/vipps-pos", "serve"]
