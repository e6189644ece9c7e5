# syntax=docker/dockerfile:1
# Activity Connector: Kafka activity events → SaaS bulk-import APIs.
# Build: docker build -t activity-connector .   Run: mount a config at /etc/activity-connector/connector.yaml.

# --- build: the connector's wheel and every dependency's, so the runtime stage needs no compiler --------
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY connector ./connector
COPY schemas ./schemas
RUN pip wheel --no-cache-dir --wheel-dir /wheels /src

# --- runtime: slim Python, a virtualenv from the wheels, a fixed non-root user ------------------------
FROM python:3.11-slim-bookworm
ARG UID=10001
COPY --from=build /wheels /wheels
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels activity-connector \
    && rm -rf /wheels \
    && useradd --system --uid "${UID}" --no-create-home --shell /usr/sbin/nologin connector
# Nothing is written at run time but to /tmp: the root filesystem may be read-only.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
WORKDIR /tmp
EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=2)"]
# Exec form: the connector is PID 1's only process, so SIGTERM reaches it and it shuts down gracefully.
ENTRYPOINT ["activity-connector"]
CMD ["run", "-c", "/etc/activity-connector/connector.yaml"]
