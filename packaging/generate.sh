#!/usr/bin/env bash
# Writes what the rollgate binary generates about itself into OUT: shell completions (bash, zsh,
# fish) and the man page (gzipped, as Debian installs man pages). packaging/build.sh and
# tests/packaging.rs run it before cargo-deb, whose assets name these files.
# Usage: packaging/generate.sh ROLLGATE_BINARY OUT_DIR
set -euo pipefail
bin=${1:?usage: generate.sh ROLLGATE_BINARY OUT_DIR}
out=${2:?usage: generate.sh ROLLGATE_BINARY OUT_DIR}
mkdir -p "$out"
"$bin" completion bash >"$out/rollgate.bash"
"$bin" completion zsh >"$out/_rollgate"
"$bin" completion fish >"$out/rollgate.fish"
"$bin" man | gzip -9n >"$out/rollgate.1.gz"
