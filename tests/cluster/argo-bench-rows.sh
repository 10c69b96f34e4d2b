# The rows of argo-bench.sh (sourced by it; its header says what each
# measures). Per row: run_rollgate_ROW and run_argo_ROW (argument: the run's
# number; they print the run's figures on one line), report_ROW (one log line
# per run) and table_ROW (its lines of the Markdown table).
# shellcheck shell=bash

# rollgate as the benchmark's own identity, with the state dir $STATE.
rg() { KUBECONFIG=$RG_CONFIG ROLLGATE_STATE=$STATE ROLLGATE_USER=bench "$ROLLGATE" "$@"; }

# Deployment web at N Ready pods of version 1 in namespace $1.
rollgate_v1() {
  {
    echo "apiVersion: apps/v1"
    echo "kind: Deployment"
    echo "metadata: {name: web}"
    echo "spec:"
    echo "  replicas: $N"
    echo "  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 25%, maxUnavailable: 0}}"
    template 1
  } | kubectl -n "$1" apply -f - >/dev/null
  kubectl -n "$1" rollout status deployment/web --timeout="${LONG}s" >/dev/null
}

# rollgate's manifest for web in namespace $1 at version 2: the target's
# image: or manifest: entry $2, then the lines from `strategy:` on ($3...).
rollgate_manifest() {
  cat <<EOF
apiVersion: rollgate.dev/v1
kind: Rollout
metadata: {name: web}
spec:
  version: "2"
  target:
    kubernetes: {namespace: $1, deployment: web, $2}
EOF
  printf '%s\n' "${@:3}"
}

ARGO_FIELDS='jsonpath={.status.phase} {.status.updatedReplicas} {.status.availableReplicas} {.status.replicas} {.status.currentPodHash} {.status.stableRS}{"\n"}'

# The Rollout's pod hash once it is Healthy with N updated, N available, N in
# all and its pod hash stable, and that hash is not $2.
argo_healthy() {
  local phase up av all hash stable
  read -r phase up av all hash stable < <(kubectl -n "$1" get rollout web -o "$ARGO_FIELDS") || true
  [[ $phase == Healthy && $up == "$N" && $av == "$N" && $all == "$N" && $hash == "$stable" && $hash != "$2" ]] &&
    echo "$hash"
}

# Rollout web in namespace $1 at N Ready pods of version 1; $2: the lines of
# its spec from `strategy:` on. Prints its pod hash.
argo_v1() {
  {
    echo "apiVersion: argoproj.io/v1alpha1"
    echo "kind: Rollout"
    echo "metadata: {name: web}"
    echo "spec:"
    echo "  replicas: $N"
    printf '%s\n' "$2"
    template 1
  } | kubectl -n "$1" apply -f - >/dev/null
  poll "$LONG" "Argo's version 1 Healthy ($1)" argo_healthy "$1" ""
}

# Prints Paused once Argo's Rollout in namespace $1 is.
argo_paused() { [[ $(field "$1" rollout/web '{.status.phase}') == Paused ]] && echo Paused; }

# The new image on Argo's Rollout in namespace $1 (as `kubectl argo rollouts
# set image` does), with the JSON patch operations $2 added.
argo_set() {
  kubectl -n "$1" patch rollout web --type=json \
    -p "[{\"op\": \"replace\", \"path\": \"/spec/template/spec/containers/0/image\", \"value\": \"$(image 2)\"}${2:+, $2}]" >/dev/null
}

# A status patch on Argo's Rollout in namespace $1, as the kubectl plugin
# sends it (pkg/kubectl-argo-rollouts/cmd/{abort,promote}).
argo_status() { kubectl -n "$1" patch rollout web --subresource=status --type=merge -p "$2" >/dev/null; }

CANARY='    canary: {maxSurge: 25%, maxUnavailable: 0, steps: [{setWeight: 20}, {setWeight: 50}, {setWeight: 100}]}'
PAUSED='    canary: {maxSurge: 25%, maxUnavailable: 0, steps: [{setWeight: 20}, {pause: {}}, {setWeight: 50}, {setWeight: 100}]}'

## canary

run_rollgate_canary() {
  local ns out=$WORK/rollgate-canary-$1 STATE=$WORK/rollgate-canary-$1.state
  ns=$(fresh_ns rg-argo-bench-rollgate)
  rollgate_v1 "$ns"
  rollgate_manifest "$ns" "image: \"$(image 2)\"" "  strategy:" "$CANARY" >"$out.yaml"
  watch_into "$ns" pods "$out.pods"
  local r0 r1 t0 t1
  r0=$(requests rollgate-bench)
  t0=$(now_ms)
  rg apply -o plain -f "$out.yaml" >"$out.log" 2>&1 || die "rollgate apply failed; log: $out.log"
  t1=$(now_ms)
  r1=$(requests rollgate-bench)
  # It exited done: the Deployment must be all-new and available now.
  kubectl -n "$ns" rollout status deployment/web --timeout=1s >/dev/null ||
    die "rollgate exited before the Deployment was rolled out ($ns)"
  sleep 1
  stop_watches
  echo "$((t1 - t0)) $((r1 - r0)) $(pod_figures "$out.pods")"
  drop_ns "$ns"
}

run_argo_canary() {
  local ns out=$WORK/argo-canary-$1 old
  ns=$(fresh_ns rg-argo-bench-argo)
  old=$(argo_v1 "$ns" "  strategy:
$CANARY")
  watch_into "$ns" pods "$out.pods"
  "$KUBE_BIN/kubectl" -n "$ns" get rollout web -w -o "$ARGO_FIELDS" >"$out.status" 2>/dev/null &
  WATCHERS+=($!)
  echo $! >>"$WORK/watchers"
  sleep 0.5
  local r0 r1 t0 t1
  r0=$(requests rollgate-argo)
  t0=$(now_ms)
  argo_set "$ns"
  local deadline=$((SECONDS + LONG))
  # Follows the status watch until the new version is Healthy and alone.
  until tail -n 1 "$out.status" | {
    read -r phase up av all hash stable &&
      [[ $phase == Healthy && $up == "$N" && $av == "$N" && $all == "$N" && $hash == "$stable" && $hash != "$old" ]]
  }; do
    ((SECONDS < deadline)) || die "Argo's canary not Healthy after ${LONG}s ($ns): $(tail -n 1 "$out.status")"
    sleep 0.02
  done
  t1=$(now_ms)
  r1=$(requests rollgate-argo)
  sleep 1
  stop_watches
  echo "$((t1 - t0)) $((r1 - r0)) $(pod_figures "$out.pods")"
  drop_ns "$ns"
}

report_canary() {
  local rg_ms rg_req rg_created rg_peak ar_ms ar_req ar_created ar_peak
  read -r rg_ms rg_req rg_created rg_peak <<<"$2"
  read -r ar_ms ar_req ar_created ar_peak <<<"$3"
  log "run $1, canary: rollgate ${rg_ms} ms, $rg_req requests, $rg_created created, peak $rg_peak;" \
    "Argo ${ar_ms} ms, $ar_req requests, $ar_created created, peak $ar_peak; ratio $(ratio_of "$rg_ms" "$ar_ms")"
}

table_canary() {
  local req same
  req=$(ratio 2 6 canary)
  same=$(awk '$3 != $7 { d++ } END { print d + 0 }' "$WORK/results-canary")
  time_row 1 5 canary "vs Argo Rollouts $(ver): canary, wall, new image to all new and available (setWeight 20/50/100 by replicas, 25%/0, $AT)"
  echo "| vs Argo Rollouts: canary, API requests in that time (apiserver, by FlowSchema) | $(col 2 canary) | $(col 6 canary) | $req ($(range 2 6 canary)) | < 1.00 | $(verdict "$req" 1.00 '<') |"
  echo "| vs Argo Rollouts: canary, pods created, peak pods | $(col 3 canary), $(col 4 canary) | $(col 7 canary), $(col 8 canary) | - | created equal | $(verdict "$same" 0 '==') |"
}

## bluegreen


# The blue-green figures in namespace $1, paused with the preview at N: the
# Services' hashes in column $3 of watch file $2.services (4 rollgate's, 5
# Argo's); `$4 $1` promotes, `$5 $1` rolls back, `$6 $1 HASH` prints
# something once the rollout to the pods of HASH is complete. Prints
# "switch back" (ms).
bluegreen_times() {
  local ns=$1 out=$2 key=pod-template-hash
  [[ $3 == 5 ]] && key=rollouts-pod-template-hash
  poll "$LONG" "the preview at N ($ns)" settled "$ns" $((2 * N)) "$N" "$N" >/dev/null
  local old new
  old=$(field "$ns" service/web-active "{.spec.selector.$key}")
  new=$(field "$ns" service/web-preview "{.spec.selector.$key}")
  [[ -n $old && -n $new && $old != "$new" ]] || die "Services not pinned by $key ($ns): active '$old', preview '$new'"
  watch_into "$ns" services "$out.services"
  local t0 t1 switch back
  t0=$(now_ms)
  "$4" "$ns"
  t1=$(now_ms)
  switch=$(poll 30 "web-active on the new pods ($ns)" pinned_at "$out.services" "$t0" "$new" "$3")
  log "  $4 returned after $((t1 - t0)) ms, web-active switched at $((switch - t0)) ms"
  poll "$LONG" "version 2 complete ($ns)" "$6" "$ns" "$new" >/dev/null
  t1=$(now_ms)
  "$5" "$ns"
  back=$(poll 30 "web-active on the old pods ($ns)" pinned_at "$out.services" "$t1" "$old" "$3")
  log "  $5: web-active back at $((back - t1)) ms"
  poll "$LONG" "version 1 back alone ($ns)" settled "$ns" "$N" 0 0 >/dev/null
  stop_watches
  echo "$((switch - t0)) $((back - t1))"
}

rollgate_promote() { rg promote web >>"$OUT.log" 2>&1 || die "rollgate promote failed; log: $OUT.log"; }
rollgate_rollback() { rg rollback web >>"$OUT.log" 2>&1 || die "rollgate rollback failed; log: $OUT.log"; }
# Prints something once rollgate's Deployment in $1 is all new, nothing else
# runs and the waiting apply ($APPLY) has exited.
rollgate_done() {
  ! kill -0 "$APPLY" 2>/dev/null &&
    kubectl -n "$1" rollout status deployment/web --timeout=1s >/dev/null && settled "$1" "$N" "$N" "$N"
}

# `rollgate apply --wait -f $OUT.yaml` in the background, as $APPLY (the
# peer of Argo's running controller: it waits at the pause and acts on the
# command's request); returns once the journal says it is paused.
rollgate_waiting() {
  rg apply --wait -o plain -f "$OUT.yaml" >"$OUT.log" 2>&1 &
  APPLY=$!
  poll "$LONG" "rollgate apply --wait paused ($OUT.log)" rollgate_paused >/dev/null
}
rollgate_paused() {
  kill -0 "$APPLY" 2>/dev/null || die "rollgate apply --wait exited before its pause; log: $OUT.log"
  # (status exits 3 while paused: its code is not the point)
  { rg status web -o json || true; } | grep -o '"paused":"' | head -1
}
# The waiting apply's exit code is $1, else the run dies.
rollgate_exited() {
  local code=0
  wait "$APPLY" || code=$?
  ((code == $1)) || die "rollgate apply --wait: exit $code, not $1; log: $OUT.log"
}

run_rollgate_bluegreen() {
  local ns OUT=$WORK/rollgate-bluegreen-$1 STATE=$WORK/rollgate-bluegreen-$1.state APPLY
  ns=$(fresh_ns rg-argo-bench-rollgate)
  services "$ns"
  rollgate_v1 "$ns"
  rollgate_manifest "$ns" "image: \"$(image 2)\"" "  strategy:" \
    "    blueGreen: {autoPromotionEnabled: false, scaleDownDelaySeconds: 1}" >"$OUT.yaml"
  rollgate_waiting
  bluegreen_times "$ns" "$OUT" 4 rollgate_promote rollgate_rollback rollgate_done
  rollgate_exited 0
  drop_ns "$ns"
}

argo_promote() { argo_status "$1" '{"status":{"pauseConditions":null}}'; }
# What `kubectl argo rollouts undo` does here: the template back to the
# previous revision's, which differs from the current one by its image only.
argo_undo() {
  kubectl -n "$1" patch rollout web --type=json \
    -p "[{\"op\": \"replace\", \"path\": \"/spec/template/spec/containers/0/image\", \"value\": \"$(image 1)\"}]" >/dev/null
}
argo_done() { argo_healthy "$1" "" >/dev/null && settled "$1" "$N" "$N" "$N"; }

run_argo_bluegreen() {
  local ns OUT=$WORK/argo-bluegreen-$1
  ns=$(fresh_ns rg-argo-bench-argo)
  services "$ns"
  argo_v1 "$ns" "  strategy:
    blueGreen: {activeService: web-active, previewService: web-preview, autoPromotionEnabled: false, scaleDownDelaySeconds: 1}
  rollbackWindow: {revisions: 1}" >/dev/null
  argo_set "$ns"
  poll "$LONG" "Argo's blue-green paused ($ns)" argo_paused "$ns" >/dev/null
  bluegreen_times "$ns" "$OUT" 5 argo_promote argo_undo argo_done
  drop_ns "$ns"
}

report_bluegreen() {
  local rs rb as ab
  read -r rs rb <<<"$2"
  read -r as ab <<<"$3"
  log "run $1, bluegreen: switch rollgate $rs ms, Argo $as ms, ratio $(ratio_of "$rs" "$as");" \
    "rollback rollgate $rb ms, Argo $ab ms, ratio $(ratio_of "$rb" "$ab")"
}

table_bluegreen() {
  time_row 1 3 bluegreen "vs Argo Rollouts: blue-green switch, promotion command to the active Service selecting only the new pods (preview at N, $AT)"
  time_row 2 4 bluegreen "vs Argo Rollouts: blue-green rollback after the switch completed, rollback command to the active Service selecting only the old pods (old set up from 0 first)"
}

## abort

# The abort figure in namespace $1, paused after setWeight 20: `$3 $1`
# aborts; pods watched into $2.pods. Prints the ms from the abort command to
# the stable set serving alone.
abort_time() {
  local ns=$1 counts t0 t1 alone
  counts=$(poll "$LONG" "the canary settled at its pause ($ns)" settled "$ns" "$N" 1 $((N - 1)))
  watch_into "$ns" pods "$2.pods"
  t0=$(now_ms)
  "$3" "$ns"
  t1=$(now_ms)
  alone=$(poll "$LONG" "the stable set alone after the abort ($ns)" alone_at "$2.pods" "$t0")
  log "  paused at $counts (old new); $3 returned after $((t1 - t0)) ms, stable alone at $((alone - t0)) ms"
  stop_watches
  echo "$((alone - t0))"
}

rollgate_abort() { rg abort web >>"$OUT.log" 2>&1 || log "  rollgate abort: exit $? (log: $OUT.log)"; }

run_rollgate_abort() {
  local ns OUT=$WORK/rollgate-abort-$1 STATE=$WORK/rollgate-abort-$1.state APPLY
  ns=$(fresh_ns rg-argo-bench-rollgate)
  rollgate_v1 "$ns"
  rollgate_manifest "$ns" "image: \"$(image 2)\"" "  strategy:" "$PAUSED" >"$OUT.yaml"
  rollgate_waiting
  abort_time "$ns" "$OUT" rollgate_abort
  rollgate_exited 1
  drop_ns "$ns"
}

argo_abort() { argo_status "$1" '{"status":{"abort":true}}'; }

run_argo_abort() {
  local ns OUT=$WORK/argo-abort-$1
  ns=$(fresh_ns rg-argo-bench-argo)
  argo_v1 "$ns" "  strategy:
$PAUSED" >/dev/null
  argo_set "$ns"
  poll "$LONG" "Argo's canary paused ($ns)" argo_paused "$ns" >/dev/null
  abort_time "$ns" "$OUT" argo_abort
  drop_ns "$ns"
}

report_abort() { log "run $1, abort: rollgate $2 ms, Argo $3 ms, ratio $(ratio_of "$2" "$3")"; }

table_abort() {
  time_row 1 2 abort "vs Argo Rollouts: abort at a pause after setWeight 20, abort command to the stable set serving alone (N old pods Ready, every canary pod deleting or gone)"
}

## failing

FAILING_DEADLINE=10
NEVER_READY='rollgate.dev/never-ready: "true"'

# The failing figure in namespace $1: `$3 $1` starts the rollout; pods
# watched into $2.pods. Prints the ms from the start to the stable set
# serving alone again.
failing_time() {
  local ns=$1 t0 t1 alone
  watch_into "$ns" pods "$2.pods"
  t0=$(now_ms)
  "$3" "$ns"
  t1=$(now_ms)
  alone=$(poll $((LONG + FAILING_DEADLINE * 3)) "the stable set alone after the failure ($ns)" alone_at "$2.pods" "$t0")
  log "  $3 returned after $((t1 - t0)) ms, stable alone at $((alone - t0)) ms"
  stop_watches
  echo "$((alone - t0))"
}

rollgate_failing() {
  local code=0
  rg apply -o plain -f "$OUT.yaml" >"$OUT.log" 2>&1 || code=$?
  if ((code != 1)) || ! grep -q "rolled back" "$OUT.log"; then
    die "rollgate apply: exit $code, not 1 with a rollback; log: $OUT.log"
  fi
}

run_rollgate_failing() {
  local ns OUT=$WORK/rollgate-failing-$1 STATE=$WORK/rollgate-failing-$1.state
  ns=$(fresh_ns rg-argo-bench-rollgate)
  rollgate_v1 "$ns"
  {
    echo "apiVersion: apps/v1"
    echo "kind: Deployment"
    echo "metadata: {name: web}"
    echo "spec:"
    template 2 "$NEVER_READY"
  } >"$OUT.deployment.yaml"
  rollgate_manifest "$ns" "manifest: $OUT.deployment.yaml" "  strategy:" "$CANARY" \
    "  progressDeadlineSeconds: $FAILING_DEADLINE" "  rollback: {auto: true}" >"$OUT.yaml"
  failing_time "$ns" "$OUT" rollgate_failing
  drop_ns "$ns"
}

argo_failing() {
  argo_set "$1" '{"op": "add", "path": "/spec/template/metadata/labels/rollgate.dev~1never-ready", "value": "true"}'
}

run_argo_failing() {
  local ns OUT=$WORK/argo-failing-$1 aborted
  ns=$(fresh_ns rg-argo-bench-argo)
  argo_v1 "$ns" "  strategy:
$CANARY
  progressDeadlineSeconds: $FAILING_DEADLINE
  progressDeadlineAbort: true" >/dev/null
  failing_time "$ns" "$OUT" argo_failing
  aborted=$(field "$ns" rollout/web '{.status.abort} {.status.phase}')
  [[ $aborted == "true Degraded" ]] || die "Argo's Rollout not aborted ($ns): abort, phase: $aborted"
  drop_ns "$ns"
}

report_failing() { log "run $1, failing: rollgate $2 ms, Argo $3 ms, ratio $(ratio_of "$2" "$3")"; }

table_failing() {
  time_row 1 2 failing "vs Argo Rollouts: failing canary (pods never Ready; progressDeadlineSeconds $FAILING_DEADLINE for both, Argo with progressDeadlineAbort), start of the rollout to the stable set serving alone again"
}
