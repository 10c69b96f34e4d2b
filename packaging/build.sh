#!/usr/bin/env bash
# Builds the release artifacts from a checkout, without make: the Debian package (release build,
# by cargo-deb from Cargo.toml's [package.metadata.deb]) and SHA256SUMS, into OUT (default dist/).
# Usage: packaging/build.sh [OUT [extra cargo-deb args...]]
# The Windows zip is not built yet (it needs the Windows cross-build of tests/windows/).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)
shift $(($# > 0 ? 1 : 0))

command -v cargo-deb >/dev/null || cargo install --locked cargo-deb --version 3.8.0
# `--version` prints this; a tarball without .git can pass it in.
ROLLGATE_GIT_COMMIT=${ROLLGATE_GIT_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
export ROLLGATE_GIT_COMMIT

version=$(cargo metadata --no-deps --format-version 1 --locked |
  sed -n 's/.*"name":"rollgate","version":"\([^"]*\)".*/\1/p')
rm -f "$out"/rollgate_*.deb "$out/SHA256SUMS"
cargo deb --locked -o "$out/" "$@"
cd "$out"
sha256sum rollgate_"$version"-*.deb >SHA256SUMS
cat SHA256SUMS
