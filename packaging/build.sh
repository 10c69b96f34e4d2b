#!/usr/bin/env bash
# Builds the release artifacts from a checkout, without make, into OUT (default dist/): the Debian
# package (release build, by cargo-deb from Cargo.toml's [package.metadata.deb]), the Windows zip
# (release build by the Windows cross-build, packaging/windows/), and SHA256SUMS for both.
# Usage: packaging/build.sh [OUT [extra cargo-deb args...]]
# The Windows zip needs Debian's rustc-web, rust-web-src and mingw (`tests/windows/run.sh setup`
# installs them as root); without them it is skipped with a message. ROLLGATE_NO_WINDOWS=1 skips it.
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
rm -f "$out"/rollgate_*.deb "$out"/rollgate-*-windows-*.zip "$out/SHA256SUMS"
# The completions and the man page come from the binary itself (assets of the .deb).
cargo build --release --locked --bins
packaging/generate.sh target/release/rollgate target/release/generated
cargo deb --locked -o "$out/" "$@"
(cd "$out" && sha256sum rollgate_"$version"-*.deb >SHA256SUMS)

if [ -n "${ROLLGATE_NO_WINDOWS:-}" ]; then
  echo "packaging/build.sh: the Windows zip skipped (ROLLGATE_NO_WINDOWS)"
elif [ -x /usr/bin/rustc ] && [ -d /usr/lib/rustlib/src/rust/library ] && command -v x86_64-w64-mingw32-gcc >/dev/null; then
  win_target=${ROLLGATE_WINDOWS_TARGET:-$HOME/.cache/rollgate/windows-target}
  ROLLGATE_WINDOWS_TARGET=$win_target packaging/windows/cargo.sh build --release --bin rollgate-agent --bin rollgate
  packaging/windows/zip.sh "$win_target/x86_64-pc-windows-gnu/release" "$out" >/dev/null
else
  echo "packaging/build.sh: the Windows zip skipped: needs rustc-web, rust-web-src and gcc-mingw-w64-x86-64 (tests/windows/run.sh setup)"
fi
cat "$out/SHA256SUMS"
