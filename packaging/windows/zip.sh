#!/usr/bin/env bash
# Assembles the Windows zip from built .exe files: rollgate-agent.exe, rollgate.exe, the example
# agent.yaml, README.txt, the licence and the changelog, in one folder
# rollgate-VERSION-windows-x86_64/; then adds its line to OUT/SHA256SUMS.
# Usage: packaging/windows/zip.sh EXE_DIR OUT_DIR      (prints the zip's path)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
exe_dir=$(cd "${1:?usage: zip.sh EXE_DIR OUT_DIR}" && pwd)
out=$(mkdir -p "${2:?usage: zip.sh EXE_DIR OUT_DIR}" && cd "$2" && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n 1)
name="rollgate-$version-windows-x86_64"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/$name"
for exe in rollgate-agent.exe rollgate.exe; do
  [ -f "$exe_dir/$exe" ] || { echo "zip.sh: $exe_dir/$exe: not built" >&2; exit 1; }
  cp "$exe_dir/$exe" "$stage/$name/"
done
cp "$ROOT/packaging/windows/agent.yaml" "$stage/$name/agent.yaml"
# Windows' own editors want CRLF in the text files.
for f in README.txt; do sed 's/$/\r/' "$ROOT/packaging/windows/$f" >"$stage/$name/$f"; done
sed 's/$/\r/' "$ROOT/CHANGELOG.md" >"$stage/$name/CHANGELOG.txt"
license=$(sed -n 's/^license = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n 1)
printf 'Copyright rollgate maintainers.\r\nLicensed under %s: https://spdx.org/licenses/%s.html\r\n' \
  "$license" "$license" >"$stage/$name/LICENSE.txt"
rm -f "$out/$name.zip"
(cd "$stage" && python3 -m zipfile -c "$out/$name.zip" "$name")
cd "$out"
touch SHA256SUMS
grep -v " $name.zip\$" SHA256SUMS >SHA256SUMS.new || true
sha256sum "$name.zip" >>SHA256SUMS.new
mv SHA256SUMS.new SHA256SUMS
echo "$out/$name.zip"
