#!/usr/bin/env bash
# Runs every test of rollgate: unit, property, CLI, agent, host-fleet (network namespaces) and
# Kubernetes (a real control plane built from Go modules). Installs and starts what the tests need.
# Network-namespace tests need root; without root they skip with a message.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  for pkg in iproute2:ip nginx:nginx jq:jq prometheus:prometheus curl:curl openssl:openssl nftables:nft util-linux:unshare systemd:systemctl chromium:chromium chromium-driver:chromedriver; do
    command -v "${pkg#*:}" >/dev/null || [ -x "/usr/sbin/${pkg#*:}" ] || need+=("${pkg%%:*}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]} from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi

# tests/packaging.rs builds the .deb with cargo-deb (pinned: it warns that --profile dev, which
# spares CI a release build, will become an error).
if [ "$(id -u)" = 0 ] && ! command -v cargo-deb >/dev/null; then
  log "installing cargo-deb"
  cargo install --locked --quiet cargo-deb --version 3.8.0
fi

if [ -x tests/cluster/cluster.sh ]; then
  log "Kubernetes control plane: build (cached) and start"
  tests/cluster/cluster.sh up
  trap 'tests/cluster/cluster.sh down || true' EXIT
fi

log "fuzz targets: build, replay the regression inputs, fuzz each briefly"
FUZZ_SECONDS="${FUZZ_SECONDS:-10}" fuzz/ci.sh

log "cargo test"
rm -f target/fault-matrix.tsv
status=0
cargo test --locked --all-targets -- --test-threads="${ROLLGATE_TEST_THREADS:-2}" || status=$?

log "Windows: the agent built for Windows, its unit tests and a rollout under Wine's SCM"
tests/windows/run.sh || status=$?

log "fault-injection matrix (what each fault test injected and found)"
tests/fault-table.sh
exit "$status"
