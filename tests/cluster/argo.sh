#!/usr/bin/env bash
# Argo Rollouts on the test cluster: the peer that rollgate's benchmarks
# compare with (issue #23). Its controller is built from Go modules like the
# rest of tests/cluster and runs as a plain process against the cluster's
# kubeconfig, beside the other components.
#
#   argo.sh build    build (or reuse) rollouts-controller in the cache
#   argo.sh up       build if needed; start the cluster if it is not up;
#                    install Argo's CRDs; start rollouts-controller
#   argo.sh down     stop rollouts-controller (the cluster and CRDs stay)
#   argo.sh status   say whether it runs
#   argo.sh identity NAME
#                    a client identity of its own on the cluster: user NAME
#                    (certificate from the cluster's CA), bound to
#                    cluster-admin, its requests in FlowSchema NAME, so that
#                    the apiserver's
#                    apiserver_flowcontrol_dispatched_requests_total{flow_schema="NAME"}
#                    counts them alone; prints its kubeconfig's path
#
# The controller runs as identity `rollgate-argo`.
#
# `cluster.sh argo up|down|build|status` calls this. Never part of
# tests/run.sh: CI does not build Argo.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

ARGO_VERSION=$(awk '$1 == "require" && $2 == "github.com/argoproj/argo-rollouts" { print $3 }' "$HERE/argo/go.mod")
ARGO_MODULE=github.com/argoproj/argo-rollouts
CACHE_ROOT=${XDG_CACHE_HOME:-$HOME/.cache}/rollgate/argo
BIN_DIR=$CACHE_ROOT/$ARGO_VERSION
BIN=$BIN_DIR/rollouts-controller
STATE_DIR=${ROLLGATE_CLUSTER_DIR:-/tmp/rollgate-cluster}
KUBECONFIG_PATH=$STATE_DIR/kubeconfig
LOGS=$STATE_DIR/logs
PIDS=$STATE_DIR/pids
# Away from Argo's defaults (8090 metrics, 8080 healthz) and beside the
# cluster's 324xx ports.
ARGO_METRICS_PORT=${ROLLGATE_ARGO_METRICS_PORT:-32490}
ARGO_HEALTHZ_PORT=$((ARGO_METRICS_PORT + 1))

export GOTOOLCHAIN=local CGO_ENABLED=0

log() { printf 'argo: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# The module's source directory in the Go module cache (downloads it).
module_dir() {
  local dir
  dir=$(go mod download -json "$ARGO_MODULE@$ARGO_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [[ -d $dir ]] || die "could not download $ARGO_MODULE@$ARGO_VERSION"
  echo "$dir"
}

cmd_build() {
  command -v go >/dev/null || die "go is not installed (needed to build Argo Rollouts)"
  if [[ -x $BIN ]]; then
    log "rollouts-controller $ARGO_VERSION cached in $BIN_DIR"
    return
  fi
  local start=$SECONDS work=$CACHE_ROOT/src/argo-$ARGO_VERSION src
  log "building rollouts-controller $ARGO_VERSION (about 8 min on 2 cores from a cold Go cache)"
  mkdir -p "$BIN_DIR"
  rm -rf "$work"
  mkdir -p "$work"
  cp "$HERE/argo/go.mod" "$work/"
  src=$(module_dir)
  cd "$work"
  # Copy the version's replace block (k8s.io/* pinned to one release, and
  # two forks) into the wrapper: replaces only apply in the main module.
  local n=0 from to
  while read -r from to; do
    go mod edit -replace="$from=$to"
    n=$((n + 1))
  done < <(awk '
    $1 == "replace" && $2 == "(" { block = 1; next }
    block && $1 == ")" { block = 0; next }
    block && $2 == "=>" && NF == 4 { print $1, $3 "@" $4 }
    $1 == "replace" && $3 == "=>" && NF == 5 { print $2, $4 "@" $5 }
  ' "$src/go.mod")
  ((n > 0)) || die "found no replace lines in $src/go.mod"
  log "  copied $n replace lines from $ARGO_MODULE@$ARGO_VERSION"
  local ldflags="-s -w -X $ARGO_MODULE/utils/version.version=${ARGO_VERSION#v}"
  ldflags+=" -X $ARGO_MODULE/utils/version.buildDate=1970-01-01T00:00:00Z"
  ldflags+=" -X $ARGO_MODULE/utils/version.gitTreeState=clean"
  nice -n 10 go build -mod=mod -trimpath -ldflags "$ldflags" -o "$BIN" "$ARGO_MODULE/cmd/rollouts-controller" \
    >"$work/build.log" 2>&1 || {
    tail -n 40 "$work/build.log" >&2
    die "building rollouts-controller failed; full log: $work/build.log"
  }
  log "built in $((SECONDS - start))s: $BIN"
}

kubectl() { "$KUBE_BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

pid_of() { cat "$PIDS/rollouts-controller.pid" 2>/dev/null || true; }

alive() {
  local pid
  pid=$(pid_of)
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$BIN" ]]
}

PKI=$STATE_DIR/pki

# See the header. Idempotent; the certificate, key and kubeconfig live in
# the cluster's state dir (a fresh `cluster.sh up` makes a new CA, and so
# new identities).
cmd_identity() {
  local name=${1:-}
  [[ $name =~ ^[a-z0-9-]+$ ]] || die "usage: $0 identity NAME (lowercase letters, digits, -)"
  [[ -n ${KUBE_BIN:-} ]] || KUBE_BIN=$(awk -F= '/ROLLGATE_KUBE_BIN=/ { print $2 }' <("$HERE/cluster.sh" env))
  local dir=$STATE_DIR/identities/$name config
  config=$dir/kubeconfig
  if [[ ! -s $config ]]; then
    mkdir -p "$dir"
    openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$name" \
      -keyout "$dir/key.pem" -out "$dir/csr.pem" 2>/dev/null
    # X.509 v3 with extensions: rustls (rollgate's client) refuses v1.
    printf '%s\n' 'basicConstraints=critical,CA:FALSE' \
      'keyUsage=critical,digitalSignature,keyEncipherment' 'extendedKeyUsage=clientAuth' >"$dir/ext"
    openssl x509 -req -days 3650 -in "$dir/csr.pem" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
      -CAcreateserial -extfile "$dir/ext" -out "$dir/cert.pem" 2>/dev/null
    sed -e "s|client-certificate: .*|client-certificate: $dir/cert.pem|" \
      -e "s|client-key: .*|client-key: $dir/key.pem|" "$KUBECONFIG_PATH" >"$config.tmp"
    mv "$config.tmp" "$config"
  fi
  kubectl apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: $name}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: $name}]
---
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata: {name: $name}
spec:
  matchingPrecedence: 100
  priorityLevelConfiguration: {name: exempt}
  rules:
  - subjects: [{kind: User, user: {name: $name}}]
    resourceRules: [{verbs: ["*"], apiGroups: ["*"], resources: ["*"], namespaces: ["*"], clusterScope: true}]
    nonResourceRules: [{verbs: ["*"], nonResourceURLs: ["*"]}]
EOF
  echo "$config"
}

healthy() { curl -fsS --max-time 2 "http://127.0.0.1:$ARGO_HEALTHZ_PORT/healthz" >/dev/null; }

cmd_up() {
  cmd_build
  "$HERE/cluster.sh" up
  KUBE_BIN=$(awk -F= '/ROLLGATE_KUBE_BIN=/ { print $2 }' <("$HERE/cluster.sh" env))
  exec 9>"$STATE_DIR.argo.lock"
  flock 9
  if alive && healthy; then
    log "already up (pid $(pid_of))"
    return
  fi
  local src crd
  src=$(module_dir)
  for crd in "$src"/manifests/crds/*-crd.yaml; do
    kubectl apply --server-side --force-conflicts -f "$crd" >/dev/null
  done
  local i established='{.status.conditions[?(@.type=="Established")].status}'
  for i in $(seq 150); do
    [[ $(kubectl get crd rollouts.argoproj.io -o "jsonpath=$established" 2>/dev/null) == True ]] && break
    ((i < 150)) || die "Argo's Rollout CRD not Established after 30s"
    sleep 0.2
  done
  log "installed Argo's CRDs ($(ls "$src"/manifests/crds/*-crd.yaml | wc -l) files)"
  local config
  config=$(cmd_identity rollgate-argo)
  mkdir -p "$LOGS" "$PIDS"
  # Its own session, so that it outlives the shell that ran `up`.
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PIDS/rollouts-controller.pid" "$BIN" \
    --kubeconfig="$config" \
    --leader-elect=false \
    --metricsPort="$ARGO_METRICS_PORT" \
    --healthzPort="$ARGO_HEALTHZ_PORT" \
    --qps=5000 --burst=10000 \
    </dev/null >"$LOGS/rollouts-controller.log" 2>&1 9>&- &
  local deadline=$((SECONDS + 60))
  until [[ -s $PIDS/rollouts-controller.pid ]] && healthy; do
    if [[ -s $PIDS/rollouts-controller.pid ]] && ! alive; then
      tail -n 30 "$LOGS/rollouts-controller.log" >&2
      die "rollouts-controller exited; log: $LOGS/rollouts-controller.log"
    fi
    ((SECONDS < deadline)) || die "rollouts-controller not healthy after 60s; log: $LOGS/rollouts-controller.log"
    sleep 0.2
  done
  log "rollouts-controller $ARGO_VERSION up (pid $(pid_of)); log: $LOGS/rollouts-controller.log"
}

cmd_down() {
  mkdir -p "$(dirname "$STATE_DIR")"
  exec 9>"$STATE_DIR.argo.lock"
  flock 9
  if ! alive; then
    rm -f "$PIDS/rollouts-controller.pid"
    log "down: rollouts-controller was not running"
    return
  fi
  local pid deadline
  pid=$(pid_of)
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + 10))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "rollouts-controller (pid $pid) ignored TERM for 10s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDS/rollouts-controller.pid"
  log "down: stopped rollouts-controller (pid $pid)"
}

cmd_status() {
  if alive; then echo "rollouts-controller: running (pid $(pid_of))"; else
    echo "rollouts-controller: stopped"
    return 1
  fi
}

main() {
  case ${1:-} in
    build) cmd_build ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    identity) cmd_identity "${@:2}" ;;
    *) die "usage: $0 build|up|down|status|identity NAME" ;;
  esac
}

main "$@"; exit
