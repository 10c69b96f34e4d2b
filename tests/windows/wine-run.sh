#!/usr/bin/env bash
# cargo's runner for x86_64-pc-windows-gnu: runs a test .exe under Wine, niced (shared machine).
exec nice -n 19 wine "$@"
