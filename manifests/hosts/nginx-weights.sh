#!/bin/sh
# A `trafficSwitch` hook for a traffic-weighted canary on hosts (README "Traffic-weighted canary"):
# rewrites an nginx upstream's servers with `weight=` from the JSON rollgate writes on stdin, then
# reloads nginx.
#
#   spec.target.hosts.trafficSwitch: {command: [/etc/rollgate/nginx-weights.sh, /etc/nginx/upstreams/web.conf]}
#   strategy.canary.trafficRouting: {trafficSwitch: true}
#
# The file is included inside `upstream web { include /etc/nginx/upstreams/web.conf; }`. A version's
# weight is shared by its instances: each gets weight=(version's percent x 100 / its instances), so
# 10% on one canary host beside 90% on three stable hosts is 1000 against 3000 + 3000 + 3000. A
# version at 0% gets no server line (nginx has no weight 0). Needs jq. NGINX (default `nginx`) and
# NGINX_ARGS (e.g. `-p /srv/lb -c /srv/lb/nginx.conf`) say which nginx to reload; SETTLE (default
# 1 second) is how long old workers get to finish before rollgate changes any instance.
set -eu
upstreams=${1:?usage: nginx-weights.sh UPSTREAMS_FILE}
tmp="$upstreams.new.$$"
jq -r '
  .weights[]
  | select(.weight > 0 and (.instances | length) > 0)
  | . as $v
  | .instances[]
  | "server \(.address) weight=\([(($v.weight * 100) / ($v.instances | length) | floor), 1] | max);"
' >"$tmp"
if [ ! -s "$tmp" ]; then
  rm -f "$tmp"
  echo "nginx-weights.sh: no instance has a weight above 0; the upstream is left as it was" >&2
  exit 1
fi
mv "$tmp" "$upstreams"
# shellcheck disable=SC2086 # NGINX_ARGS is a list of arguments
${NGINX:-nginx} ${NGINX_ARGS:-} -t -q
# shellcheck disable=SC2086
${NGINX:-nginx} ${NGINX_ARGS:-} -s reload
sleep "${SETTLE:-1}"
