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
  install_debian_packages etcd-server postgresql-15 mariadb-server mariadb-client openssl
  if ! command -v s3s-fs >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
    echo "kyma: installing s3s-fs 0.14.1 (the test S3 server)" >&2
    cargo install --locked s3s-fs@0.14.1 --features binary
  fi
}

# The Python clients the tests drive kyma with (ADBC Flight SQL and pyarrow), pinned, in a
# virtualenv outside the clone, with the MongoDB test tools (mongomock evaluates the federation
# corpus's `$match` filters, query-node/tests/federation_mongodb.rs; mockupdb scripts a wire
# server). Exports KYMA_TEST_PYTHON for cli/tests/python_clients.rs and those tests.
install_python_clients() {
  install_debian_packages python3 python3-venv
  local venv="${XDG_CACHE_HOME:-$HOME/.cache}/kyma/venv"
  local pins=(adbc-driver-flightsql==1.13.0 adbc-driver-manager==1.13.0 pyarrow==26.0.1
    mongomock==4.3.0 pymongo==4.20.1 mockupdb==1.8.1)
  if ! "$venv/bin/python" -c 'import adbc_driver_flightsql, pyarrow, mongomock, mockupdb' >/dev/null 2>&1; then
    echo "kyma: installing the Python test clients into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
  fi
  export KYMA_TEST_PYTHON="$venv/bin/python"
}
