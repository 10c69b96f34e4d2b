#!/usr/bin/env bash
# rollgate's canary against Argo Rollouts' on the same test cluster, in one
# run (issue #23 §1, the basic-canary row):
#
#   tests/cluster/argo-bench.sh          # ROLLGATE_BIN=path/to/rollgate (default target/release/rollgate)
#
# Knobs: ROLLGATE_ARGO_BENCH_N (pods, 20), ROLLGATE_ARGO_BENCH_RUNS (3).
#
# Each run makes two fresh namespaces with the same pod template at N
# replicas of version 1 (kwok pods, each Ready exactly 1 s after it is
# scheduled): a Deployment for rollgate, an argoproj.io Rollout for Argo.
# Both then go to version 2 by a replica-based canary: setWeight 20, 50, 100,
# no pauses, no analysis, no traffic routing, maxSurge 25%, maxUnavailable 0.
# Who goes first alternates between runs.
#
# - wall: rollgate, `rollgate apply` from start to exit (it exits when the
#   Deployment is all-new and available); Argo, from the `kubectl patch` of
#   the image to the watch event in which the Rollout is Healthy with N
#   updated, N available, N in all, and the new pod hash stable.
# - API requests: each client runs as an identity of its own (argo.sh
#   identity), its requests in a FlowSchema of its own; the figure is the rise
#   of the apiserver's apiserver_flowcontrol_dispatched_requests_total for it
#   over the same window. Argo's controller has its watches open before the
#   window (a controller's are always open); rollgate opens its own inside.
# - pods created (distinct version-2 pods seen) and peak pods (most pods
#   existing at once, Terminating included), from a pod watch.
#
# Prints one line per run and a Markdown table of medians, with the median of
# the per-run ratios rollgate / Argo. Not part of tests/run.sh: CI does not
# build Argo.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
N=${ROLLGATE_ARGO_BENCH_N:-20}
RUNS=${ROLLGATE_ARGO_BENCH_RUNS:-3}
ROLLGATE=${ROLLGATE_BIN:-$REPO/target/release/rollgate}
STATE_DIR=${ROLLGATE_CLUSTER_DIR:-/tmp/rollgate-cluster}
PKI=$STATE_DIR/pki

log() { printf 'argo-bench: %s\n' "$*" >&2; }
WATCHERS=()
die() {
  log "error: $*"
  local p
  for p in "${WATCHERS[@]}"; do kill "$p" 2>/dev/null || true; done
  exit 1
}

[[ -x $ROLLGATE ]] || die "no rollgate binary at $ROLLGATE (cargo build --release, or set ROLLGATE_BIN)"
"$HERE/argo.sh" up
KUBE_BIN=$(awk -F= '/ROLLGATE_KUBE_BIN=/ { print $2 }' <("$HERE/cluster.sh" env))
export KUBECONFIG=$STATE_DIR/kubeconfig
kubectl() { "$KUBE_BIN/kubectl" "$@"; }
RG_CONFIG=$(KUBE_BIN=$KUBE_BIN "$HERE/argo.sh" identity rollgate-bench)
APISERVER=$(awk '/server:/ { print $2; exit }' "$KUBECONFIG")

# Scratch: manifests, logs, watch files; removed when the run succeeds.
WORK=$(mktemp -d /tmp/argo-bench.XXXXXX)

now_ms() { date +%s%3N; }

# Requests of FlowSchema $1 dispatched so far.
requests() {
  curl -fsS --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "$APISERVER/metrics" |
    awk -v fs="flow_schema=\"$1\"" '$1 ~ /^apiserver_flowcontrol_dispatched_requests_total\{/ && index($1, fs) { s += $2 } END { printf "%d\n", s }'
}

image() { echo "registry.invalid/rollgate/web:$1"; }

template() {
  cat <<EOF
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations: {rollgate.dev/ready-delay: "1s"}
    spec:
      containers: [{name: web, image: "$(image 1)"}]
EOF
}

fresh_ns() {
  local ns=$1-$(date +%s%N | tail -c 7)
  kubectl create namespace "$ns" >/dev/null
  local i
  for i in $(seq 100); do
    kubectl -n "$ns" get serviceaccount default >/dev/null 2>&1 && break
    sleep 0.1
  done
  echo "$ns"
}

# Watches pods of namespace $1 into file $2: "EVENT NAME IMAGE" lines.
watch_pods() {
  # The binary itself, not the kubectl function: a background function is a
  # subshell, and killing it would leave its kubectl running.
  "$KUBE_BIN/kubectl" -n "$1" get pods -w --output-watch-events \
    -o 'custom-columns=E:.type,N:.object.metadata.name,I:.object.spec.containers[0].image' \
    --no-headers >"$2" 2>/dev/null &
  WATCHERS+=($!)
  sleep 0.5
}

# "created peak" from a pod watch file: version-2 pods seen, most pods at once.
pod_figures() {
  awk -v img="$(image 2)" '
    $1 == "ADDED" && !($2 in live) { live[$2] = 1; n++; if (n > peak) peak = n }
    $1 == "DELETED" && ($2 in live) { delete live[$2]; n-- }
    $3 == img { created[$2] = 1 }
    END { c = 0; for (p in created) c++; print c, peak }
  ' "$1"
}

run_rollgate() {
  local ns out=$WORK/rollgate-$1
  ns=$(fresh_ns rg-argo-bench-rollgate)
  {
    echo "apiVersion: apps/v1"
    echo "kind: Deployment"
    echo "metadata: {name: web}"
    echo "spec:"
    echo "  replicas: $N"
    echo "  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 25%, maxUnavailable: 0}}"
    template
  } | kubectl -n "$ns" apply -f - >/dev/null
  kubectl -n "$ns" rollout status deployment/web --timeout=120s >/dev/null
  cat >"$out.yaml" <<EOF
apiVersion: rollgate.dev/v1
kind: Rollout
metadata: {name: web}
spec:
  version: "2"
  target:
    kubernetes: {namespace: $ns, deployment: web, image: "$(image 2)"}
  strategy:
    canary: {maxSurge: "25%", maxUnavailable: 0, steps: [{setWeight: 20}, {setWeight: 50}, {setWeight: 100}]}
EOF
  watch_pods "$ns" "$out.pods"
  local r0 r1 t0 t1
  r0=$(requests rollgate-bench)
  t0=$(now_ms)
  KUBECONFIG=$RG_CONFIG ROLLGATE_STATE=$out.state ROLLGATE_USER=bench \
    "$ROLLGATE" apply -o plain -f "$out.yaml" >"$out.log" 2>&1 ||
    die "rollgate apply failed; log: $out.log"
  t1=$(now_ms)
  r1=$(requests rollgate-bench)
  # It exited done: the Deployment must be all-new and available now.
  kubectl -n "$ns" rollout status deployment/web --timeout=1s >/dev/null ||
    die "rollgate exited before the Deployment was rolled out ($ns)"
  sleep 1
  kill "${WATCHERS[-1]}" 2>/dev/null || true
  echo "$((t1 - t0)) $((r1 - r0)) $(pod_figures "$out.pods")"
  kubectl delete namespace "$ns" --wait=false >/dev/null
}

run_argo() {
  local ns out=$WORK/argo-$1
  ns=$(fresh_ns rg-argo-bench-argo)
  {
    echo "apiVersion: argoproj.io/v1alpha1"
    echo "kind: Rollout"
    echo "metadata: {name: web}"
    echo "spec:"
    echo "  replicas: $N"
    echo "  strategy:"
    echo "    canary: {maxSurge: 25%, maxUnavailable: 0, steps: [{setWeight: 20}, {setWeight: 50}, {setWeight: 100}]}"
    template
  } | kubectl -n "$ns" apply -f - >/dev/null
  local fields='jsonpath={.status.phase} {.status.updatedReplicas} {.status.availableReplicas} {.status.replicas} {.status.currentPodHash} {.status.stableRS}{"\n"}'
  local status=(kubectl -n "$ns" get rollout web -o "$fields")
  local deadline=$((SECONDS + 120)) line old
  until line=$("${status[@]}") && read -r phase up av all hash stable <<<"$line" &&
    [[ $phase == Healthy && $up == "$N" && $av == "$N" && $all == "$N" && $hash == "$stable" ]]; do
    ((SECONDS < deadline)) || die "Argo's version 1 not Healthy after 120s ($ns): $line"
    sleep 0.2
  done
  old=$hash
  watch_pods "$ns" "$out.pods"
  "$KUBE_BIN/kubectl" -n "$ns" get rollout web -w -o "$fields" >"$out.status" 2>/dev/null &
  WATCHERS+=($!)
  sleep 0.5
  local r0 r1 t0 t1
  r0=$(requests rollgate-argo)
  t0=$(now_ms)
  kubectl -n "$ns" patch rollout web --type=json \
    -p "[{\"op\": \"replace\", \"path\": \"/spec/template/spec/containers/0/image\", \"value\": \"$(image 2)\"}]" >/dev/null
  deadline=$((SECONDS + 180))
  # Follows the status watch until the new version is Healthy and alone.
  until tail -n 1 "$out.status" | {
    read -r phase up av all hash stable &&
      [[ $phase == Healthy && $up == "$N" && $av == "$N" && $all == "$N" && $hash == "$stable" && $hash != "$old" ]]
  }; do
    ((SECONDS < deadline)) || die "Argo's canary not Healthy after 180s ($ns): $(tail -n 1 "$out.status")"
    sleep 0.02
  done
  t1=$(now_ms)
  r1=$(requests rollgate-argo)
  sleep 1
  kill "${WATCHERS[-1]}" "${WATCHERS[-2]}" 2>/dev/null || true
  echo "$((t1 - t0)) $((r1 - r0)) $(pod_figures "$out.pods")"
  kubectl delete namespace "$ns" --wait=false >/dev/null
}

ver() { awk '$1 == "require" && $2 == "github.com/argoproj/argo-rollouts" { print $3 }' "$HERE/argo/go.mod"; }

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

log "N=$N, $RUNS runs, rollgate $("$ROLLGATE" --version 2>/dev/null || echo "$ROLLGATE"), load average $(cut -d' ' -f1-3 /proc/loadavg)"
: >"$WORK/results"
for run in $(seq "$RUNS"); do
  if ((run % 2)); then
    rg=$(run_rollgate "$run")
    ar=$(run_argo "$run")
  else
    ar=$(run_argo "$run")
    rg=$(run_rollgate "$run")
  fi
  [[ -n $rg && -n $ar ]] || die "run $run failed; files in $WORK"
  read -r rg_ms rg_req rg_created rg_peak <<<"$rg"
  read -r ar_ms ar_req ar_created ar_peak <<<"$ar"
  log "run $run: rollgate ${rg_ms} ms, $rg_req requests, $rg_created created, peak $rg_peak;" \
    "Argo ${ar_ms} ms, $ar_req requests, $ar_created created, peak $ar_peak;" \
    "ratio $(awk -v a="$rg_ms" -v b="$ar_ms" 'BEGIN { printf "%.2f", a / b }')"
  echo "$rg_ms $rg_req $rg_created $rg_peak $ar_ms $ar_req $ar_created $ar_peak" >>"$WORK/results"
done

col() { awk -v c="$1" '{ print $c }' "$WORK/results" | median; }
ratio() { awk -v a="$1" -v b="$2" '{ printf "%.3f\n", $a / $b }' "$WORK/results" | median; }
range() { awk -v a="$1" -v b="$2" '{ printf "%.2f\n", $a / $b }' "$WORK/results" | sort -g | sed -n '1p;$p' | paste -sd- -; }
verdict() { if awk -v r="$1" -v t="$2" "BEGIN { exit !(r $3 t) }"; then echo pass; else echo FAIL; fi; }
wall=$(ratio 1 5)
req=$(ratio 2 6)
same=$(awk '$3 != $7 { d++ } END { print d + 0 }' "$WORK/results")
what="N=$N, canary 20/50/100 by replicas, 25%/0, ready after 1 s, $RUNS runs"
echo
echo "| figure | rollgate | Argo Rollouts | ratio (median of same-run ratios) | target | pass |"
echo "| --- | --- | --- | --- | --- | --- |"
echo "| vs Argo Rollouts $(ver): wall, new image to all new and available ($what) | $(col 1) ms | $(col 5) ms | $wall ($(range 1 5)) | ≤ 1.00 | $(verdict "$wall" 1.00 '<=') |"
echo "| vs Argo Rollouts: API requests in that time (apiserver, by FlowSchema) | $(col 2) | $(col 6) | $req ($(range 2 6)) | < 1.00 | $(verdict "$req" 1.00 '<') |"
echo "| vs Argo Rollouts: pods created, peak pods | $(col 3), $(col 4) | $(col 7), $(col 8) | - | created equal | $(verdict "$same" 0 '==') |"
rm -rf "$WORK"
