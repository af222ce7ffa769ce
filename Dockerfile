# The flow-runner image of the `previews` Docker work pool: Python 3.11, Prefect and this project.
# Build it with `scripts/runner-image`: it makes the base image (debootstrap + docker import) when missing and
# a build context holding this file, `wheels/` (every dependency, built by pip on the host), `docker-cli/`
# (the client binary of Debian's docker.io package) and `src/` (the project), so the build below needs no
# network and no registry.
#
# Non-root: the flow runs as uid 10001. Its PR builds talk to the host engine through the mounted
# /var/run/docker.sock, which is root:docker 660 on Debian; give the container the socket's group at run time
# (job variable `container_create_kwargs: {group_add: ["<gid of the socket>"]}`, see prefect.yaml). Anyone who
# can use that socket is root on the host in effect: run the pool on a dedicated build host or point
# DOCKER_HOST at a rootless or remote engine.
ARG BASE_IMAGE=previews-runner-base:bookworm-2

FROM ${BASE_IMAGE} AS build
COPY wheels/ /tmp/wheels/
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
        --compile --find-links /tmp/wheels /tmp/wheels/*.whl \
    && /opt/venv/bin/pip uninstall --yes --disable-pip-version-check pip setuptools
COPY src/ /opt/previews/
RUN python3 -m compileall -q -j 0 /opt/previews/previews /opt/previews/flows /opt/previews/blocks

FROM ${BASE_IMAGE}
# The flow's builds run this client (Debian's docker.io 20.10: BuildKit with DOCKER_BUILDKIT=1, no buildx needed).
COPY docker-cli/docker /usr/bin/docker
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/previews --shell /usr/sbin/nologin previews
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/previews /opt/previews
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    VIRTUAL_ENV=/opt/venv \
    PYTHONPATH=/opt/previews \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false
WORKDIR /opt/previews
USER 10001:10001
CMD ["prefect", "version"]
