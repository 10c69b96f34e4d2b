#!/usr/bin/env bash
# Cargo for x86_64-pc-windows-gnu on Debian: Debian's rustc-web and cargo-web by full path (rustup's
# toolchains have no rust-src; rustup stays the default for everything else), std rebuilt for the
# target from rust-web-src (-Zbuild-std), linked by mingw, niced (the machine is shared).
# Used by tests/windows/run.sh and packaging/build.sh.
#
# Usage: packaging/windows/cargo.sh SUBCOMMAND [ARGS...]
#   The target dir is $ROLLGATE_WINDOWS_TARGET (default ~/.cache/rollgate/windows-target);
#   tests run under Wine through tests/windows/wine-run.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TRIPLE=x86_64-pc-windows-gnu
sub=${1:?usage: packaging/windows/cargo.sh SUBCOMMAND [ARGS...]}
shift
export RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_DIR="${ROLLGATE_WINDOWS_TARGET:-$HOME/.cache/rollgate/windows-target}"
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
export CC_x86_64_pc_windows_gnu=x86_64-w64-mingw32-gcc
export AR_x86_64_pc_windows_gnu=x86_64-w64-mingw32-ar
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$ROOT/tests/windows/wine-run.sh"
cd "$ROOT"
exec nice -n 19 /usr/bin/cargo "$sub" --locked -Zbuild-std=std,panic_abort --target "$TRIPLE" "$@"
