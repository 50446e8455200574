"""The images the container tests run, built here from what a Debian machine has.

No image registry is reachable from CI, so `python:3.11-slim-bookworm` cannot be pulled: a stand-in
with Debian's Python 3.11 is made by mmdebstrap and imported into podman once, tagged by a hash of
its package list (a changed list is a new image; an unchanged one is never rebuilt). The project's
image is then built from the unchanged Dockerfile, overriding only `PYTHON_IMAGE`; podman's layer
cache makes a rebuild on unchanged sources a matter of seconds.

The build reaches the package index over the host's network, with the host's pip configuration
(its files and PIP_* variables, as `pip config list` reports them) and CA certificates mounted
read-only, so it installs from wherever the host's pip does.

The audit store's PostgreSQL is Debian's package installed on that same stand-in (`postgres_image`),
its cluster made when the image is built.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.project import PROJECT

SUITE = "bookworm"  # the Debian release of python:3.11-slim-bookworm, whose place the stand-in takes
PYTHON_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
PROJECT_IMAGE = "localhost/medrobust:test"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # where Debian (host and stand-in alike) keeps it

# The audit store's PostgreSQL: Debian's package (PostgreSQL 15 on bookworm) on the same stand-in,
# standing in for compose's `postgres` service, with compose's database and user.
POSTGRES_IMAGE = "localhost/medrobust-postgres:test"
POSTGRES_DB = POSTGRES_USER = "medrobust"
POSTGRES_PASSWORD = "container-test-password"
# The socket's folder: /tmp, a tmpfs in compose's `postgres` service (the official image's
# /var/run/postgresql, also a tmpfs there, is unwritable under podman, which makes a tmpfs nested in
# its own /run tmpfs root's, mode 1755).
POSTGRES_SOCKETS = "/tmp"

# Prometheus for compose's `prometheus` service: Debian's package on the same stand-in.
PROMETHEUS_IMAGE = "localhost/medrobust-prometheus:test"


# One build at a time per machine, as podman's image store is per machine: the test workers, and
# .ci/run's build started ahead of pytest, take turns on this lock; whoever comes second finds the
# images there (podman's layer cache makes the rebuild a matter of seconds).
BUILD_LOCK = Path(tempfile.gettempdir()) / "medrobust-podman-images.lock"


@contextlib.contextmanager
def build_lock():
    with BUILD_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@dataclass(frozen=True)
class Built:
    """An image and what building it cost."""

    tag: str
    seconds: float
    size_bytes: int


def podman(*args: str, timeout: float = 120, check: bool = True, nice: bool = False) -> subprocess.CompletedProcess:
    """`podman ARGS`, its output captured; a failure names the command and what podman said.
    `nice`: at low priority (builds share the machine's cores with the tests)."""
    done = subprocess.run(["nice"] * nice + ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(
            f"expected `podman {shlex.join(args)}` to succeed, got exit status {done.returncode}:\n"
            f"{done.stdout[-4000:]}{done.stderr[-4000:]}"
        )
    return done


def image_size(tag: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())


def base_image(packages: tuple[str, ...] = PYTHON_PACKAGES) -> str:
    """A minimal Debian image with `packages`, made once per package list; returns its tag."""
    key = hashlib.sha256(" ".join([SUITE, *sorted(packages)]).encode()).hexdigest()[:12]
    tag = f"localhost/medrobust-base:{SUITE}-{key}"
    if podman("image", "exists", tag, check=False).returncode == 0:
        return tag
    with tempfile.TemporaryDirectory(prefix="medrobust-base-") as scratch:
        tarball = Path(scratch) / "rootfs.tar"
        command = ["nice", "mmdebstrap", "--variant=minbase", f"--include={','.join(packages)}", SUITE, str(tarball)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"expected `{shlex.join(command)}` to build a root filesystem, got:\n{done.stderr[-4000:]}")
        podman("import", "--change", "CMD [\"/bin/bash\"]", str(tarball), tag, timeout=600)
    return tag


def pip_mounts(scratch: Path) -> list[str]:
    """`-v` arguments giving a build the host's pip configuration and certificates, read-only.

    The settings pip reports (every configuration file and PIP_* variable, the variables winning as
    they do for pip) go into one file mounted as the build's /etc/pip.conf. Local files they name
    (a CA bundle, a constraints file) are mounted at the same place, since pip stops without them;
    local folders (find-links, file:// indexes) are not: pip passes over a missing one, and the
    network index has every package. The host's CA bundle replaces the base image's, for pip's
    system trust store.
    """
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    sections: dict[str, dict[str, str]] = {}
    from_env: dict[str, str] = {}
    for line in listed.splitlines():
        name, _, quoted = line.partition("=")
        section, _, key = name.rpartition(".")
        value = " ".join(shlex.split(quoted))
        if section == ":env:":
            from_env[key] = value
        elif section and key:
            sections.setdefault(section, {})[key] = value
    sections.setdefault("global", {}).update(from_env)
    config = configparser.ConfigParser(interpolation=None)
    config.read_dict(sections)
    generated = scratch / "pip.conf"
    with generated.open("w") as handle:
        config.write(handle)
    mounts = {str(generated): "/etc/pip.conf"}
    for values in sections.values():
        for value in values.values():
            for word in value.split():
                if os.path.isabs(word) and os.path.isfile(word):
                    mounts[word] = word
    if os.path.isfile(os.environ.get("SSL_CERT_FILE", "")):
        mounts[os.environ["SSL_CERT_FILE"]] = CA_BUNDLE
    elif os.path.isfile(CA_BUNDLE):
        mounts[CA_BUNDLE] = CA_BUNDLE
    return [arg for host, inside in sorted(mounts.items()) for arg in ("-v", f"{host}:{inside}:ro")]


def project_image(base: str, tag: str = PROJECT_IMAGE) -> Built:
    """The project's image from its own Dockerfile on `base`, with HEALTHCHECK kept (docker format)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="medrobust-pip-") as scratch:
        command = [
            "build", "--network", "host", "--format", "docker", "--build-arg", f"PYTHON_IMAGE={base}",
            *pip_mounts(Path(scratch)), "--tag", tag, "--file", str(PROJECT / "Dockerfile"), str(PROJECT),
        ]
        podman(*command, timeout=3600, nice=True)
    return Built(tag, time.monotonic() - started, image_size(tag))


# apt on the Python stand-in rather than another mmdebstrap: the base is there already for the
# project's image, and installing one package on it took 35 s where a second root filesystem took
# over 3 minutes. Debian keeps each major version's programs in /usr/lib/postgresql/VERSION/bin,
# off the PATH (the wrappers in /usr/bin want clusters made by pg_createcluster); the glob fails the
# build if two versions are installed. The cluster is made at build time, so every container starts
# with the database and its user, and keeps what it writes in its own layer across `podman restart`.
# It listens on 127.0.0.1 unless told `-c listen_addresses=*` (compose's service on its network),
# and takes password logins from any address it listens on. SIGINT is PostgreSQL's fast shutdown: SIGTERM (smart)
# waits for the worker's pooled connections
# to close, which they never do, until podman kills the server.
_POSTGRES_CONTAINERFILE = """\
FROM {base}
RUN apt-get update --quiet \\
    && DEBIAN_FRONTEND=noninteractive apt-get install --quiet --yes --no-install-recommends postgresql \\
    && rm -rf /var/lib/apt/lists/* \\
    && ln -s /usr/lib/postgresql/*/bin /opt/postgresql-bin && /opt/postgresql-bin/postgres --version
ENV PATH=/opt/postgresql-bin:$PATH PGDATA=/var/lib/postgresql/data PGHOST={sockets}
USER postgres
RUN printf '%s\\n' '{password}' > /tmp/password \\
    && initdb --username={user} --pwfile=/tmp/password --auth-local=trust --auth-host=scram-sha-256 \\
       --encoding=UTF8 --locale=C \\
    && rm /tmp/password \\
    && printf "listen_addresses = '127.0.0.1'\\nunix_socket_directories = '{sockets}'\\n" >> "$PGDATA/postgresql.conf" \\
    && printf 'host all all all scram-sha-256\\n' >> "$PGDATA/pg_hba.conf" \\
    && pg_ctl --wait --options="-c listen_addresses=''" start \\
    && createdb --host={sockets} --username={user} --owner={user} {database} \\
    && pg_ctl --wait --mode=fast stop
STOPSIGNAL SIGINT
ENTRYPOINT ["postgres"]
"""


def postgres_image(base: str, tag: str = POSTGRES_IMAGE) -> Built:
    """PostgreSQL from Debian's package on `base` (from Debian's mirror, over the host's
    network), its cluster holding POSTGRES_DB owned by POSTGRES_USER (password POSTGRES_PASSWORD
    over TCP, trusted on its socket); its command takes the server's `-c` settings (`-c port=N`).
    Podman's layer cache makes a rebuild instant."""
    started = time.monotonic()
    containerfile = _POSTGRES_CONTAINERFILE.format(
        base=base, password=POSTGRES_PASSWORD, user=POSTGRES_USER, database=POSTGRES_DB, sockets=POSTGRES_SOCKETS,
    )
    with tempfile.TemporaryDirectory(prefix="medrobust-postgres-") as context:
        (Path(context) / "Containerfile").write_text(containerfile)
        podman("build", "--network", "host", "--format", "docker", "--tag", tag, context, timeout=900, nice=True)
    return Built(tag, time.monotonic() - started, image_size(tag))


# prom/prometheus' layout: the binary as entrypoint (compose gives the flags), the data in
# /prometheus (a fresh named volume copies the folder up with its owner), run unprivileged (the
# image's `nobody`, here the package's own user); wget for compose's healthcheck.
_PROMETHEUS_CONTAINERFILE = """\
FROM {base}
RUN apt-get update --quiet \\
    && DEBIAN_FRONTEND=noninteractive apt-get install --quiet --yes --no-install-recommends prometheus wget \\
    && rm -rf /var/lib/apt/lists/* \\
    && mkdir /prometheus && chown prometheus:prometheus /prometheus && prometheus --version
USER prometheus
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
"""


def prometheus_image(base: str, tag: str = PROMETHEUS_IMAGE) -> Built:
    """Prometheus from Debian's package on `base`, in the shape of prom/prometheus (entrypoint,
    /prometheus), for compose's `prometheus` service. Podman's layer cache makes a rebuild instant."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="medrobust-prometheus-") as context:
        (Path(context) / "Containerfile").write_text(_PROMETHEUS_CONTAINERFILE.format(base=base))
        podman("build", "--network", "host", "--format", "docker", "--tag", tag, context, timeout=900, nice=True)
    return Built(tag, time.monotonic() - started, image_size(tag))


def main() -> int:
    """`python -m tests.container.images`: build the stand-in base, the project's image and the
    PostgreSQL and Prometheus images, as the container tests would. .ci/run starts it before pytest, so the build
    (network and disk, mostly) overlaps the tests that need no container instead of holding a worker."""
    started = time.monotonic()
    with build_lock():
        base = base_image()
        for built in (project_image(base), postgres_image(base), prometheus_image(base)):
            print(f"image {built.tag}: {built.size_bytes / 1e9:.2f} GB, built in {built.seconds:.0f} s", flush=True)
    print(f"images ready in {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
