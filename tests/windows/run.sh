#!/usr/bin/env bash
# Windows on this Linux machine: builds the agent, the demo service and the library's unit tests
# for x86_64-pc-windows-gnu with Debian's rustc-web (its std rebuilt by -Zbuild-std, linked by
# mingw), runs the unit tests under Wine, then the end-to-end test: the Linux `rollgate` CLI
# against rollgate-agent.exe running as a service under Wine's SCM.
#
# Usage: tests/windows/run.sh [all|setup|build|unit|e2e|zip]   (default: all)
# Skips with a message (exit 0) where Debian's packages cannot be installed (not root, no apt).
# The Windows target dir is cached in ~/.cache/rollgate/windows-target (ROLLGATE_WINDOWS_TARGET);
# the Wine prefix lives in ~/.cache/rollgate/wine-prefix (ROLLGATE_WINEPREFIX).
# Every build and Wine run is niced: the machine is shared.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

TRIPLE=x86_64-pc-windows-gnu
CACHE="${HOME}/.cache/rollgate"
WIN_TARGET="${ROLLGATE_WINDOWS_TARGET:-$CACHE/windows-target}"
export WINEPREFIX="${ROLLGATE_WINEPREFIX:-$CACHE/wine-prefix}"
export WINEDEBUG="${WINEDEBUG:--all}"
# No Gecko or Mono install prompts in a headless prefix.
export WINEDLLOVERRIDES="${WINEDLLOVERRIDES:-mscoree,mshtml=}"
PACKAGES=(rustc-web cargo-web rust-web-src gcc-mingw-w64-x86-64 wine64 wine)

log() { printf '\n== windows: %s\n' "$*"; }
skip() {
  printf '\n== windows: SKIPPED: %s\n' "$*"
  exit 0
}
timed() {
  local what=$1 start=$SECONDS rc=0
  shift
  "$@" || rc=$?
  printf '== windows: %s took %ss\n' "$what" $((SECONDS - start))
  return "$rc"
}

have_tools() {
  [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] && /usr/bin/rustc --version | grep -q '^rustc 1\.9' &&
    [ -d /usr/lib/rustlib/src/rust/library ] &&
    command -v x86_64-w64-mingw32-gcc >/dev/null && command -v wine >/dev/null
}

setup_packages() {
  have_tools && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    skip "needs ${PACKAGES[*]} from Debian (bookworm, bookworm-security); not root or no apt-get here"
  fi
  log "installing ${PACKAGES[*]} from Debian's packages"
  apt-get -o DPkg::Lock::Timeout=900 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq \
    --no-install-recommends "${PACKAGES[@]}" >/dev/null || skip "apt-get could not install ${PACKAGES[*]}"
  have_tools || skip "the installed packages do not provide rustc 1.9x with rust-src, mingw and wine"
}

# Debian's cargo and rustc, std rebuilt for the target (packaging/windows/cargo.sh says how).
wcargo() {
  ROLLGATE_WINDOWS_TARGET="$WIN_TARGET" "$ROOT/packaging/windows/cargo.sh" "$@"
}

build() {
  mkdir -p "$WIN_TARGET"
  log "building rollgate-agent.exe, rollgate.exe and rollgate-demo.exe (cached in $WIN_TARGET)"
  timed "the Windows build of the binaries" wcargo build --bin rollgate-agent --bin rollgate --bin rollgate-demo
  log "building the library's unit tests for Windows"
  timed "the Windows build of the lib tests" wcargo test --lib --no-run
}

# The Wine prefix, with the ProcessPrng stand-in (Wine test scaffolding, see
# tests/windows/wine-processprng/processprng.c) in its system32.
setup_prefix() {
  local dll="$WIN_TARGET/wine-processprng/bcryptprimitives.dll"
  local src="$ROOT/tests/windows/wine-processprng"
  mkdir -p "$(dirname "$dll")"
  if [ ! -f "$dll" ] || [ "$src/processprng.c" -nt "$dll" ]; then
    x86_64-w64-mingw32-gcc -O2 -shared -o "$dll" "$src/processprng.c" "$src/bcryptprimitives.def" -lbcrypt
  fi
  if [ ! -f "$WINEPREFIX/system.reg" ]; then
    log "creating the Wine prefix $WINEPREFIX"
    mkdir -p "$WINEPREFIX"
    nice -n 19 wine wineboot --init >/dev/null 2>&1 || true
    wineserver -w
  fi
  cmp -s "$dll" "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" ||
    cp "$dll" "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll"
}

unit() {
  log "the library's unit tests under Wine"
  timed "the lib tests under Wine" wcargo test --lib -- --test-threads="${ROLLGATE_TEST_THREADS:-2}"
}

e2e() {
  log "end to end: the Linux CLI against rollgate-agent.exe under Wine's SCM"
  cargo build --locked --bin rollgate
  timed "the end-to-end test under Wine" "$ROOT/tests/windows/e2e.sh" "$ROOT/target/debug/rollgate" \
    "$WIN_TARGET/$TRIPLE/debug"
}

# The Windows zip (packaging/windows/zip.sh) of this build's .exe files, unpacked and used under Wine.
zip_test() {
  log "the Windows zip: built from this build's .exe files, installed under Wine from its README"
  local zip
  zip=$("$ROOT/packaging/windows/zip.sh" "$WIN_TARGET/$TRIPLE/debug" "$WIN_TARGET/zip" | tail -n 1)
  timed "the zip test under Wine" "$ROOT/tests/windows/zip-test.sh" "$zip" \
    "$WIN_TARGET/wine-processprng/bcryptprimitives.dll"
}

case "${1:-all}" in
  setup) setup_packages && setup_prefix ;;
  build) setup_packages && build ;;
  unit) setup_packages && setup_prefix && unit ;;
  e2e) setup_packages && setup_prefix && e2e ;;
  zip) setup_packages && setup_prefix && zip_test ;;
  all)
    start=$SECONDS
    timed "package setup" setup_packages
    build
    setup_prefix
    # The end-to-end test runs even when a unit test fails; either fails the run.
    rc=0
    unit || rc=$?
    e2e || rc=$?
    zip_test || rc=$?
    printf '== windows: all done in %ss (exit %s)\n' $((SECONDS - start)) "$rc"
    exit "$rc"
    ;;
  *)
    echo "usage: $0 [all|setup|build|unit|e2e|zip]" >&2
    exit 2
    ;;
esac
