#!/usr/bin/env bash
# The Windows zip under Wine, as an operator would use it: unpacked into a fresh Wine prefix; its
# rollgate.exe makes the CA and the agent's and a client's certificates; its agent.yaml copied to
# C:\ProgramData\rollgate (its port changed to a free one: the test's only edit); then the two
# commands of its README.txt, run as written; then the agent answers on loopback to the client
# certificate (GET /v1/host) and refuses a client without one. Uninstall leaves nothing running.
#
# Usage: tests/windows/zip-test.sh ZIP PROCESSPRNG_DLL
# Run by tests/windows/run.sh (the DLL is Wine-only test scaffolding, see wine-processprng/).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ZIP=$(realpath "$1")
DLL=$(realpath "$2")
W="$(dirname "$ZIP")/zip-test-$$"
rm -rf "$W"
mkdir -p "$W"
export WINEPREFIX="$W/prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="

step() { printf '\n-- zip: %s\n' "$*"; }
fail() {
  printf 'zip test FAILED: %s\n' "$*" >&2
  [ -f "$W/data.log" ] && tail -n 40 "$W/data.log" >&2
  exit 1
}
wine_() { nice -n 19 wine "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sc_state() {
  local out
  out=$(wine_ sc query "$1" 2>/dev/null | tr -d '\r') || true
  if [ -z "$out" ]; then echo NONE; else awk '/STATE/ {print $4}' <<<"$out"; fi
}
expect_state() {
  local got
  for _ in $(seq 1 120); do
    got=$(sc_state "$1")
    [ "$got" = "$2" ] && { echo "sc query $1: $got"; return 0; }
    sleep 0.5
  done
  fail "sc query $1: $got, expected $2"
}

step "a fresh Wine prefix"
start=$SECONDS
wine_ wineboot --init >/dev/null 2>&1 || true
wineserver -w
cp "$DLL" "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll"
echo "created in $((SECONDS - start))s"

# Wine stops every service when its last ordinary process exits: one cmd.exe waits on a pipe.
mkfifo "$W/keepalive"
wine_ cmd <"$W/keepalive" >/dev/null 2>&1 &
keepalive=$!
exec 9>"$W/keepalive"
cleanup() {
  local rc=$?
  set +e
  [ "$rc" = 0 ] || printf 'zip test FAILED (exit %s)\n' "$rc" >&2
  [ -n "${PROG:-}" ] && wine_ "$PROG/rollgate-agent.exe" service uninstall >/dev/null 2>&1
  wine_ sc stop rollgate-agent >/dev/null 2>&1
  wine_ sc delete rollgate-agent >/dev/null 2>&1
  exec 9>&-
  wait "$keepalive" 2>/dev/null
  wineserver -k 2>/dev/null
  wineserver -w 2>/dev/null
  [ "$rc" = 0 ] && rm -rf "$W"
  exit "$rc"
}
trap cleanup EXIT

step "unpack $(basename "$ZIP") into C:\\Program Files"
C="$WINEPREFIX/drive_c"
python3 -m zipfile -e "$ZIP" "$C/Program Files/"
folder=$(basename "$ZIP" .zip)
PROG="$C/Program Files/$folder"
for f in rollgate.exe rollgate-agent.exe agent.yaml README.txt LICENSE.txt CHANGELOG.txt; do
  [ -f "$PROG/$f" ] || fail "the zip has no $folder/$f"
done
ls "$PROG"
cd "$PROG"
version=$(wine_ ./rollgate.exe --version | tr -d '\r')
echo "rollgate.exe --version: $version"
grep -q "^rollgate $(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n 1)" <<<"$version" ||
  fail "rollgate.exe --version printed '$version'"

step "the CA and certificates, made by the zip's rollgate.exe (README.txt step 2)"
mkdir -p "$C/ProgramData/rollgate/pki"
wine_ ./rollgate.exe pki init --dir 'C:\ProgramData\rollgate\pki' >/dev/null
wine_ ./rollgate.exe pki issue --dir 'C:\ProgramData\rollgate\pki' --agent 127.0.0.1 >/dev/null
wine_ ./rollgate.exe pki issue --dir 'C:\ProgramData\rollgate\pki' --client ci >/dev/null
PKI="$C/ProgramData/rollgate/pki"
mv "$PKI/agent-127.0.0.1.pem" "$PKI/agent.pem"
mv "$PKI/agent-127.0.0.1-key.pem" "$PKI/agent-key.pem"
port=$(free_port)
sed "s/127\.0\.0\.1:7443/127.0.0.1:$port/" "$PROG/agent.yaml" | tr -d '\r' >"$C/ProgramData/rollgate/agent.yaml"
grep -q "127.0.0.1:$port" "$C/ProgramData/rollgate/agent.yaml" || fail "agent.yaml does not listen on 127.0.0.1:7443"

step "README.txt's two commands, as written"
mapfile -t commands < <(tr -d '\r' <"$PROG/README.txt" | grep -E '^rollgate-agent\.exe (check-config|service install) ')
[ "${#commands[@]}" = 2 ] || fail "README.txt shows ${#commands[@]} agent commands, expected 2: ${commands[*]}"
for c in "${commands[@]}"; do
  # The project's README shows the same two commands.
  grep -qF -- "$c" "$ROOT/README.md" || fail "README.md does not show '$c' as README.txt does"
  echo "> $c"
  read -r -a argv <<<"$c"
  out=$(wine_ "./${argv[0]}" "${argv[@]:1}" 2>&1 | tr -d '\r') || fail "'$c' failed: $out"
  echo "$out"
done
expect_state rollgate-agent RUNNING

step "the agent answers on loopback, only to a client certificate of the CA"
body=""
for _ in $(seq 1 60); do
  body=$(curl -fsS --cacert "$PKI/ca.pem" --cert "$PKI/client-ci.pem" --key "$PKI/client-ci-key.pem" \
    "https://127.0.0.1:$port/v1/host" 2>/dev/null) && break
  sleep 0.5
done
[ -n "$body" ] || fail "no answer from https://127.0.0.1:$port/v1/host"
echo "GET /v1/host: $body"
if curl -fsS --cacert "$PKI/ca.pem" "https://127.0.0.1:$port/v1/host" >/dev/null 2>&1; then
  fail "the agent answered a client without a certificate"
fi
echo "without a client certificate: refused"

step "uninstall"
wine_ ./rollgate-agent.exe service uninstall
expect_state rollgate-agent NONE
echo "zip test: passed"
