#!/usr/bin/env bash
# A three-member etcd cluster on loopback for the team-state tests (host fleets on etcd), apart
# from the Kubernetes test cluster of cluster.sh: its own ports, data dirs and pid files.
#
#   etcd3.sh up [--tls]      start members 0, 1, 2 (a fresh cluster each time); --tls serves the
#                            client ports over TLS with a client certificate required
#   etcd3.sh down            stop them (TERM, then KILL) and remove the state dir
#   etcd3.sh status          each member: running or stopped; exits 1 if any is stopped
#   etcd3.sh endpoints       the client URLs, comma-separated
#   etcd3.sh kill N          SIGKILL member N (fault tests)
#   etcd3.sh start N         start member N again, on its existing data dir
#   etcd3.sh stop N          SIGSTOP member N: it answers neither peers nor clients (a minority
#                            cut off), while its connections stay open
#   etcd3.sh cont N          SIGCONT member N
#   etcd3.sh kill-all        SIGKILL every member (the whole cluster down)
#   etcd3.sh start-all       start every stopped member again, and wait until all are healthy
#   etcd3.sh leader          the index of the current leader
#
# The etcd binary is cluster.sh's (built from Go modules into ~/.cache/rollgate/kube/<version>/):
# ROLLGATE_ETCD_BIN overrides it; when neither exists, `cluster.sh build` builds it.
# ROLLGATE_ETCD3_PORT (default 24379) is member 0's client port; member i listens on
# PORT+2i (client) and PORT+2i+1 (peer). Keep ports below the kernel's ephemeral range
# (32768-60999): there an outgoing connection can hold one, and etcd fails to bind.
# ROLLGATE_ETCD3_DIR (default /tmp/rollgate-etcd3).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KUBE_VERSION=${ROLLGATE_KUBE_VERSION:-v1.36.3}
CACHE_ROOT=${XDG_CACHE_HOME:-$HOME/.cache}/rollgate/kube
ETCD=${ROLLGATE_ETCD_BIN:-$CACHE_ROOT/$KUBE_VERSION/etcd}
BASE=${ROLLGATE_ETCD3_PORT:-24379}
DIR=${ROLLGATE_ETCD3_DIR:-/tmp/rollgate-etcd3}
MEMBERS=(0 1 2)

log() { printf 'etcd3: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

client_port() { echo $((BASE + 2 * $1)); }
peer_port() { echo $((BASE + 2 * $1 + 1)); }
scheme() { if [[ -f $DIR/tls ]]; then echo https; else echo http; fi; }
endpoint() { echo "$(scheme)://127.0.0.1:$(client_port "$1")"; }
endpoints() {
  local i out=()
  for i in "${MEMBERS[@]}"; do out+=("$(endpoint "$i")"); done
  (IFS=,; echo "${out[*]}")
}
pid_of() { cat "$DIR/m$1.pid" 2>/dev/null || true; }
alive() {
  local pid
  pid=$(pid_of "$1")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null &&
    [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$(readlink -f "$ETCD")" ]]
}

curl_member() {
  local i=$1 path=$2
  if [[ -f $DIR/tls ]]; then
    curl -fsS --max-time 2 --cacert "$DIR/pki/ca.crt" --cert "$DIR/pki/client.crt" \
      --key "$DIR/pki/client.key" "$(endpoint "$i")$path" "${@:3}"
  else
    curl -fsS --max-time 2 "$(endpoint "$i")$path" "${@:3}"
  fi
}

healthy() { curl_member "$1" /health | grep -q '"health":"true"'; }

# A CA, a server certificate for 127.0.0.1 and a client certificate (openssl, EC P-256).
make_pki() {
  local p=$DIR/pki
  mkdir -p "$p"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=rollgate-etcd3 test CA" -keyout "$p/ca.key" -out "$p/ca.crt" 2>/dev/null
  # The server certificate is also a client one: etcd's JSON gateway dials the member's own
  # gRPC port with it, and --client-cert-auth checks it like any client's.
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >"$p/server.ext"
  printf 'extendedKeyUsage=clientAuth\n' >"$p/client.ext"
  local who
  for who in server client; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -subj "/CN=rollgate-etcd3 $who" -keyout "$p/$who.key" -out "$p/$who.csr" 2>/dev/null
    openssl x509 -req -in "$p/$who.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
      -days 2 -extfile "$p/$who.ext" -out "$p/$who.crt" 2>/dev/null
  done
  chmod 600 "$p"/*.key
}

start_member() {
  local i=$1 cluster="" j tls=()
  for j in "${MEMBERS[@]}"; do cluster+="${cluster:+,}m$j=http://127.0.0.1:$(peer_port "$j")"; done
  if [[ -f $DIR/tls ]]; then
    tls=(--cert-file="$DIR/pki/server.crt" --key-file="$DIR/pki/server.key"
      --trusted-ca-file="$DIR/pki/ca.crt" --client-cert-auth)
  fi
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$DIR/m$i.pid" "$ETCD" \
    --name="m$i" \
    --data-dir="$DIR/m$i" \
    --listen-client-urls="$(endpoint "$i")" \
    --advertise-client-urls="$(endpoint "$i")" \
    --listen-peer-urls="http://127.0.0.1:$(peer_port "$i")" \
    --initial-advertise-peer-urls="http://127.0.0.1:$(peer_port "$i")" \
    --initial-cluster="$cluster" \
    --initial-cluster-token=rollgate-etcd3 \
    --initial-cluster-state=new \
    --listen-metrics-urls="" \
    "${tls[@]}" \
    </dev/null >>"$DIR/m$i.log" 2>&1 9>&- &
  for j in $(seq 50); do [[ -s $DIR/m$i.pid ]] && break; sleep 0.02; done
}

cmd_up() {
  if [[ ! -x $ETCD ]]; then
    log "no etcd at $ETCD: building it with cluster.sh build"
    "$HERE/cluster.sh" build
  fi
  cmd_down 2>/dev/null || true
  mkdir -p "$DIR"
  if [[ ${1:-} == --tls ]]; then
    command -v openssl >/dev/null || die "openssl is not installed (needed for --tls)"
    touch "$DIR/tls"
    make_pki
  fi
  local i deadline
  for i in "${MEMBERS[@]}"; do start_member "$i"; done
  deadline=$((SECONDS + 30))
  for i in "${MEMBERS[@]}"; do
    until healthy "$i" >/dev/null 2>&1; do
      alive "$i" || { tail -n 20 "$DIR/m$i.log" >&2; die "member $i exited"; }
      ((SECONDS < deadline)) || die "member $i not healthy after 30s (log: $DIR/m$i.log)"
      sleep 0.2
    done
  done
  log "up: $(endpoints) ($("$ETCD" --version | head -n 1))"
}

cmd_down() {
  local i pids=()
  for i in "${MEMBERS[@]}"; do
    if alive "$i"; then
      pids+=("$(pid_of "$i")")
      kill -CONT "${pids[-1]}" 2>/dev/null || true
      kill -TERM "${pids[-1]}" 2>/dev/null || true
    fi
  done
  local deadline=$((SECONDS + 10)) pid
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$DIR"
}

cmd_status() {
  local i rc=0
  for i in "${MEMBERS[@]}"; do
    if alive "$i"; then echo "m$i: running (pid $(pid_of "$i")) $(endpoint "$i")"; else echo "m$i: stopped"; rc=1; fi
  done
  return $rc
}

cmd_leader() {
  local i
  for i in "${MEMBERS[@]}"; do
    alive "$i" || continue
    # The gateway's maintenance status: leader and this member's id, both decimal strings.
    local s
    s=$(curl_member "$i" /v3/maintenance/status -X POST -d '{}' 2>/dev/null) || continue
    local leader id
    leader=$(sed -n 's/.*"leader": *"\([0-9]*\)".*/\1/p' <<<"$s")
    id=$(sed -n 's/.*"member_id": *"\([0-9]*\)".*/\1/p' <<<"${s%%\}*}")
    if [[ -n $leader && $leader == "$id" ]]; then echo "$i"; return 0; fi
  done
  die "no leader found"
}

case ${1:-} in
  up) cmd_up "${@:2}" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  endpoints) endpoints ;;
  kill) alive "$2" && kill -KILL "$(pid_of "$2")" ;;
  start) start_member "$2"; deadline=$((SECONDS + 30))
    until healthy "$2" >/dev/null 2>&1; do ((SECONDS < deadline)) || die "member $2 not healthy"; sleep 0.2; done ;;
  stop) alive "$2" && kill -STOP "$(pid_of "$2")" ;;
  cont) alive "$2" && kill -CONT "$(pid_of "$2")" ;;
  kill-all) for i in "${MEMBERS[@]}"; do alive "$i" && kill -KILL "$(pid_of "$i")"; done; true ;;
  start-all) for i in "${MEMBERS[@]}"; do alive "$i" || start_member "$i"; done
    deadline=$((SECONDS + 30))
    for i in "${MEMBERS[@]}"; do
      until healthy "$i" >/dev/null 2>&1; do ((SECONDS < deadline)) || die "member $i not healthy"; sleep 0.2; done
    done ;;
  leader) cmd_leader ;;
  *) die "usage: $0 up [--tls]|down|status|endpoints|kill N|start N|stop N|cont N|kill-all|start-all|leader" ;;
esac
