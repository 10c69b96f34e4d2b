#!/usr/bin/env bash
# Prints the fault-injection matrix recorded by the fault tests (tests/support/faults.rs) as a table.
set -euo pipefail
cd "$(dirname "$0")/.."
ledger=target/fault-matrix.tsv
if [ ! -s "$ledger" ]; then
  echo "fault matrix: no fault test recorded a case (were they skipped? they need root)"
  exit 0
fi
awk -F'\t' '
  BEGIN { print "| test bed | fault injected | outcome | lost | unknown |"; print "| --- | --- | --- | --- | --- |" }
  { printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5; n++; lost += $4; unknown += $5 }
  END { printf "\n%d faults injected; %d lost, %d in an unknown state\n", n, lost, unknown }
' "$ledger"
