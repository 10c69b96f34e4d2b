#!/usr/bin/env bash
# End to end under Wine, driven by the Linux CLI: rollgate-agent.exe installed as a Windows service
# (`service install`, mTLS on loopback) under Wine's SCM; the Linux `rollgate apply` stages
# rollgate-demo.exe v1 and activates it through the windows-scm backend and the supervisor
# backend (its `env:` written to the service's registry `Environment` value), then v2 behind a
# health gate, then a bad v3 (its /health answers 500) rolled back
# automatically, then `rollgate rollback`; `sc query` after each step. Then the agent is stopped
# and uninstalled, the services it created are removed, and nothing is left running.
# Also: with its port taken, the agent service ends STOPPED with service-specific exit code 1.
#
# Usage: tests/windows/e2e.sh <linux rollgate binary> <dir of the Windows .exe files>
# Run by tests/windows/run.sh, which prepares the Wine prefix (WINEPREFIX) first.
set -euo pipefail
RG=$(realpath "$1")
WIN=$(realpath "$2")
: "${WINEPREFIX:?run through tests/windows/run.sh}"
# Not under /tmp: Wine sees this dir as Z:\..., and the Wine prefix's own temp stays apart.
W="$(dirname "$WIN")/e2e-$$"
rm -rf "$W"
mkdir -p "$W"
export ROLLGATE_STATE="$W/state"

step() { printf '\n-- e2e: %s\n' "$*"; }
fail() {
  printf 'e2e FAILED: %s\n' "$*" >&2
  [ -f "$W/data/agent.log" ] && tail -n 40 "$W/data/agent.log" >&2
  exit 1
}
wine_() { nice -n 19 wine "$@"; }
winpath() { printf 'Z:%s' "${1//\//\\}"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# `sc query NAME`'s STATE word (RUNNING, STOPPED, ...), or NONE when there is no such service.
sc_state() {
  local out
  out=$(wine_ sc query "$1" 2>/dev/null | tr -d '\r') || true
  if [ -z "$out" ]; then
    echo NONE
  else
    awk '/STATE/ {print $4}' <<<"$out"
  fi
}
expect_state() {
  local name=$1 want=$2 got
  for _ in $(seq 1 120); do
    got=$(sc_state "$name")
    [ "$got" = "$want" ] && {
      echo "sc query $name: $got"
      return 0
    }
    sleep 0.5
  done
  fail "sc query $name: $got, expected $want"
}
expect_version() {
  local port=$1 want=$2 got=""
  for _ in $(seq 1 60); do
    got=$(curl -fsS "http://127.0.0.1:$port/version" 2>/dev/null | tr -d '\r\n') || true
    [ "$got" = "$want" ] && {
      echo "127.0.0.1:$port/version: $got"
      return 0
    }
    sleep 0.5
  done
  fail "127.0.0.1:$port/version answers '$got', expected '$want'"
}

# Wine stops every service when its last ordinary process exits: one cmd.exe waits on a pipe for
# the whole test.
mkfifo "$W/keepalive"
wine_ cmd <"$W/keepalive" >/dev/null 2>&1 &
keepalive=$!
exec 9>"$W/keepalive"

cleanup() {
  local rc=$?
  set +e
  [ "$rc" = 0 ] || printf 'e2e FAILED (exit %s)\n' "$rc" >&2
  wine_ "$WIN/rollgate-agent.exe" service uninstall >/dev/null 2>&1
  for s in rollgate-web-0 rollgate-agent; do
    wine_ sc stop "$s" >/dev/null 2>&1
    wine_ sc delete "$s" >/dev/null 2>&1
  done
  exec 9>&-
  wait "$keepalive" 2>/dev/null
  wineserver -w
  [ "$rc" = 0 ] && rm -rf "$W"
  exit "$rc"
}
trap cleanup EXIT

step "pki, artifacts, agent config"
"$RG" pki init --dir "$W/pki" >/dev/null
"$RG" pki issue --dir "$W/pki" --agent 127.0.0.1 >/dev/null
"$RG" pki issue --dir "$W/pki" --client e2e >/dev/null
agent_port=$(free_port)
scm_port=$(free_port)
sup_port=$(free_port)
mkdir -p "$W/art"
# Each version's flags travel in bin/web.exe.args (the demo reads the file named after itself).
# v3's /health answers 500.
package() { # version flags
  local d="$W/art/$1"
  mkdir -p "$d/bin"
  cp "$WIN/rollgate-demo.exe" "$d/bin/web.exe"
  printf '%s\n' "--version $1 $2" >"$d/bin/web.exe.args"
  tar -C "$d" -czf "$W/art/web-$1.tar.gz" bin
}
package 1.0.0 ""
package 2.0.0 ""
package 3.0.0 "--health-status 500"

cat >"$W/agent.yaml" <<EOF
listen: "127.0.0.1:$agent_port"
dataDir: '$(winpath "$W/data")'
shutdownGrace: 10s
tls:
  cert: '$(winpath "$W/pki/agent-127.0.0.1.pem")'
  key: '$(winpath "$W/pki/agent-127.0.0.1-key.pem")'
  clientCa: '$(winpath "$W/pki/ca.pem")'
services:
  - name: web
    backend: windows-scm
    command: bin/web.exe
    args: ["--listen", "127.0.0.1:{port}"]
    env: {DEMO_START_DELAY_MS: "0"}
    ports: [$scm_port]
    stopTimeout: 10s
    startType: demand
    health: {type: http, url: "http://127.0.0.1:{port}/health", timeout: 1s, interval: 200ms, startTimeout: 30s}
  - name: websup
    backend: supervisor
    command: bin/web.exe
    args: ["--listen", "127.0.0.1:{port}"]
    ports: [$sup_port]
    stopTimeout: 10s
    health: {type: http, url: "http://127.0.0.1:{port}/health", timeout: 1s, interval: 200ms, startTimeout: 30s}
EOF

step "the agent service with its port taken: STOPPED with service-specific exit code 1"
python3 -c "
import socket, time
s = socket.socket(); s.bind(('127.0.0.1', $agent_port)); s.listen(1); time.sleep(90)" &
squatter=$!
sleep 0.5
wine_ "$WIN/rollgate-agent.exe" service install -c "$(winpath "$W/agent.yaml")" || true
expect_state rollgate-agent STOPPED
exit_line=$(wine_ sc query rollgate-agent | tr -d '\r' | awk '/SERVICE_EXIT_CODE/ {print $3}')
[ "$exit_line" = 1 ] || fail "SERVICE_EXIT_CODE $exit_line, expected 1"
win32_line=$(wine_ sc query rollgate-agent | tr -d '\r' | awk '/WIN32_EXIT_CODE/ {print $3}')
# ERROR_SERVICE_SPECIFIC_ERROR
[ "$win32_line" = 1066 ] || fail "WIN32_EXIT_CODE $win32_line, expected 1066"
echo "sc query rollgate-agent: STOPPED, WIN32_EXIT_CODE 1066, SERVICE_EXIT_CODE 1"
kill "$squatter"
wait "$squatter" 2>/dev/null || true
wine_ "$WIN/rollgate-agent.exe" service uninstall
expect_state rollgate-agent NONE

step "service install: the agent as a Windows service, mTLS on 127.0.0.1:$agent_port"
wine_ "$WIN/rollgate-agent.exe" service install -c "$(winpath "$W/agent.yaml")"
expect_state rollgate-agent RUNNING
for _ in $(seq 1 60); do [ -s "$W/data/agent.addr" ] && break; sleep 0.5; done
[ "$(tr -d '\r\n' <"$W/data/agent.addr")" = "https://127.0.0.1:$agent_port" ] ||
  fail "service run did not write agent.addr ($(cat "$W/data/agent.addr" 2>/dev/null))"
echo "agent.addr: $(cat "$W/data/agent.addr")"

manifest() { # service version artifact strategy
  cat <<EOF
apiVersion: rollgate.dev/v1
kind: Rollout
metadata:
  name: $1
spec:
  version: "$2"
  target:
    hosts:
      service: $1
      artifact: {file: "$3"}
      auth: {ca: "$W/pki/ca.pem", cert: "$W/pki/client-e2e.pem", key: "$W/pki/client-e2e-key.pem"}
      hosts:
        - {name: wine, address: "127.0.0.1:$agent_port"}
  strategy:
$4
  checks:
    - name: health
      http: {url: "http://127.0.0.1:{port}/health"}
      interval: 200ms
      count: 3
      successThreshold: 2
      failureLimit: 0
      timeout: 1s
  rollback: {auto: true}
  progressDeadlineSeconds: 90
EOF
}
INSTALL='    rolling: {maxSurge: 0, maxUnavailable: "100%"}'
apply() { # service version strategy expected-exit
  local f="$W/$1-$2.yaml" rc=0
  manifest "$1" "$2" "$W/art/web-$2.tar.gz" "$3" >"$f"
  "$RG" apply -f "$f" -o plain >"$W/apply-$1-$2.log" 2>&1 || rc=$?
  [ "$rc" = "$4" ] || {
    cat "$W/apply-$1-$2.log" >&2
    fail "rollgate apply $1 $2: exit $rc, expected $4"
  }
  echo "rollgate apply $1 $2: exit $rc"
}

# The service's environment (`env:`, PORT, ROLLGATE_VERSION) in its registry `Environment` value.
# Wine's SCM starts every service with one environment and ignores that value: that the
# process sees it is for a real Windows host to confirm.
expect_environment() { # version
  local env
  env=$(wine_ reg query 'HKLM\System\CurrentControlSet\Services\rollgate-web-0' /v Environment | tr -d '\r')
  for want in "DEMO_START_DELAY_MS=0" "PORT=$scm_port" "ROLLGATE_VERSION=$1"; do
    grep -q -- "$want" <<<"$env" || fail "rollgate-web-0's Environment lacks $want: $env"
  done
  echo "rollgate-web-0 Environment: $(grep -o 'REG_MULTI_SZ.*' <<<"$env")"
}

step "v1 through the windows-scm backend"
apply web 1.0.0 "$INSTALL" 0
expect_state rollgate-web-0 RUNNING
expect_version "$scm_port" 1.0.0
expect_environment 1.0.0

step "v1 through the supervisor backend"
apply websup 1.0.0 "$INSTALL" 0
expect_version "$sup_port" 1.0.0

step "v2 with its health gate"
apply web 2.0.0 "$INSTALL" 0
expect_state rollgate-web-0 RUNNING
expect_version "$scm_port" 2.0.0
expect_environment 2.0.0
apply websup 2.0.0 "$INSTALL" 0
expect_version "$sup_port" 2.0.0

step "a bad v3 (/health 500): rolled back automatically"
apply web 3.0.0 "$INSTALL" 1
expect_state rollgate-web-0 RUNNING
expect_version "$scm_port" 2.0.0
apply websup 3.0.0 "$INSTALL" 1
expect_version "$sup_port" 2.0.0

step "rollgate rollback: back to v1"
for app in web websup; do
  "$RG" rollback "$app" >"$W/rollback-$app.log" 2>&1 || {
    cat "$W/rollback-$app.log" >&2
    fail "rollgate rollback $app"
  }
  echo "rollgate rollback $app: ok"
done
expect_state rollgate-web-0 RUNNING
expect_version "$scm_port" 1.0.0
expect_version "$sup_port" 1.0.0

step "stop and uninstall: nothing left running"
wine_ "$WIN/rollgate-agent.exe" service uninstall
expect_state rollgate-agent NONE
# The supervisor's service stops with the agent; the SCM's service is the SCM's own.
for _ in $(seq 1 40); do curl -fsS "http://127.0.0.1:$sup_port/health" >/dev/null 2>&1 || break; sleep 0.5; done
curl -fsS "http://127.0.0.1:$sup_port/health" >/dev/null 2>&1 && fail "the supervisor's service outlived the agent"
# Already stopping (or stopped) answers with an error; the state is what counts.
wine_ sc stop rollgate-web-0 >/dev/null || true
expect_state rollgate-web-0 STOPPED
wine_ sc delete rollgate-web-0 >/dev/null
expect_state rollgate-web-0 NONE
for _ in $(seq 1 40); do pgrep -f 'rollgate-(agent|demo)\.exe|bin.web\.exe' >/dev/null || break; sleep 0.5; done
if pgrep -af 'rollgate-agent\.exe|bin.web\.exe'; then fail "processes left running"; fi
echo "e2e: passed"
