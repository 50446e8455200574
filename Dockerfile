# syntax=docker/dockerfile:1
# One image for every medrobust process: `serve` (the default), `audit worker`, `audit run`, `train`.
#   docker build -t medrobust .
#   docker run -p 8000:8000 -e MEDROBUST_API_TOKEN -v "$PWD/model-repo:/models" medrobust
#   (serving on 0.0.0.0, it refuses to start without MEDROBUST_API_TOKEN unless --allow-anonymous)
#   docker run medrobust audit worker
# The compose stack (deploy/compose.yaml) and the Kubernetes base (deploy/k8s/) use this image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: a self-contained virtual environment with medrobust and its dependencies ----------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# binutils, for the `strip` below: in the builder only (the runtime stage copies the venv, not the
# tool). Unpinned: whatever the base's Debian release ships removes the same sections.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependencies first, from pyproject.toml alone: the heavy layer (TensorFlow) is rebuilt only when
# pyproject.toml changes, not on every source edit.
# The image has no GPU, so TensorFlow is `tensorflow-cpu` (the same `tensorflow` module, half the
# size: the image went from 2.8 GB to the size deploy/README.md gives). tensorflow-serving-api
# requires the package named `tensorflow`, so it is installed without its dependencies (grpcio
# and protobuf come in through the other requirements), and medrobust itself likewise below.
# Then, what runs nothing (the image's size, deploy/README.md):
# - libclang (64 MB): a requirement of tensorflow-cpu that nothing in TensorFlow imports (`clang`
#   is imported by no module but its own); `pip check` names it missing, and nothing runs that.
# - the static symbol tables and debug sections of the shared libraries (346 MB, 205 MB of them
#   libtensorflow_cc.so's `.symtab`): `strip --strip-unneeded` keeps `.dynsym`, all the dynamic
#   loader and dlsym read; only a debugger's or a crash symbolizer's names go. `--strip-debug` alone
#   would save 79 MB: TensorFlow's libraries have no debug sections, only symbol tables. Not the
#   `*.libs/` folders: auditwheel's grafted copies (numpy's and scipy's OpenBLAS, gfortran), which
#   patchelf rewrote, no longer load once stripped ("ELF load command address/offset not
#   page-aligned"); the import check below loads scipy.linalg and the rest to catch that.
# - the test suites of numpy, scipy, matplotlib and h5py (`tests/`, 54 MB): run only by pytest.
COPY pyproject.toml README.md* ./
RUN python -c "import re, tomllib; \
deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
name = lambda d: re.match(r'[A-Za-z0-9_.-]+', d)[0]; \
open('/tmp/requirements.txt', 'w').write('\n'.join('tensorflow-cpu' + d[len('tensorflow'):] if name(d) == 'tensorflow' else d for d in deps if name(d) != 'tensorflow-serving-api')); \
open('/tmp/no-deps.txt', 'w').write('\n'.join(d for d in deps if name(d) == 'tensorflow-serving-api'))" \
    && pip install --no-cache-dir --requirement /tmp/requirements.txt \
    && pip install --no-cache-dir --no-deps --requirement /tmp/no-deps.txt \
    && pip uninstall --yes libclang \
    && find /opt/venv -type f \( -name '*.so' -o -name '*.so.*' \) -not -path '*.libs/*' \
        -exec strip --strip-unneeded {} + \
    && site="$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    && for package in numpy scipy matplotlib h5py; do \
        find "$site/$package" -type d -name tests -prune -exec rm -r {} +; \
    done

COPY medrobust/ medrobust/
COPY training/ training/
COPY service/ service/
COPY audit/ audit/
# psycopg2 is the driver behind MEDROBUST_DATABASE_URL=postgresql+psycopg2://... in the stack;
# it is not a dependency of the package itself (SQLite needs none). TensorFlow's C++ headers
# (290 MB) only serve compiling custom ops, which nothing in the image does. The imports load the
# stripped libraries the processes use (TensorFlow, gRPC, scipy's BLAS, Pillow, imagecodecs, the
# DICOM decoders, h5py) and the psycopg2 driver.
RUN pip install --no-cache-dir --no-deps . "psycopg2-binary==2.9.13" \
    && medrobust --help > /dev/null \
    && python -c "import tensorflow, tensorflow_serving.apis.prediction_service_pb2_grpc, service.tfserving, service.overlay, audit.sweep, scipy.linalg, h5py, libjpeg, openjpeg, rle, psycopg2" \
    && rm -r "$(python -c 'import os, tensorflow; print(os.path.dirname(tensorflow.__file__))')/include"

# ---- runtime: slim Python, the venv, a non-root user -----------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="medrobust" \
      org.opencontainers.image.description="Train, serve, explain and audit the adversarial robustness of medical image classifiers" \
      org.opencontainers.image.licenses="Apache-2.0"

# Foolbox imports GitPython, which refuses to import without a git executable (the image has none,
# and Foolbox's model zoo, the one user of git, is not used); matplotlib's cache goes to /tmp, the
# home folder being read-only where the image runs hardened.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MEDROBUST_MODEL_REPO=/models \
    PROMETHEUS_MULTIPROC_DIR=/tmp/medrobust-metrics \
    GIT_PYTHON_REFRESH=quiet \
    MPLCONFIGDIR=/tmp/matplotlib

# A fixed uid/gid so volumes (the model repository) can be chowned to it from outside the image.
# The home, which deployments mount a tmpfs on, is mode 1777: Docker's tmpfs is a fresh 1777 folder,
# but podman's copies the image's folder up and keeps its mode, not its owner, so a 0755 home would
# become root's and unwritable to uid 10001. The server makes PROMETHEUS_MULTIPROC_DIR itself.
RUN groupadd --system --gid 10001 medrobust \
    && useradd --system --uid 10001 --gid medrobust --home-dir /home/medrobust --create-home \
       --shell /usr/sbin/nologin medrobust \
    && install -d -o medrobust -g medrobust /models \
    && chmod 1777 /home/medrobust

COPY --from=builder /opt/venv /opt/venv

# Numeric, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/medrobust

# 8000: the front end (gunicorn); 9101: the audit worker's /metrics and /healthz.
EXPOSE 8000 9101

# curl is not in the slim image; Python's urllib is. The audit worker overrides the URL
# (compose and Kubernetes set their own checks); `train` containers disable it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["medrobust"]
CMD ["serve", "--model-repo", "/models", "--host", "0.0.0.0", "--port", "8000"]
