#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for rollgate's tests:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
# (fake nodes), all built from Go modules and run as plain processes,
# the way kwokctl's "binary" runtime runs them.
#
#   cluster.sh build   build (or reuse) the binaries in the cache
#   cluster.sh up      build if needed, start everything, create fake nodes
#   cluster.sh down    stop everything in reverse order; safe when nothing runs
#   cluster.sh env     print export lines: KUBECONFIG, ROLLGATE_KUBE_BIN, PATH
#   cluster.sh status  say what runs
#   cluster.sh extra-apiserver start|kill|stop|pid PORT
#                      a second kube-apiserver on the same etcd, for fault
#                      tests that take a client's apiserver away
#   cluster.sh argo up|down|build|status|identity NAME
#                      Argo Rollouts' controller on this cluster, the
#                      benchmarks' peer (argo.sh; never built by CI)
#
# See README.md beside this file for the knobs, the test controls and the
# measured figures.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

KUBE_VERSION=${ROLLGATE_KUBE_VERSION:-v1.36.3}
KWOK_VERSION=${ROLLGATE_KWOK_VERSION:-v0.8.0}
ETCD_VERSION=$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" { print $3 }' "$HERE/etcd/go.mod")

CACHE_ROOT=${XDG_CACHE_HOME:-$HOME/.cache}/rollgate/kube
BIN_DIR=$CACHE_ROOT/$KUBE_VERSION
STATE_DIR=${ROLLGATE_CLUSTER_DIR:-/tmp/rollgate-cluster}
FAKE_NODES=${ROLLGATE_FAKE_NODES:-3}

# Non-default ports, all on 127.0.0.1, so that nothing clashes with a
# cluster or etcd someone else runs on this machine.
ETCD_CLIENT_PORT=${ROLLGATE_ETCD_PORT:-32379}
ETCD_PEER_PORT=$((ETCD_CLIENT_PORT + 1))
APISERVER_PORT=${ROLLGATE_APISERVER_PORT:-32443}
KCM_PORT=$((APISERVER_PORT + 1))
SCHEDULER_PORT=$((APISERVER_PORT + 2))
KWOK_PORT=$((APISERVER_PORT + 3))

# Start order (down stops them in reverse).
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

export GOTOOLCHAIN=local CGO_ENABLED=0

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- build

# Runs a go build, printing a progress line every 20 s (packages compiled
# so far and the latest one) instead of go's silence or -v's flood.
go_build_with_progress() {
  local what=$1 logfile=$2
  shift 2
  local start=$SECONDS
  "$@" >"$logfile" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 5
    if (((SECONDS - start) % 20 < 5)); then
      local n last
      n=$(grep -c '' "$logfile" || true)
      last=$(tail -n 1 "$logfile" 2>/dev/null || true)
      log "  $what: $((SECONDS - start))s, $n packages, at ${last:0:70}"
    fi
  done
  if ! wait "$pid"; then
    tail -n 40 "$logfile" >&2
    die "building $what failed; full log: $logfile"
  fi
  log "  $what: done in $((SECONDS - start))s"
}

# A module's build uses a scratch copy under the cache, so the build never
# writes into the repository.
scratch_module() {
  local src=$1 dst=$2
  rm -rf "$dst"
  mkdir -p "$dst"
  cp "$src"/* "$dst"/
}

have_bins() {
  local b
  for b in "$@"; do [[ -x $BIN_DIR/$b ]] || return 1; done
}

build_etcd() {
  if have_bins etcd && [[ $(cat "$BIN_DIR/etcd.version" 2>/dev/null) == "$ETCD_VERSION" ]]; then
    return
  fi
  log "building etcd $ETCD_VERSION"
  local work=$CACHE_ROOT/src/etcd-$ETCD_VERSION
  scratch_module "$HERE/etcd" "$work"
  (cd "$work" && go_build_with_progress etcd "$work/build.log" \
    go build -v -mod=mod -trimpath -ldflags "-s -w" -o "$BIN_DIR/etcd" .)
  echo "$ETCD_VERSION" >"$BIN_DIR/etcd.version"
}

build_kwok() {
  if have_bins kwok && [[ $(cat "$BIN_DIR/kwok.version" 2>/dev/null) == "$KWOK_VERSION" ]]; then
    return
  fi
  log "building kwok $KWOK_VERSION"
  mkdir -p "$CACHE_ROOT/src"
  GOBIN=$BIN_DIR GOFLAGS=-trimpath go_build_with_progress kwok "$CACHE_ROOT/src/kwok-$KWOK_VERSION.log" \
    go install -v -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  echo "$KWOK_VERSION" >"$BIN_DIR/kwok.version"
}

build_kube() {
  local bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
  have_bins "${bins[@]}" && return
  log "building Kubernetes $KUBE_VERSION: ${bins[*]} (about 7 min on 2 cores from a cold Go cache, under 1 min from a warm one)"
  local work=$CACHE_ROOT/src/kube-$KUBE_VERSION
  scratch_module "$HERE/kube" "$work"
  cd "$work"

  # The staging modules (k8s.io/api, k8s.io/client-go, ...) are required at
  # v0.0.0 and replaced by local directories in k8s.io/kubernetes's go.mod.
  # Map each one to its published tag v0.<minor>.<patch>, reading the list
  # from that go.mod so that a new version's new staging module is covered.
  local gomod staging_version="v0.${KUBE_VERSION#v1.}" n=0 mod
  gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  [[ -f $gomod ]] || die "could not download k8s.io/kubernetes@$KUBE_VERSION's go.mod"
  go mod edit -require="k8s.io/kubernetes@$KUBE_VERSION"
  while read -r mod; do
    go mod edit -replace="$mod=$mod@$staging_version"
    n=$((n + 1))
  done < <(awk '$2 == "=>" && $3 ~ /^\.\/staging\/src\// { print $1 }' "$gomod")
  ((n > 0)) || die "found no staging replace lines in $gomod"
  log "  mapped $n staging modules to $staging_version"
  # Keep the version's own language version and GODEBUG defaults.
  local gover godebug
  gover=$(awk '$1 == "go" { print $2; exit }' "$gomod")
  go mod edit -go="$gover"
  while read -r godebug; do
    go mod edit -godebug="$godebug"
  done < <(awk '$1 == "godebug" && $2 != "(" { print $2 }' "$gomod")

  local minor=${KUBE_VERSION#v1.}
  minor=${minor%%.*}
  local ldflags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  local pkgs=() b
  for b in "${bins[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  # One go build for all four so that shared packages compile once.
  go_build_with_progress kubernetes "$work/build.log" \
    go build -v -mod=mod -trimpath -ldflags "$ldflags" -o "$BIN_DIR/" "${pkgs[@]}"
  cd - >/dev/null
}

cmd_build() {
  command -v go >/dev/null || die "go is not installed (needed to build the control plane)"
  mkdir -p "$BIN_DIR"
  local start=$SECONDS
  if have_bins etcd kwok kube-apiserver kube-controller-manager kube-scheduler kubectl &&
    [[ $(cat "$BIN_DIR/etcd.version" 2>/dev/null) == "$ETCD_VERSION" ]] &&
    [[ $(cat "$BIN_DIR/kwok.version" 2>/dev/null) == "$KWOK_VERSION" ]]; then
    log "binaries cached in $BIN_DIR"
    return
  fi
  build_etcd
  build_kwok
  build_kube
  log "built in $((SECONDS - start))s, cached in $BIN_DIR"
}

# ---------------------------------------------------------------- run

PKI=$STATE_DIR/pki
KUBECONFIG_PATH=$STATE_DIR/kubeconfig
LOGS=$STATE_DIR/logs
PIDS=$STATE_DIR/pids

kubectl() { "$BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

# One CA, and one admin certificate that serves as the apiserver's serving
# certificate and every component's client certificate; its key also signs
# service-account tokens. This is what kwokctl does.
make_pki() {
  mkdir -p "$PKI"
  local ext=$PKI/admin.ext
  printf '%s\n' \
    'basicConstraints=critical,CA:FALSE' \
    'keyUsage=critical,digitalSignature,keyEncipherment' \
    'extendedKeyUsage=serverAuth,clientAuth' \
    'subjectAltName=IP:127.0.0.1,DNS:localhost' >"$ext"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=rollgate-test-ca" \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
  openssl req -new -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kwok-admin" \
    -keyout "$PKI/admin.key" -out "$PKI/admin.csr" 2>/dev/null
  openssl x509 -req -days 3650 -in "$PKI/admin.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -extfile "$ext" -out "$PKI/admin.crt" 2>/dev/null
}

# A kubeconfig for the apiserver on port $1 (default: the cluster's), at
# path $2 (default: $KUBECONFIG_PATH).
make_kubeconfig() {
  cat >"${2:-$KUBECONFIG_PATH}" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: rollgate-test
  cluster:
    server: https://127.0.0.1:${1:-$APISERVER_PORT}
    certificate-authority: $PKI/ca.crt
users:
- name: kwok-admin
  user:
    client-certificate: $PKI/admin.crt
    client-key: $PKI/admin.key
contexts:
- name: rollgate-test
  context:
    cluster: rollgate-test
    user: kwok-admin
current-context: rollgate-test
EOF
}

# Starts a component in its own session (so that it outlives the shell or
# test that ran `up`), output to its log, pid to its pid file.
start() {
  local name=$1
  shift
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PIDS/$name.pid" "$@" \
    </dev/null >"$LOGS/$name.log" 2>&1 9>&- &
  local i
  for i in $(seq 50); do [[ -s $PIDS/$name.pid ]] && break; sleep 0.02; done
}

pid_of() { cat "$PIDS/$1.pid" 2>/dev/null || true; }

alive() {
  local pid
  pid=$(pid_of "$1")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null &&
    [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$BIN_DIR/$1" ]]
}

# Waits until a check succeeds, failing early if the component died.
wait_for() {
  local name=$1 timeout=$2
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ! alive "$name"; then
      tail -n 30 "$LOGS/$name.log" >&2
      die "$name exited; log: $LOGS/$name.log"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$LOGS/$name.log" >&2
      die "$name not healthy after ${timeout}s; log: $LOGS/$name.log"
    fi
    sleep 0.2
  done
}

https_ok() {
  curl -fsS --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$1" |
    grep -qx ok
}

http_ok() { curl -fsS --max-time 2 "$1" | grep -qx ok; }

etcd_ok() { curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health" | grep -q '"health":"true"'; }

running() {
  local c
  for c in "${COMPONENTS[@]}"; do alive "$c" || return 1; done
  https_ok "https://127.0.0.1:$APISERVER_PORT/readyz"
}

create_nodes() {
  local i manifest=""
  for i in $(seq "$FAKE_NODES"); do
    manifest+="
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: \"0\"
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: \"\"
    type: kwok
status:
  allocatable:
    cpu: \"16\"
    memory: 64Gi
    pods: \"110\"
  capacity:
    cpu: \"16\"
    memory: 64Gi
    pods: \"110\"
"
  done
  kubectl apply -f - <<<"$manifest" >/dev/null
}

# The kube-apiserver's flags, one a line, for secure port $1: `up` starts
# the cluster's apiserver with them and `extra-apiserver` a second one.
apiserver_flags() {
  printf '%s\n' \
    --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --etcd-prefix=/registry \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="$1" \
    --endpoint-reconciler-type=none \
    --service-cluster-ip-range=10.96.0.0/12 \
    --allow-privileged=true \
    --authorization-mode=Node,RBAC \
    --tls-cert-file="$PKI/admin.crt" \
    --tls-private-key-file="$PKI/admin.key" \
    --client-ca-file="$PKI/ca.crt" \
    --service-account-key-file="$PKI/admin.key" \
    --service-account-signing-key-file="$PKI/admin.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --proxy-client-cert-file="$PKI/admin.crt" \
    --proxy-client-key-file="$PKI/admin.key"
}

cmd_up() {
  local start_time=$SECONDS
  mkdir -p "$(dirname "$STATE_DIR")"
  exec 9>"$STATE_DIR.lock"
  flock 9
  if running; then
    log "already up ($STATE_DIR)"
    return
  fi
  cmd_build
  # Whatever is left of an earlier cluster goes; every up starts afresh.
  stop_all
  rm -rf "$STATE_DIR"
  mkdir -p "$STATE_DIR" "$LOGS" "$PIDS"
  # A failed up leaves no process behind; the logs stay.
  trap 'stop_all; log "up failed; logs are in $LOGS"' EXIT
  make_pki
  make_kubeconfig

  log "starting etcd on 127.0.0.1:$ETCD_CLIENT_PORT"
  start etcd "$BIN_DIR/etcd" \
    --name=node0 \
    --data-dir="$STATE_DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="node0=http://127.0.0.1:$ETCD_PEER_PORT" \
    --listen-metrics-urls="" \
    --auto-compaction-retention=1 \
    --quota-backend-bytes=8589934592 \
    --unsafe-no-fsync
  wait_for etcd 30 etcd_ok

  log "starting kube-apiserver on 127.0.0.1:$APISERVER_PORT"
  local flags
  mapfile -t flags < <(apiserver_flags "$APISERVER_PORT")
  start kube-apiserver "$BIN_DIR/kube-apiserver" "${flags[@]}"
  wait_for kube-apiserver 90 https_ok "https://127.0.0.1:$APISERVER_PORT/readyz"

  local common=(
    --kubeconfig="$KUBECONFIG_PATH"
    --authentication-kubeconfig="$KUBECONFIG_PATH"
    --authorization-kubeconfig="$KUBECONFIG_PATH"
    --authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics
    --bind-address=127.0.0.1
    --tls-cert-file="$PKI/admin.crt"
    --tls-private-key-file="$PKI/admin.key"
    --leader-elect=false
    --kube-api-qps=5000
    --kube-api-burst=10000
  )
  log "starting kube-controller-manager on 127.0.0.1:$KCM_PORT"
  start kube-controller-manager "$BIN_DIR/kube-controller-manager" "${common[@]}" \
    --secure-port="$KCM_PORT" \
    --root-ca-file="$PKI/ca.crt" \
    --service-account-private-key-file="$PKI/admin.key" \
    --node-monitor-period=5s \
    --node-monitor-grace-period=40s
  log "starting kube-scheduler on 127.0.0.1:$SCHEDULER_PORT"
  start kube-scheduler "$BIN_DIR/kube-scheduler" "${common[@]}" \
    --secure-port="$SCHEDULER_PORT"
  log "starting kwok on 127.0.0.1:$KWOK_PORT"
  start kwok "$BIN_DIR/kwok" \
    --kubeconfig="$KUBECONFIG_PATH" \
    --config="$HERE/kwok-stages.yaml" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds=40 \
    --node-ip=127.0.0.1 \
    --node-port="$KWOK_PORT" \
    --cidr=198.18.0.0/16 \
    --server-address="127.0.0.1:$KWOK_PORT" \
    --tls-cert-file="$PKI/admin.crt" \
    --tls-private-key-file="$PKI/admin.key"
  wait_for kube-controller-manager 60 https_ok "https://127.0.0.1:$KCM_PORT/healthz"
  wait_for kube-scheduler 60 https_ok "https://127.0.0.1:$SCHEDULER_PORT/healthz"
  wait_for kwok 60 http_ok "http://127.0.0.1:$KWOK_PORT/healthz"

  log "creating $FAKE_NODES fake nodes"
  wait_for kwok 30 create_nodes
  wait_for kwok 60 kubectl wait --for=condition=Ready node --all --timeout=5s
  # Pods need the default ServiceAccount; its controller makes it shortly.
  wait_for kube-controller-manager 60 kubectl -n default get serviceaccount default
  trap - EXIT
  log "up in $((SECONDS - start_time))s; KUBECONFIG=$KUBECONFIG_PATH"
}

# Stops every component in reverse start order: kwok and the two
# controllers together (nothing depends on them), then the apiserver, then
# etcd. TERM first; KILL whatever still runs 10 s later.
stop_all() {
  # Argo Rollouts' controller (argo.sh), if it runs, goes first.
  if [[ -s $PIDS/rollouts-controller.pid ]]; then "$HERE/argo.sh" down || true; fi
  stop_group kwok kube-scheduler kube-controller-manager
  stop_group kube-apiserver
  stop_group etcd
  rm -f "$PIDS"/*.pid 2>/dev/null || true
}

stop_group() {
  local name names=() pids=() started i deadline
  started=$(date +%s%N)
  for name; do
    alive "$name" || continue
    names+=("$name")
    pids+=("$(pid_of "$name")")
    kill -TERM "${pids[-1]}" 2>/dev/null || true
  done
  deadline=$((SECONDS + 10))
  for i in "${!pids[@]}"; do
    while kill -0 "${pids[i]}" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    if kill -0 "${pids[i]}" 2>/dev/null; then
      log "${names[i]} (pid ${pids[i]}) ignored TERM for 10s; killing it"
      kill -KILL "${pids[i]}" 2>/dev/null || true
      sleep 0.2
    fi
    log "stopped ${names[i]} (pid ${pids[i]}) after $((($(date +%s%N) - started) / 1000000)) ms"
  done
}

# Processes still running one of our binaries for this state dir.
leftovers() {
  local p exe
  for p in /proc/[0-9]*; do
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    [[ $exe == "$BIN_DIR"/* ]] || continue
    tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "$STATE_DIR" || continue
    echo "${p#/proc/}"
  done
}

cmd_down() {
  mkdir -p "$(dirname "$STATE_DIR")"
  exec 9>"$STATE_DIR.lock"
  flock 9
  stop_all
  local left
  left=$(leftovers)
  if [[ -n $left ]]; then
    log "killing leftover processes: $left"
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
    sleep 0.5
    left=$(leftovers)
    [[ -z $left ]] || die "processes still running: $left"
  fi
  # tests/kubernetes/probes.rs routes kwok's pod IPs (the --cidr above, RFC 2544's benchmarking
  # range, so no real network is shadowed) to lo while the cluster runs; down takes it away.
  if [ "$(id -u)" = 0 ] && ip route show table local 2>/dev/null | grep -q '^local 198\.18\.0\.0/16 dev lo'; then
    ip route del local 198.18.0.0/16 dev lo table local 2>/dev/null || true
  fi
  log "down: no control-plane process left"
}

# ---------------------------------------------------------------- a second apiserver

# A second kube-apiserver on the same etcd, with the same flags and PKI, on
# secure port PORT. A client pointed at it (kubeconfig
# $STATE_DIR/kubeconfig-PORT, same admin certificate) can lose its apiserver
# while the controllers, the scheduler and kwok carry on through the
# cluster's own: fault tests kill and restart it mid-rollout. `down` stops it
# with the rest (as a leftover of this state dir).
#
#   extra-apiserver start PORT   start it, or find it running; wait until
#                                /readyz says ok; print the kubeconfig's path
#   extra-apiserver kill PORT    SIGKILL, like a crash; returns once it is gone
#   extra-apiserver stop PORT    TERM, then KILL after 10 s
#   extra-apiserver pid PORT     print its pid (nothing if it is not running)

extra_pid() {
  local pid
  pid=$(pid_of "kube-apiserver-$1")
  [[ -n $pid ]] && ! exited "$pid" &&
    [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$BIN_DIR/kube-apiserver" ]] &&
    echo "$pid"
}

# Whether process $1 has exited (a zombie counts: nobody may reap it soon).
exited() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  [[ ${stat%% *} == Z ]]
}

# Sends $2 to the extra apiserver on port $1 and waits up to $3 s for it to go.
extra_signal() {
  local port=$1 signal=$2 wait=$3 pid deadline
  pid=$(extra_pid "$port") || return 0
  kill "-$signal" "$pid" 2>/dev/null || true
  deadline=$((SECONDS + wait))
  until exited "$pid" || ((SECONDS >= deadline)); do sleep 0.05; done
  if ! exited "$pid"; then
    log "kube-apiserver-$port (pid $pid) ignored $signal for ${wait}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    until exited "$pid"; do sleep 0.05; done
  fi
  rm -f "$PIDS/kube-apiserver-$port.pid"
  log "stopped kube-apiserver-$port (pid $pid) with $signal"
}

cmd_extra_apiserver() {
  local action=${1:-} port=${2:-}
  [[ $action =~ ^(start|kill|stop|pid)$ && $port =~ ^[0-9]+$ ]] ||
    die "usage: $0 extra-apiserver start|kill|stop|pid PORT"
  ((port != APISERVER_PORT)) || die "port $port is the cluster's own apiserver"
  local name=kube-apiserver-$port config=$STATE_DIR/kubeconfig-$port
  case $action in
    start)
      running || die "the cluster is not up (run: $0 up)"
      if ! extra_pid "$port" >/dev/null; then
        log "starting $name on 127.0.0.1:$port (etcd 127.0.0.1:$ETCD_CLIENT_PORT)"
        local flags
        mapfile -t flags < <(apiserver_flags "$port")
        # Without an identity lease: both apiservers would use the one named
        # after this host, and this one would delete the cluster's at start
        # and at exit. The peer proxy needs identities, so it goes too.
        start "$name" "$BIN_DIR/kube-apiserver" "${flags[@]}" --feature-gates=APIServerIdentity=false,UnknownVersionInteroperabilityProxy=false
        make_kubeconfig "$port" "$config"
      fi
      local deadline=$((SECONDS + 90))
      until https_ok "https://127.0.0.1:$port/readyz" 2>/dev/null; do
        if ! extra_pid "$port" >/dev/null; then
          tail -n 30 "$LOGS/$name.log" >&2
          die "$name exited; log: $LOGS/$name.log"
        fi
        ((SECONDS < deadline)) || die "$name not ready after 90s; log: $LOGS/$name.log"
        sleep 0.1
      done
      echo "$config"
      ;;
    kill) extra_signal "$port" KILL 10 ;;
    stop) extra_signal "$port" TERM 10 ;;
    pid) extra_pid "$port" || true ;;
  esac
}

# For a shell: eval "$(tests/cluster/cluster.sh env)". The test support
# reads the first two lines.
cmd_env() {
  echo "export KUBECONFIG=$KUBECONFIG_PATH"
  echo "export ROLLGATE_KUBE_BIN=$BIN_DIR"
  echo "export PATH=\"\$ROLLGATE_KUBE_BIN:\$PATH\""
}

cmd_status() {
  local c rc=0
  for c in "${COMPONENTS[@]}"; do
    if alive "$c"; then echo "$c: running (pid $(pid_of "$c"))"; else echo "$c: stopped"; rc=1; fi
  done
  return $rc
}

main() {
  case ${1:-} in
    build) cmd_build ;;
    up) cmd_up ;;
    down) cmd_down ;;
    env) cmd_env ;;
    status) cmd_status ;;
    extra-apiserver) cmd_extra_apiserver "${@:2}" ;;
    argo) exec "$HERE/argo.sh" "${@:2}" ;;
    *) die "usage: $0 build|up|down|env|status|extra-apiserver|argo" ;;
  esac
}

# On one line, so that bash has read all of it before it runs: editing or
# checking out this file while a long build runs cannot derail the run.
main "$@"; exit
