#!/bin/sh
# Installs a rollgate .deb with the real dpkg into a throwaway root and checks it; run by
# tests/packaging.rs as `unshare --mount --propagation private packaging/install-test.sh DEB WORKDIR`.
# /usr, /etc and /var are overlays whose upper dirs live on a tmpfs in WORKDIR: the host's
# dpkg database, /usr/bin, /etc/passwd and /var/lib stay as they were when the namespace ends.
set -eu
deb=$1
work=$2
step() { echo "== $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

mkdir -p "$work/ov"
mount -t tmpfs tmpfs "$work/ov"
for d in usr etc var; do
    mkdir -p "$work/ov/$d.up" "$work/ov/$d.work"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$work/ov/$d.up,workdir=$work/ov/$d.work" "/$d"
done

step "dpkg -i"
dpkg -i "$deb"
[ -x /usr/bin/rollgate ] && [ -x /usr/bin/rollgate-agent ] || fail "binaries not in /usr/bin"

step "rollgate --version"
v=$(/usr/bin/rollgate --version)
echo "$v"
echo "$v" | grep -Eq '^rollgate [0-9]+\.[0-9]+\.[0-9]+ \(([0-9a-f]{7,40}|unknown)\)$' || fail "version line: $v"

step "check-config"
/usr/bin/rollgate-agent check-config -f /etc/rollgate/agent.yaml
dpkg-query -W -f='${Conffiles}\n' rollgate | grep -q '^ /etc/rollgate/agent.yaml ' || fail "agent.yaml is not a conffile"

step "unit"
unit=/usr/lib/systemd/system/rollgate-agent.service
grep -qx 'Type=notify' "$unit" || fail "unit is not Type=notify"
systemd-analyze verify "$unit" || fail "systemd-analyze verify $unit"
# One source: the packaged unit is what the installed agent writes for the installed config.
mkdir -p "$work/gen"
/usr/bin/rollgate-agent service install -c /etc/rollgate/agent.yaml --unit-dir "$work/gen" --no-start
cmp "$unit" "$work/gen/rollgate-agent.service" || fail "packaged unit differs from service install's"

step "data dir"
owner=$(stat -c '%U:%G %a' /var/lib/rollgate-agent)
echo "/var/lib/rollgate-agent $owner"
[ "$owner" = "root:root 700" ] || fail "data dir is $owner"

step "the agent starts under the unit's capability bounding set"
# The unit runs the agent as root with only these capabilities; it must still reach its data dir.
caps=$(sed -n 's/^CapabilityBoundingSet=//p' "$unit" | tr 'A-Z' 'a-z' | sed 's/cap_//g; s/ \+/,+/g')
[ -n "$caps" ] || fail "the unit has no CapabilityBoundingSet"
unshare --net sh -c '
  ip link set lo up
  setpriv --bounding-set "-all,+$1" /usr/bin/rollgate-agent run -c /etc/rollgate/agent.yaml >"$2/agent.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    code=$(curl -s -o /dev/null -w "%{http_code}" http://127.0.0.1:7443/v1/host || true)
    [ "$code" != 000 ] && [ -n "$code" ] && { kill $pid; wait $pid 2>/dev/null; exit 0; }
    kill -0 $pid 2>/dev/null || break
    sleep 0.1
  done
  kill $pid 2>/dev/null
  exit 1
' sh "$caps" "$work" || { cat "$work/agent.log" >&2; fail "the agent did not start with bounding set $caps"; }

step "docs"
for f in copyright CHANGELOG.md; do [ -f "/usr/share/doc/rollgate/$f" ] || fail "no /usr/share/doc/rollgate/$f"; done

step "completions and the man page"
generated="/usr/share/bash-completion/completions/rollgate /usr/share/zsh/vendor-completions/_rollgate /usr/share/fish/vendor_completions.d/rollgate.fish /usr/share/man/man1/rollgate.1.gz"
for f in $generated; do [ -s "$f" ] || fail "no $f"; done
bash -n /usr/share/bash-completion/completions/rollgate || fail "the bash completion does not parse"
grep -q 'complete .*rollgate' /usr/share/bash-completion/completions/rollgate || fail "the bash completion registers nothing"
zcat /usr/share/man/man1/rollgate.1.gz | grep -q '^\.TH rollgate 1' || fail "the man page has no .TH rollgate 1 header"
echo "completions (bash, zsh, fish) and rollgate.1.gz installed"

step "dpkg -r"
dpkg -r rollgate
[ ! -e /usr/bin/rollgate ] && [ ! -e /usr/bin/rollgate-agent ] && [ ! -e "$unit" ] || fail "remove left binaries or unit"
for f in $generated; do [ ! -e "$f" ] || fail "remove left $f"; done
[ -f /etc/rollgate/agent.yaml ] || fail "remove deleted the config"

step "dpkg --purge"
dpkg --purge rollgate
[ ! -e /etc/rollgate ] || fail "purge left /etc/rollgate"
[ ! -e /var/lib/rollgate-agent ] || fail "purge left the data dir"
! getent passwd rollgate >/dev/null || fail "the package made a rollgate user"
echo "OK"
