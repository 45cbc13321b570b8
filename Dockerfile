# syntax=docker/dockerfile:1
# radrouter on Debian bookworm with Python 3.11, CPU inference (onnxruntime): what
# `pip install radrouter` serves, no torch, no test tools.
#
#   docker build -t radrouter .
#   docker run -d --name radrouter -p 11112:11112 -p 8080:8080 \
#       -e RADROUTER_PACS_HOST=pacs.example -e RADROUTER_PACS_PORT=104 \
#       -e RADROUTER_PACS_AE_TITLE=PACS -v radrouter-data:/var/lib/radrouter radrouter
#
# Environment variables, volumes, ports, upgrades and your own config: docs/deployment.md.
# The install steps (wheel, fresh environment, unprivileged user, container config) are
# tested without a container engine by tests/test_install.py.

# --- build: the radrouter wheel, and the wheels of everything it depends on --------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY . .
# --no-deps for radrouter itself would leave the final stage to reach the index; building
# every wheel here lets the final stage install offline (--no-index) from exactly these.
RUN pip wheel --wheel-dir /wheels . \
    && ls /wheels/radrouter-*.whl

# --- final: the wheels installed, run as an unprivileged user ----------------------------
FROM python:3.11-slim-bookworm
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

# A fixed uid/gid, so files in a volume or bind mount have a known owner across upgrades.
ARG RADROUTER_UID=10001
RUN groupadd --system --gid "${RADROUTER_UID}" radrouter \
    && useradd --system --uid "${RADROUTER_UID}" --gid radrouter --no-create-home \
       --home-dir /var/lib/radrouter --shell /usr/sbin/nologin radrouter

# The code stays root-owned and read-only to the service; the .pyc files are compiled at
# install time, so nothing is written next to the code at run time.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels radrouter

# The container config (ports on 0.0.0.0, PACS from the environment) is package data; it is
# copied to where a mounted config replaces it. Only the data volume belongs to the user.
RUN mkdir -p /etc/radrouter /var/lib/radrouter \
    && cp "$(python -c 'import config, pathlib; print(pathlib.Path(config.__file__).with_name("container.yaml"))')" \
          /etc/radrouter/radrouter.yaml \
    && chown radrouter:radrouter /var/lib/radrouter \
    && chmod 0750 /var/lib/radrouter

ENV RADROUTER_CONFIG=/etc/radrouter/radrouter.yaml
VOLUME /var/lib/radrouter
EXPOSE 11112 8080
WORKDIR /var/lib/radrouter
# Numeric, so an orchestrator can check "not root" (Kubernetes runAsNonRoot) without a lookup.
USER ${RADROUTER_UID}:${RADROUTER_UID}

# Ready = database reachable and every model the rules use loaded (503 until then).
# python's urllib: slim images have no curl. The first start loads the models: start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RADROUTER_HTTP_PORT', '8080') + '/readyz', timeout=4)"]

# `docker run IMAGE status`, `... demo-study /tmp/demo` etc. run other radrouter commands.
ENTRYPOINT ["radrouter"]
CMD ["serve"]
