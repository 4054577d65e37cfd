#!/usr/bin/env bash
# Data integrity check of an iSCSI LUN with fio's libiscsi engine (perf/fio-verify.fio).
#
# Usage: perf/fio-verify.sh [--phase all|write|verify] [--region SIZE] URL
#   URL     iscsi://127.0.0.1:3260/iqn.2026-11.io.vit:t1/0 (colons are escaped here)
#   all     (default) random writes of mixed sizes verified right after writing, then a
#           second, read-only verify pass over the same blocks
#   write   the writes only
#   verify  the read-only verify pass only (after an earlier `write` or `all`)
#   --region  bytes covered from offset 0 (default 256m)
# Exits non-zero on any I/O or verify error. The fio binary comes from perf/build-fio.sh
# (or $FIO).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
phase=all
region=256m
while [[ $# -gt 1 ]]; do
    case $1 in
    --phase) phase=$2; shift 2 ;;
    --region) region=$2; shift 2 ;;
    *) echo "fio-verify: unknown option $1" >&2; exit 2 ;;
    esac
done
[[ $# -eq 1 ]] || { sed -n '2,13p' "$0" >&2; exit 2; }
url=$1
[[ $url == iscsi://* ]] || { echo "fio-verify: URL must start with iscsi://" >&2; exit 2; }

fio=${FIO:-$("$here/build-fio.sh")}
export FIO_FILENAME=${url//:/\\:}
export FIO_REGION=$region

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Runs one fio pass; fails on fio's own failure and also on any verify or I/O error it
# reports (with continue_on_error=verify fio goes on, and exits 0, past verify errors).
run_fio() {
    echo "fio-verify: $1" >&2
    shift
    local rc=0
    "$fio" "$@" "$here/fio-verify.fio" >"$log" 2>&1 || rc=$?
    cat "$log"
    local bad
    bad=$(grep -cE 'verify failed|err= *[1-9]|errors +: total=[1-9]' "$log" || true)
    if [[ $rc -ne 0 || $bad -ne 0 ]]; then
        echo "fio-verify: FAILED: fio exit status $rc, $bad error lines (see above)" >&2
        exit 1
    fi
}

case $phase in
all)
    FIO_DO_VERIFY=1 run_fio "write and verify"
    FIO_DO_VERIFY=1 run_fio "verify-only read pass" --verify_only
    ;;
write) FIO_DO_VERIFY=0 run_fio "write only" ;;
verify) FIO_DO_VERIFY=1 run_fio "verify-only read pass" --verify_only ;;
*) echo "fio-verify: unknown phase $phase" >&2; exit 2 ;;
esac
echo "fio-verify: OK" >&2
