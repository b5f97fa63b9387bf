# payment-worker: the workers under supervisord (supervisord.conf), in one container.
#
#   docker build -t payment-worker .
#   docker run --rm -e DATABASE_URL=postgresql://admin@db.example/payment_worker \
#       payment-worker deploy-schema              # first, and after every upgrade
#   docker run --stop-timeout 45 -e DATABASE_URL=postgresql://... \
#       -e STRIPE_API_KEY=sk_test_... [-e RIVER_WORKER_COUNT=4] payment-worker
#
# DATABASE_URL's host is seen from inside the container: localhost is the container
# itself (README: "Running in a container").
#
# tini is PID 1: it hands SIGTERM to supervisord, which stops the workers (each gives the
# jobs in hand 20 s and exits within 30 s, leaving unfinished ones to be rescued;
# supervisord's stopwaitsecs=40), so stop with a grace period above that:
# `docker run --stop-timeout 45`, `docker stop -t 45`, Compose's stop_grace_period, the
# Kubernetes manifest's terminationGracePeriodSeconds. tini also reaps orphaned processes.
# Every log line goes to the container's stdout through common.relay (see CMD).
#
# The base image is pinned by digest, so a rebuild gets the same bytes until this line is
# changed on purpose. To move it, `docker buildx imagetools inspect python:3.11-slim`
# prints the tag's current digest.
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

# sqitch (with its PostgreSQL driver, and psql, which its pg engine runs) for
# deploy-schema.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini sqitch libdbd-pg-perl postgresql-client \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies before code: this layer is rebuilt only when the lock changes. Every
# package, transitive ones too, is pinned and hash-checked (`make lock` regenerates it).
COPY requirements.lock /tmp/requirements.lock
RUN python -m venv "$VIRTUAL_ENV" \
    && pip install --require-hashes -r /tmp/requirements.lock \
    && rm /tmp/requirements.lock

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin app

WORKDIR /app
COPY common/ ./common/
COPY worker/ ./worker/
COPY metrics/ ./metrics/
COPY webhooks/ ./webhooks/
COPY supervisord.conf ./
COPY schema/ ./schema/
COPY deploy/deploy_schema.py ./deploy/
# /app and the code stay root's: the app user can read and run them, never replace them.
# supervisord.conf writes its socket, pidfile and the workers' metrics files under
# %(here)s/.run: here a root-owned link to /run/payment-worker, the one directory the
# user owns (Kubernetes mounts an emptyDir there, so the root filesystem can be read-only).
# supervisord.workers.conf, which supervisord.conf includes, is the checkout's link to
# .run/workers.conf, where worker-scaler writes RIVER_WORKER_COUNT (worker/scaler.py).
RUN python -m compileall -q common worker metrics webhooks \
    && install -d -o app -g app -m 0700 /run/payment-worker \
    && ln -s /run/payment-worker /app/.run \
    && ln -s .run/workers.conf /app/supervisord.workers.conf \
    && ln -s /app/deploy/deploy_schema.py /usr/local/bin/deploy-schema

# In a container the exporter must be reachable from Prometheus; its default is loopback.
ENV METRICS_HOST=0.0.0.0

# Healthy while the exporter's /healthz says 200: the database answers, a worker beat
# within METRICS_HEARTBEAT_MAX_AGE (30 s) and none of its loops stalled. The start
# period covers a worker's start and its first beat.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "metrics.healthcheck"]

# USER rather than dropping privileges at start (su, gosu). Numeric, so that Kubernetes'
# runAsNonRoot can verify it: 10001 is app.
# The exporter, and the Stripe webhook receiver.
EXPOSE 9187 8080
USER 10001:10001
ENTRYPOINT ["/usr/bin/tini", "--"]
# supervisord reopens /dev/stdout for its log and every program's, which fails when the
# runtime's stdout pipe is not the app user's: common.relay gives it a pipe of the app
# user's own and copies it to the container's stdout (and forwards tini's SIGTERM).
CMD ["python", "-m", "common.relay", "supervisord", "-c", "supervisord.conf"]
