# syntax=docker/dockerfile:1
#
# One image for every role: `run` (the worker: Celery threads pool + command intake + outbox
# relay), `migrate`, `sandbox` (the local Stripe), and the operator commands (`status`,
# `consent`, `dlq`, …). The entrypoint is the `debit-worker` CLI; the default command is `run`.
#
#   docker build -t debit-worker .
#   docker run --rm -e DEBIT_WORKER_STRIPE_API_KEY=sk_test_… debit-worker run
#   docker run --rm debit-worker --help
#
# There is no HEALTHCHECK here on purpose: the right probe depends on the role (the sandbox
# answers HTTP, the worker answers a Celery ping, `migrate` exits). docker-compose.yml
# declares one per service; the image only guarantees what those probes need: `python` and
# the venv (with `celery`) on PATH, and no curl/wget dependency.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: resolve the locked dependencies into /app/.venv ---------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv

RUN pip install uv==0.13.9

WORKDIR /app

# Dependencies first (cached until pyproject.toml or uv.lock change), then the project.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project --no-editable

# README.md is the package's `readme` in pyproject.toml: the wheel build fails without it.
COPY README.md ./
COPY worker/ worker/
COPY schemas/ schemas/
RUN uv sync --frozen --no-dev --no-editable

# ---- runtime: the venv alone, as a non-root user ---------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN groupadd --system --gid 10001 debit \
    && useradd --system --uid 10001 --gid debit --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin debit

WORKDIR /app
# The project is installed non-editable: its code (migrations, sandbox seed, rule examples
# included) lives in the venv's site-packages, so nothing else from the build is needed.
COPY --from=build --chown=root:root /app/.venv /app/.venv

USER debit:debit

# The sandbox listens here when started with `sandbox --host 0.0.0.0 --port 12111`.
EXPOSE 12111

# Celery's worker treats SIGTERM as a warm shutdown: tasks in flight finish (give the container
# a grace period longer than one Stripe call; see stop_grace_period in docker-compose.yml).
STOPSIGNAL SIGTERM

ENTRYPOINT ["debit-worker"]
CMD ["run"]
