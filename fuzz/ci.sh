#!/bin/sh
# Builds every fuzz target, replays the committed regression inputs, then fuzzes each target
# briefly from the committed seeds. CI calls it from tests/run.sh.
#
#   fuzz/ci.sh              # 20 s per target
#   FUZZ_SECONDS=600 fuzz/ci.sh
#   ROLLGATE_FUZZ_TARGET_DIR=DIR     where the build goes (~/.cache/rollgate/fuzz-target)
#
# Needs the nightly toolchain and cargo-fuzz; without them it says so and exits 0. Run as
# root (as CI does), it installs a missing cargo-fuzz first. No single allocation may pass
# 64 MiB (-malloc_limit_mb): the unpacker reads names and headers within its caps.
set -eu
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-20}
# The instrumented build takes about 17 minutes cold on 2 cores, 12 with the dependencies kept:
# it is kept per machine (as the Windows build is), so a clean clone rebuilds only rollgate and
# the targets.
target_dir=${ROLLGATE_FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rollgate/fuzz-target}

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz/ci.sh: SKIPPED: no nightly toolchain (rustup toolchain install nightly)"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        echo "fuzz/ci.sh: installing cargo-fuzz"
        if ! cargo install --locked cargo-fuzz; then
            echo "fuzz/ci.sh: SKIPPED: cargo-fuzz could not be installed"
            exit 0
        fi
    else
        echo "fuzz/ci.sh: SKIPPED: cargo-fuzz is not installed (cargo install cargo-fuzz)"
        exit 0
    fi
fi

targets=$(cargo +nightly fuzz list)
echo "fuzz/ci.sh: building $(echo $targets)"
cargo +nightly fuzz build -O --target-dir "$target_dir"

for t in $targets; do
    # Every input that once crashed a target must now run clean.
    if [ -d "regressions/$t" ] && [ -n "$(ls -A "regressions/$t")" ]; then
        echo "fuzz/ci.sh: $t: replaying regressions/$t"
        cargo +nightly fuzz run -O --target-dir "$target_dir" "$t" regressions/"$t"/* -- -rss_limit_mb=2048 -timeout=30
    fi
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "fuzz/ci.sh: $t: fuzzing for ${seconds}s"
    cargo +nightly fuzz run -O --target-dir "$target_dir" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=64 -timeout=30 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 2>&1 |
        grep -E '^(#[0-9]+.*(INITED|DONE)|stat::|==[0-9]+== ERROR|SUMMARY|.*panicked)' || true
    # `|| true` above only guards grep: a crash makes the run fail here.
    if [ -n "$(ls -A "artifacts/$t")" ]; then
        echo "fuzz/ci.sh: $t: FAILED: crashing inputs in fuzz/artifacts/$t:" $(ls "artifacts/$t")
        exit 1
    fi
done
echo "fuzz/ci.sh: all targets built and fuzzed clean"
