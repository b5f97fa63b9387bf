# payment-worker: the workers under supervisord (supervisord.conf), in one container.
#
#   docker build -t payment-worker .
#   docker run --rm -e DATABASE_URL=postgresql://... -e STRIPE_API_KEY=sk_test_... \
#       [-e RIVER_WORKER_COUNT=4] payment-worker
#
# tini is PID 1: it hands SIGTERM to supervisord, which stops the workers (each finishes
# the jobs in hand: stopwaitsecs=40, so stop with a grace period above that, e.g.
# `docker stop -t 45`), and it reaps orphaned processes. Every log line goes to stdout.
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies before code: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt /tmp/requirements.txt
RUN python -m venv "$VIRTUAL_ENV" \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin app

WORKDIR /app
COPY common/ ./common/
COPY worker/ ./worker/
COPY metrics/ ./metrics/
COPY supervisord.conf ./
# The code stays root's, read-only to the app user; the app dir itself is the user's,
# because supervisord puts its socket and pidfile next to supervisord.conf (%(here)s).
RUN python -m compileall -q common worker metrics \
    && chown app:app /app

# USER rather than dropping privileges at start (su, gosu): the runtime then hands the
# container's stdout to this user, and supervisord reopens /dev/stdout for every log.
# Numeric, so that Kubernetes' runAsNonRoot can verify it: 10001 is app.
EXPOSE 9187
USER 10001:10001
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["supervisord", "-c", "supervisord.conf"]
