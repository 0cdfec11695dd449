# One image per service, all built from this file and the repository root (so common/ is reachable):
#   docker build --build-arg SERVICE=model -t mlmonitor-model .
# docker-compose.yml passes SERVICE for each service.
#
# Layers, in the order they are invalidated:
#   the base (shared by every service's image)
#   -> the service's dependencies, from its lock only (make lock writes <service>/requirements.lock)
#   -> common/, installed without dependencies: editing it doesn't reinstall any dependency
#   -> the service's code.
FROM python:3.11-slim

# HOME on /tmp: the only writable place besides the mounted logs/ and models/ (read_only in compose).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HOME=/tmp

# The services run as this unprivileged user. Every file in the image stays root's, so it can't
# change them; it writes only to the mounted logs/ (metric, plot) and models/ (learn_model).
RUN groupadd --gid 10001 mlmonitor \
 && useradd --uid 10001 --gid mlmonitor --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin mlmonitor

# /app mirrors the repository root: the relative paths logs/ and models/ resolve to
# /app/logs and /app/models, the mounted volumes.
WORKDIR /app

ARG SERVICE
RUN test -n "$SERVICE" || { echo "build with --build-arg SERVICE=<service folder>, e.g. model" >&2; exit 1; }

# Every dependency, transitive ones and common's included, pinned with its hashes; wheels only, so
# no package's build code runs here.
COPY ${SERVICE}/requirements.lock /app/${SERVICE}/requirements.lock
RUN pip install --require-hashes --only-binary :all: -r ${SERVICE}/requirements.lock

# The shared package, its dependencies already in place; built with the locked setuptools, offline.
COPY common/pyproject.toml /app/common/pyproject.toml
COPY common/src /app/common/src
RUN pip install --no-deps --no-build-isolation --no-index -e ./common

# The service's code last, so a code edit rebuilds only this layer (dashboard/src holds the page's
# assets too, Chart.js included: nothing is fetched at run time).
COPY ${SERVICE}/src /app/${SERVICE}/src

USER 10001:10001
ENV MLMONITOR_SERVICE=${SERVICE}
# exec: python replaces the shell and gets docker stop's SIGTERM; -u: unbuffered, so logs reach
# `docker compose logs` at once.
CMD ["sh", "-c", "exec python -u \"$MLMONITOR_SERVICE/src/$MLMONITOR_SERVICE.py\""]
