# syntax=docker/dockerfile:1
# gearmill job server in a container.
#
#   docker build -t gearmill .
#   docker run -d --name gearmill -p 4730:4730 -v gearmill-state:/var/lib/gearmill gearmill
#   docker exec gearmill gearmill admin --status
#
# Settings: GEARMILL_* variables (docker run -e GEARMILL_JOB_RETRIES=3 ...) or flags
# after the image name (docker run gearmill --job-retries 3). `docker stop` is
# gearmand's graceful stop (SIGUSR1): running jobs finish, for at most
# GEARMILL_GRACEFUL_TIMEOUT seconds (8 here, inside docker stop's default 10 s
# before SIGKILL); raise both together (docker stop -t, compose stop_grace_period).

ARG PYTHON_VERSION=3.11

# ---- build: the wheel with its compiled (mypyc) hot path, and its dependencies' wheels:
# [all], i.e. every store's driver (asyncpg, asyncmy, redis: GEARMILL_STORE=postgresql://...
# or gearmand's -q Postgres/MySQL/redis flags work in the image) and [http]'s h11 and
# prometheus_client, for --http on the exposed 8080
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY src ./src
# setup.py falls back to pure Python when compiling fails; here that is an error
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[all]' \
 && python -c "import glob, sys, zipfile; \
names = zipfile.ZipFile(glob.glob('/wheels/gearmill-*.whl')[0]).namelist(); \
sys.exit(0 if 'gearmill/_compiled.json' in names else 'the wheel has no compiled hot path')"

# ---- run: no compiler, a user of its own, the state folder as a volume
FROM python:${PYTHON_VERSION}-slim-bookworm
RUN groupadd --system --gid 10001 gearmill \
 && useradd --system --uid 10001 --gid gearmill --home-dir /var/lib/gearmill \
      --no-create-home --shell /usr/sbin/nologin gearmill \
 && install -d -o gearmill -g gearmill -m 0700 /var/lib/gearmill
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels 'gearmill[all]' \
 && python -c "import gearmill, sys; sys.exit(gearmill.IMPLEMENTATION != 'compiled')"
# In a container: listen on every interface, JSON log lines on stderr (docker logs),
# the start and stop lines and warnings.
ENV PYTHONUNBUFFERED=1 \
    GEARMILL_LISTEN=0.0.0.0 \
    GEARMILL_PORT=4730 \
    GEARMILL_LOG_FORMAT=json \
    GEARMILL_VERBOSE=WARNING \
    GEARMILL_GRACEFUL_TIMEOUT=8 \
    GEARMILL_STATE_DIR=/var/lib/gearmill
USER gearmill:gearmill
WORKDIR /var/lib/gearmill
# The state folder: background jobs in /var/lib/gearmill/queue.db (SQLite, the default
# store; GEARMILL_STORE names another); a named volume keeps it across containers.
VOLUME ["/var/lib/gearmill"]
# 4730: Gearman (binary and admin protocol); 8080: the HTTP listener (--http)
EXPOSE 4730 8080
STOPSIGNAL SIGUSR1
# Nagios codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; Docker knows only 0 and 1.
# It asks 127.0.0.1:4730; with another GEARMILL_PORT set GEARMAN_SERVER too.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD gearmill admin check || exit 1
ENTRYPOINT ["gearmill", "serve"]
