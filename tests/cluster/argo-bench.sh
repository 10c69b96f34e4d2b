#!/usr/bin/env bash
# rollgate against Argo Rollouts on the same test cluster, the same work for
# both in one run, several runs, medians of same-run ratios (issue #23 §1):
#
#   tests/cluster/argo-bench.sh          # ROLLGATE_BIN=path/to/rollgate (default target/release/rollgate)
#
# Knobs: ROLLGATE_ARGO_BENCH_N (pods, 20), ROLLGATE_ARGO_BENCH_RUNS (3),
# ROLLGATE_ARGO_BENCH_ROWS (canary,bluegreen,abort,failing: all by default),
# ROLLGATE_ARGO_BENCH_KEEP=1 (keep the scratch dir: manifests, logs, watches).
#
# Each run of each row makes two fresh namespaces with the same pod template
# at N replicas of version 1 (kwok pods, each Ready exactly 1 s after it is
# scheduled): a Deployment for rollgate, an argoproj.io Rollout for Argo.
# Who goes first alternates between runs. A namespace is deleted, and waited
# for, before the next one is made. Canary strategies are replica-based
# (no traffic routing, no analysis), maxSurge 25%, maxUnavailable 0. The rows:
#
# - canary: to version 2 by setWeight 20, 50, 100, no pauses.
#   wall: rollgate, `rollgate apply` from start to exit (it exits when the
#   Deployment is all-new and available); Argo, from the `kubectl patch` of
#   the image to the watch event in which the Rollout is Healthy with N
#   updated, N available, N in all, and the new pod hash stable.
#   API requests: each client runs as an identity of its own (argo.sh
#   identity), its requests in a FlowSchema of its own; the figure is the rise
#   of the apiserver's apiserver_flowcontrol_dispatched_requests_total for it
#   over the same window. Argo's controller has its watches open before the
#   window (a controller's are always open); rollgate opens its own inside.
#   Pods created (distinct version-2 pods seen) and peak pods (most pods
#   existing at once, Terminating included), from a pod watch.
# - bluegreen: Services web-active and web-preview; blue-green to version 2
#   with the preview at full size, no automatic promotion, scale-down delay
#   1 s (Argo: activeService/previewService, rollbackWindow 1 revision, so
#   that going back skips the promotion pause as rollgate's rollback does).
#   At the pause (preview N Ready pods, active on version 1):
#   switch: from the promotion command (`rollgate promote web`; Argo, what
#   `kubectl argo rollouts promote` sends: a status patch clearing
#   pauseConditions) to the watch event in which web-active selects only the
#   new pods (its selector pins the new pods' hash: pod-template-hash for
#   rollgate, rollouts-pod-template-hash for Argo).
#   rollback: once that rollout is complete (N new pods, none else), from the
#   rollback command (`rollgate rollback web`; Argo, what `kubectl argo
#   rollouts undo` does: the template back to version 1's) to the event in
#   which web-active selects only the old pods again (the old set is scaled
#   up from 0 first).
# - abort: a canary paused indefinitely after setWeight 20 (the pods settled:
#   N in all, every one Ready). From the abort command (`rollgate abort web`;
#   Argo, what `kubectl argo rollouts abort` sends: a status patch
#   abort: true) to the pod event after which the stable set serves alone:
#   N pods of version 1 Ready and not deleting, every version-2 pod deleting
#   (deletionTimestamp set: out of every Service's endpoints) or gone.
# - failing: a canary (setWeight 20, 50, 100) to a version whose pods never
#   become Ready (label rollgate.dev/never-ready, kwok-stages.yaml);
#   progressDeadlineSeconds 10 for both, rollgate with rollback auto, Argo
#   with progressDeadlineAbort. From the start of the rollout (`rollgate
#   apply`; the `kubectl patch` of Argo's template) to the stable set serving
#   alone again, as in abort.
#
# At N > 20 the pods run on bench-only kwok nodes (kwok-argo-bench-node-*,
# 1,000 pods each, tainted and labelled rollgate.dev/bench=argo; the pods get
# a toleration and a nodeSelector), created when this starts and deleted when
# it ends: the suite's three nodes hold 330 pods, shared by everyone's tests.
#
# Prints one line per run and row and a Markdown table of medians, with the
# median of the per-run ratios rollgate / Argo. Not part of tests/run.sh: CI
# does not build Argo.
set -euo pipefail
# The rows run in command substitutions: a failure there must end them too.
shopt -s inherit_errexit

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
N=${ROLLGATE_ARGO_BENCH_N:-20}
RUNS=${ROLLGATE_ARGO_BENCH_RUNS:-3}
ROWS=${ROLLGATE_ARGO_BENCH_ROWS:-canary,bluegreen,abort,failing}
ROLLGATE=${ROLLGATE_BIN:-$REPO/target/release/rollgate}
STATE_DIR=${ROLLGATE_CLUSTER_DIR:-/tmp/rollgate-cluster}
PKI=$STATE_DIR/pki
BENCH_LABEL=rollgate.dev/bench

log() { printf 'argo-bench: %s\n' "$*" >&2; }
WATCHERS=()
die() {
  log "error: $*"
  local p
  for p in "${WATCHERS[@]}"; do kill "$p" 2>/dev/null || true; done
  exit 1
}

[[ $N =~ ^[1-9][0-9]*$ ]] || die "ROLLGATE_ARGO_BENCH_N must be a positive count, not '$N'"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "ROLLGATE_ARGO_BENCH_RUNS must be a positive count, not '$RUNS'"
IFS=, read -ra ROW_LIST <<<"$ROWS"
for row in "${ROW_LIST[@]}"; do
  [[ $row =~ ^(canary|bluegreen|abort|failing)$ ]] ||
    die "ROLLGATE_ARGO_BENCH_ROWS: unknown row '$row' (canary, bluegreen, abort, failing)"
done
BENCH_NODES=0
if ((N > 20)); then BENCH_NODES=2; fi
# Waits scale with N (kwok starts pods fast; the controllers pace them).
LONG=$((120 + N))
# The conditions every row shares, for the table.
AT="N=$N, ready after 1 s, $RUNS runs"
[[ -x $ROLLGATE ]] || die "no rollgate binary at $ROLLGATE (cargo build --release, or set ROLLGATE_BIN)"
"$HERE/argo.sh" up
KUBE_BIN=$(awk -F= '/ROLLGATE_KUBE_BIN=/ { print $2 }' <("$HERE/cluster.sh" env))
export KUBECONFIG=$STATE_DIR/kubeconfig
kubectl() { "$KUBE_BIN/kubectl" "$@"; }
RG_CONFIG=$(KUBE_BIN=$KUBE_BIN "$HERE/argo.sh" identity rollgate-bench)
APISERVER=$(awk '/server:/ { print $2; exit }' "$KUBECONFIG")

# Scratch: manifests, logs, watch files; removed when the run succeeds
# (unless ROLLGATE_ARGO_BENCH_KEEP=1).
WORK=$(mktemp -d /tmp/argo-bench.XXXXXX)

now_ms() { date +%s%3N; }

# Requests of FlowSchema $1 dispatched so far.
requests() {
  curl -fsS --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "$APISERVER/metrics" |
    awk -v fs="flow_schema=\"$1\"" '$1 ~ /^apiserver_flowcontrol_dispatched_requests_total\{/ && index($1, fs) { s += $2 } END { printf "%d\n", s }'
}

image() { echo "registry.invalid/rollgate/web:$1"; }

# The bench-only nodes (see the header): `bench_nodes apply|delete`.
bench_nodes() {
  local i
  for i in $(seq "$BENCH_NODES"); do
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-argo-bench-node-$i
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels: {kubernetes.io/hostname: kwok-argo-bench-node-$i, kubernetes.io/os: linux, type: kwok, $BENCH_LABEL: argo}
spec:
  taints: [{key: $BENCH_LABEL, value: argo, effect: NoSchedule}]
status:
  allocatable: {cpu: "1000", memory: 4Ti, pods: "1000"}
  capacity: {cpu: "1000", memory: 4Ti, pods: "1000"}
EOF
  done | kubectl "$1" -f - >/dev/null
}

# The pod template of version $1 with the extra pod labels $2 (YAML flow
# entries), as a Deployment's or Rollout's spec has it.
template() {
  cat <<EOF
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web${2:+, $2}}
      annotations: {rollgate.dev/ready-delay: "1s"}
    spec:
      containers: [{name: web, image: "$(image "$1")"}]
EOF
  if ((BENCH_NODES)); then
    echo "      nodeSelector: {$BENCH_LABEL: argo}"
    echo "      tolerations: [{key: $BENCH_LABEL, operator: Exists, effect: NoSchedule}]"
  fi
}

fresh_ns() {
  local ns
  ns=$1-$(date +%s%N | tail -c 7)
  kubectl create namespace "$ns" >/dev/null
  local i
  for i in $(seq 100); do
    kubectl -n "$ns" get serviceaccount default >/dev/null 2>&1 && break
    sleep 0.1
  done
  echo "$ns"
}

# Deletes namespace $1 and waits until it is gone, its pods too, so that the
# next one starts on a quiet control plane.
drop_ns() {
  kubectl delete namespace "$1" --timeout=$((LONG + 60))s >/dev/null ||
    die "namespace $1 not gone after $((LONG + 60))s"
}

# Prints lines with the wall clock in microseconds in front.
stamp() {
  local line
  while IFS= read -r line; do printf '%s %s\n' "${EPOCHREALTIME/./}" "$line"; done
}

POD_COLUMNS='E:.type,N:.object.metadata.name,I:.object.spec.containers[0].image,R:.object.status.conditions[?(@.type=="Ready")].status,D:.object.metadata.deletionTimestamp'
SVC_COLUMNS='E:.type,N:.object.metadata.name,H:.object.spec.selector.pod-template-hash,A:.object.spec.selector.rollouts-pod-template-hash'

# Watches $2 (pods or services) of namespace $1 into file $3, each line
# stamped: pods "µs EVENT NAME IMAGE READY DELETION", services "µs EVENT
# NAME POD-TEMPLATE-HASH ROLLOUTS-POD-TEMPLATE-HASH" (<none> where unset).
# Returns once the initial list is in.
watch_into() {
  local columns=$POD_COLUMNS
  [[ $2 == services ]] && columns=$SVC_COLUMNS
  # The binary itself, not the kubectl function: a background function is a
  # subshell, and killing it would leave its kubectl running. When kubectl
  # goes, `stamp` reads the end of its output and goes too.
  "$KUBE_BIN/kubectl" -n "$1" get "$2" -w --output-watch-events -o "custom-columns=$columns" \
    --no-headers 2>/dev/null > >(stamp >"$3") &
  WATCHERS+=($!)
  echo $! >>"$WORK/watchers"
  local deadline=$((SECONDS + 10))
  until [[ -s $3 ]]; do
    ((SECONDS < deadline)) || die "no $2 listed by the watch of $1 after 10s"
    sleep 0.05
  done
  sleep 0.2
}

stop_watches() {
  local p
  for p in "${WATCHERS[@]}"; do kill "$p" 2>/dev/null || true; done
  WATCHERS=()
}

# "created peak" from a pod watch file: version-2 pods seen, most pods at once.
pod_figures() {
  awk -v img="$(image 2)" '
    $2 == "ADDED" && !($3 in live) { live[$3] = 1; n++; if (n > peak) peak = n }
    $2 == "DELETED" && ($3 in live) { delete live[$3]; n-- }
    $4 == img { created[$3] = 1 }
    END { c = 0; for (p in created) c++; print c, peak }
  ' "$1"
}

# From pod watch file $1: the wall clock (ms) of the first event at or after
# $2 (ms) after which the stable set serves alone (see the header); nothing
# if there is none yet.
alone_at() {
  awk -v t0="$2" -v n="$N" -v old="$(image 1)" -v new="$(image 2)" '
    {
      ts = int($1 / 1000); p = $3
      if (st[p] == "o") ok--
      if (st[p] == "n") live--
      delete st[p]
      if ($4 == new) seen = 1
      if ($2 != "DELETED" && $6 == "<none>") {
        if ($4 == old && $5 == "True") { st[p] = "o"; ok++ }
        else if ($4 == new) { st[p] = "n"; live++ }
      }
      if (ts >= t0 && seen && ok >= n && live == 0) { printf "%.0f\n", ts; exit }
    }' "$1"
}

# From Service watch file $1: the wall clock (ms) of the first event at or
# after $2 (ms) in which web-active pins hash $3 in column $4 (4:
# pod-template-hash, rollgate's; 5: rollouts-pod-template-hash, Argo's).
pinned_at() {
  awk -v t0="$2" -v h="$3" -v c="$4" '
    $3 == "web-active" && int($1 / 1000) >= t0 && $c == h { printf "%.0f\n", int($1 / 1000); exit }' "$1"
}

# Runs "$@" every 0.1 s until it prints something, and prints that; dies
# after $1 seconds, saying $2.
poll() {
  local limit=$1 what=$2 out deadline=$((SECONDS + $1))
  shift 2
  until out=$("$@" 2>/dev/null) && [[ -n $out ]]; do
    ((SECONDS < deadline)) || die "$what: not after ${limit}s"
    sleep 0.1
  done
  echo "$out"
}

# "old new" (pods of version 1, of version 2) once namespace $1 has exactly
# $2 pods, all Ready, none deleting, $3 to $4 of them of version 2.
settled() {
  kubectl -n "$1" get pods --no-headers \
    -o 'custom-columns=I:.spec.containers[0].image,R:.status.conditions[?(@.type=="Ready")].status,D:.metadata.deletionTimestamp' |
    awk -v total="$2" -v lo="$3" -v hi="$4" -v new="$(image 2)" '
      { all++; if ($2 != "True" || $3 != "<none>") bad++; if ($1 == new) n++ }
      END { if (all == total && !bad && n >= lo && n <= hi) print all - n, n + 0 }'
}

# The value of jsonpath $3 on object $2 of namespace $1.
field() { kubectl -n "$1" get "$2" -o "jsonpath=$3"; }

# Services web-active and web-preview selecting app web, in namespace $1.
services() {
  local s
  for s in web-active web-preview; do
    echo "---"
    echo "{apiVersion: v1, kind: Service, metadata: {name: $s}, spec: {selector: {app: web}, ports: [{port: 80}]}}"
  done | kubectl -n "$1" apply -f - >/dev/null
}

# shellcheck source=argo-bench-rows.sh
source "$HERE/argo-bench-rows.sh"

ver() { awk '$1 == "require" && $2 == "github.com/argoproj/argo-rollouts" { print $3 }' "$HERE/argo/go.mod"; }

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ratio_of() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# At exit: the watches a failed row left (those still running kubectl), and
# the bench-only nodes.
cleanup() {
  local rc=$? p
  ((rc == 0)) || log "failed (exit $rc); files in $WORK"
  while read -r p; do
    [[ $(readlink "/proc/$p/exe" 2>/dev/null) == "$KUBE_BIN/kubectl" ]] && kill "$p" 2>/dev/null
  done < <(cat "$WORK/watchers" 2>/dev/null)
  if ((BENCH_NODES)); then bench_nodes delete || true; fi
}
trap cleanup EXIT
if ((BENCH_NODES)); then
  bench_nodes apply
  kubectl wait --for=condition=Ready node -l "$BENCH_LABEL=argo" --timeout=60s >/dev/null
  log "bench-only nodes: kwok-argo-bench-node-1..$BENCH_NODES"
fi
log "N=$N, $RUNS runs, rows $ROWS, rollgate $("$ROLLGATE" --version 2>/dev/null || echo "$ROLLGATE")," \
  "load average $(cut -d' ' -f1-3 /proc/loadavg)"
for row in "${ROW_LIST[@]}"; do : >"$WORK/results-$row"; done
for run in $(seq "$RUNS"); do
  for row in "${ROW_LIST[@]}"; do
    if ((run % 2)); then
      mine=$("run_rollgate_$row" "$run")
      argo=$("run_argo_$row" "$run")
    else
      argo=$("run_argo_$row" "$run")
      mine=$("run_rollgate_$row" "$run")
    fi
    [[ -n $mine && -n $argo ]] || die "run $run, $row, failed; files in $WORK"
    "report_$row" "$run" "$mine" "$argo"
    echo "$mine $argo" >>"$WORK/results-$row"
  done
done

# Columns $1 of the results of row $2: its median.
col() { awk -v c="$1" '{ print $c }' "$WORK/results-$2" | median; }
ratio() { awk -v a="$1" -v b="$2" '{ printf "%.3f\n", $a / $b }' "$WORK/results-$3" | median; }
range() { awk -v a="$1" -v b="$2" '{ printf "%.2f\n", $a / $b }' "$WORK/results-$3" | sort -g | sed -n '1p;$p' | paste -sd- -; }
verdict() { if awk -v r="$1" -v t="$2" "BEGIN { exit !(r $3 t) }"; then echo pass; else echo FAIL; fi; }
# A time row: rollgate's column $1 against Argo's column $2 of row $3.
time_row() {
  local r
  r=$(ratio "$1" "$2" "$3")
  echo "| $4 | $(col "$1" "$3") ms | $(col "$2" "$3") ms | $r ($(range "$1" "$2" "$3")) | ≤ 1.00 | $(verdict "$r" 1.00 '<=') |"
}

echo
echo "| figure | rollgate | Argo Rollouts | ratio (median of same-run ratios) | target | pass |"
echo "| --- | --- | --- | --- | --- | --- |"
for row in "${ROW_LIST[@]}"; do "table_$row"; done
if [[ ${ROLLGATE_ARGO_BENCH_KEEP:-} == 1 ]]; then log "scratch kept: $WORK"; else rm -rf "$WORK"; fi
