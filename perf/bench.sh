#!/usr/bin/env bash
# Side-by-side iSCSI benchmark: vitd against tgt (issue 4), over loopback with fio's
# libiscsi engine.
#
# Usage: perf/bench.sh        (as root on Debian 12; a few minutes with the defaults)
#
# Environment (all optional):
#   RUNTIME=5 RAMP=2     seconds measured / seconds of ramp per fio run
#   REPS=2               rounds of the A B alternation per job (A B A B with 2)
#   SIZE=1G              size of each LUN (and the fio region)
#   VIT_PORT=32600 TGT_PORT=32610 TGT_CONTROL_PORT=7
#   CLIENT_CPU=0 TARGET_CPU=1
#   MATRICES="disk device floor mem memstore poll scale"   which parts to run
#   JOB_FILTER=REGEX     run only the jobs whose name matches (e.g. 'qd1$')
#   POLL_US=50           vitd --poll-us for the "poll" matrix
#   BENCH_DIR=/var/tmp   where the work directory (both backing files) is made
#   VITD, VITCTL         binaries to use [default: cargo build --release into
#                        ${CARGO_TARGET_DIR:-target}]
#   FIO                  fio with the libiscsi engine [default: perf/build-fio.sh]
#   QD1_FLOOR            the "floor" matrix's server [default: cargo build --release
#                        --example qd1_floor]
#   OUT=perf/results     where latest.json and latest.md are written
#   VIT_WRITECACHE=on    the vit disk LUN's `option writecache` (on: write-back like tgt; off: vit's
#                        O_DIRECT default, write-through)
#
# Matrices: "disk" is a preallocated, fully written file on the same file system for
# both, opened with O_DIRECT (vit's default; tgt --bsoflags direct); "mem" is vit's
# ctl.conf `backend ramdisk` LUN without backing store (no `option capacity`: reads return
# zeroes, writes are discarded) against tgt's `--bstype null` (the same); "memstore" keeps
# the data in memory on both sides: vit's ramdisk with `option capacity` against tgt's rdwr
# backing store on a tmpfs file (/dev/shm, page cache); "poll" runs the QD 1 jobs
# on both LUNs again with vitd --poll-us (latency traded for CPU) against the same tgt;
# "device" measures the backing file system locally (fio's io_uring engine, O_DIRECT, on
# the targets' CPU): the floor under any target's file-LUN figures; with "disk" it runs in
# every round of that matrix, right after vit and tgt (the device's speed of that round), and
# alone once per job otherwise; "floor" runs
# examples/qd1_floor.rs, a minimal server doing only a QD 1 I/O's unavoidable kernel work
# (TCP receive and send over loopback, and the O_DIRECT read or write for a file LUN): the floor
# under any target's QD 1 CPU per I/O on this machine; "scale" runs vitd
# unpinned with --cores 1 and --cores 2 under two fio jobs (two sessions), report only.
#
# It is a benchmark: it always exits 0. Errors (a fio run failing, a target dying) are
# recorded in the report, the target is restarted, and the run goes on.

set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

RUNTIME=${RUNTIME:-5}
RAMP=${RAMP:-2}
REPS=${REPS:-2}
SIZE=${SIZE:-1G}
VIT_PORT=${VIT_PORT:-32600}
TGT_PORT=${TGT_PORT:-32610}
TGT_CONTROL_PORT=${TGT_CONTROL_PORT:-7}
CLIENT_CPU=${CLIENT_CPU:-0}
TARGET_CPU=${TARGET_CPU:-1}
MATRICES=${MATRICES:-disk device floor mem memstore poll scale}
JOB_FILTER=${JOB_FILTER:-}
POLL_US=${POLL_US:-50}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
OUT=${OUT:-$here/results}

VIT_IQN=iqn.2026-11.io.vit:bench
TGT_IQN=iqn.2026-11.io.tgt:bench
VIT_DISK_LUN=0 VIT_MEM_LUN=1 VIT_STORE_LUN=2 TGT_DISK_LUN=1 TGT_MEM_LUN=2 TGT_STORE_LUN=3

# name rw bs iodepth rwmixread
JOBS=(
    "4k-randread-qd1 randread 4k 1 -"
    "4k-randread-qd32 randread 4k 32 -"
    "4k-randwrite-qd1 randwrite 4k 1 -"
    "4k-randwrite-qd32 randwrite 4k 32 -"
    "128k-seqread-qd8 read 128k 8 -"
    "128k-seqwrite-qd8 write 128k 8 -"
    "16k-randrw70-qd16 randrw 16k 16 70"
)

log() { echo "bench: $(date -u +%H:%M:%S) $*" >&2; }

work="" tgt_shm=""
vit_pid=""
tgt_pid=""
vit_extra=()
records=""
errors=""

# Records an error for the report (and the log).
record_error() {
    log "ERROR: $*"
    printf '%s\n' "$*" >>"$errors"
}

stop_pid() {
    local pid=$1
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 20); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

cleanup() {
    stop_pid "$vit_pid"
    stop_pid "$tgt_pid"
    vit_pid="" tgt_pid=""
    if [[ -n $work && -d $work ]]; then
        # Keep the targets' logs and fio's stderr of the last run for a look after errors.
        if [[ -n $OUT && -d $OUT ]]; then
            rm -rf "$OUT/logs" && mkdir -p "$OUT/logs" &&
                cp "$work"/*.log "$work"/*.err "$work"/*.ss "$work"/*.jsonl "$work"/*.txt \
                    "$OUT/logs/" 2>/dev/null
        fi
        rm -rf "$work"
    fi
    [[ -n ${tgt_shm:-} ]] && rm -f "$tgt_shm"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 0' INT TERM

wait_port() {
    local port=$1
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# "TICKS NANOSECONDS BUSY USER SLEEPS KWORKERS IDLE CPUS STEAL": user+system CPU ticks of a whole
# process (all threads), the time they were read at, the busy ticks of the whole machine (all
# CPUs, to see what else ran), the process's user ticks alone, its voluntary context switches
# (all threads: each a sleep that a wakeup ended), the kernel workers' ticks on the targets' CPU (each's, see kworker_ticks),
# the idle ticks of the whole machine, its CPUs and the ticks the hypervisor took from them (steal:
# the host's other load, which the guest sees as busy time), or nothing when the process is gone. The
# report takes the machine's busy time as its CPUs' wall time less the idle ticks: the kernel
# measures idle time exactly, where it samples the busy counters at the clock tick, which misses
# most of the short bursts of a CPU that sleeps between them (fio's at QD 1), while a process's
# own ticks are scaled to its exact run time.
cpu_sample() {
    local stat now busy sleeps
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    now=$(date +%s%N)
    # The first line of /proc/stat: cpu user nice system idle iowait irq softirq steal; then a
    # line per CPU.
    busy=$(awk '$1 == "cpu" {b = $2 + $3 + $4 + $7 + $8 + $9; i = $5 + $6; s = $9} /^cpu[0-9]/ {n++}
        END {print b, i, n, s}' /proc/stat)
    # Fields after the ")" that closes the command name: utime is the 12th, stime the 13th.
    sleeps=$(cat /proc/"$1"/task/*/status 2>/dev/null |
        awk '/^voluntary_ctxt_switches:/ {s += $2} END {print s + 0}')
    stat=${stat##*) }
    awk -v now="$now" -v busy="$busy" -v sleeps="$sleeps" -v kw="$(kworker_ticks "$TARGET_CPU")" \
        '{split(busy, m, " "); print $12 + $13, now, m[1], $12, sleeps, kw, m[2], m[3], m[4]}' <<<"$stat"
}

# kworker_ticks CPUS: "PID:TICKS,...", user+system clock ticks of each of the kernel's per-CPU
# workers on those CPUs ("-" for none; each worker's own, since workers come and go: one that
# exits takes its ticks with it)
# CPUS: "1", "0,1", "0-3". Work the kernel does there for a target outside its process, which
# /proc/PID/stat does not count. The one that matters here: an O_DIRECT write issued through
# io_uring completes in the kernel's dio workqueue (io_uring does not take a file system's
# completion into the caller's context), while a blocking pwrite, tgt's, completes in the
# thread that waits for it. (KWORKER_PROC, default /proc: where the processes are read, for
# tests/perf_tools.rs.)
kworker_ticks() {
    cat "${KWORKER_PROC:-/proc}"/[0-9]*/stat 2>/dev/null | awk -v cpus="$1" '
        BEGIN {
            n = split(cpus, parts, ",")
            for (i = 1; i <= n; i++) {
                m = split(parts[i], r, "-")
                for (c = r[1]; c <= (m > 1 ? r[2] : r[1]); c++) want["kworker/" c ":"] = 1
            }
        }
        {
            lp = index($0, "("); rp = length($0)
            while (rp > lp && substr($0, rp, 1) != ")") rp--
            comm = substr($0, lp + 1, rp - lp - 1)
            prefix = comm; sub(/:.*/, ":", prefix)
            if (!(prefix in want)) next
            split(substr($0, rp + 2), f, " ")
            list = list (list == "" ? "" : ",") substr($0, 1, lp - 2) ":" f[12] + f[13]
        }
        END { print (list == "" ? "-" : list) }'
}

rss_kib() {
    awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null
}

# ---------------------------------------------------------------- setup

ensure_tools() {
    export DEBIAN_FRONTEND=noninteractive
    local need=()
    command -v tgtd >/dev/null || need+=(tgt)
    command -v python3 >/dev/null || need+=(python3)
    command -v taskset >/dev/null || need+=(util-linux)
    if [[ ${#need[@]} -gt 0 ]]; then
        log "installing ${need[*]}"
        apt-get install -y -qq "${need[@]}" >&2 ||
            { apt-get update -qq >&2 && apt-get install -y -qq "${need[@]}" >&2; }
    fi
    command -v tgtd >/dev/null && command -v python3 >/dev/null
}

ensure_binaries() {
    if [[ -z ${VITD:-} || -z ${VITCTL:-} ]]; then
        local tdir=${CARGO_TARGET_DIR:-$repo/target}
        log "building vitd and vitctl (release) into $tdir"
        (cd "$repo" && CARGO_TARGET_DIR=$tdir cargo build --release -q --bin vitd --bin vitctl) >&2 ||
            return 1
        VITD=${VITD:-$tdir/release/vitd}
        VITCTL=${VITCTL:-$tdir/release/vitctl}
    fi
    if [[ -z ${QD1_FLOOR:-} && " $MATRICES " == *" floor "* ]]; then
        local tdir=${CARGO_TARGET_DIR:-$repo/target}
        (cd "$repo" && CARGO_TARGET_DIR=$tdir cargo build --release -q --example qd1_floor) >&2 ||
            return 1
        QD1_FLOOR=$tdir/release/examples/qd1_floor
    fi
    [[ -x $VITD && -x $VITCTL ]]
}

# Writes the whole of a file once so that neither target reads unwritten extents.
fill_file() {
    dd if=/dev/zero of="$1" bs=1M count="$2" conv=notrunc,fsync oflag=direct status=none
}

make_backing() {
    local mib
    mib=$(numfmt --from=iec "$SIZE") || return 1
    mib=$((mib / 1048576))
    local ds=$work/ds
    "$VITCTL" --datastore "$ds" homeobject create --listen "127.0.0.1:$VIT_PORT" >&2 &&
        "$VITCTL" --datastore "$ds" target add --alias bench --iqn "$VIT_IQN" >&2 &&
        "$VITCTL" --datastore "$ds" target lun add --target bench --id "$VIT_DISK_LUN" \
            --size "$SIZE" --preallocate >&2 || return 1
    vit_flat=$(find "$ds" -name '*-flat.vmdk' | head -n 1)
    [[ -n $vit_flat ]] || return 1
    # The in-memory LUNs: hand-written ctl.conf `backend ramdisk` in the same target, one
    # without backing store and one kept in memory (`option capacity`).
    # The disk LUN's write cache: "on" (write-back, as tgt's default) unless VIT_WRITECACHE=off
    # (vit's O_DIRECT default: write-through, every write made durable before it is acknowledged).
    python3 - "$ds/.iSCSI-Config/etc/vit.conf" "$VIT_IQN" "$VIT_MEM_LUN" "$VIT_STORE_LUN" "${mib}M" "${VIT_WRITECACHE:-on}" <<'EOF' || return 1
import sys
path, iqn, lun, store_lun, size, writecache = sys.argv[1:]
text = open(path).read()
head = f"target {iqn} {{\n"
if head not in text:
    sys.exit(f"no target block for {iqn} in {path}")
block = (f"\tlun {lun} {{\n\t\tbackend ramdisk\n\t\tsize {size}\n\t}}\n"
         f"\tlun {store_lun} {{\n\t\tbackend ramdisk\n\t\tsize {size}\n"
         f"\t\toption capacity {size}\n\t}}\n")
text = text.replace(head, head + block, 1)
text = text.replace("\t\tbackend vmdk\n", f"\t\tbackend vmdk\n\t\toption writecache {writecache}\n", 1)
open(path, "w").write(text)
EOF
    tgt_file=$work/tgt-lun.img
    fallocate -l "$((mib * 1048576))" "$tgt_file" || return 1
    # tgt's memory-kept LUN: a file on tmpfs, served by its rdwr backing store (page cache).
    tgt_shm=$(mktemp /dev/shm/vit-bench-tgt.XXXXXX) && truncate -s "$((mib * 1048576))" "$tgt_shm" ||
        return 1
    log "writing both ${mib} MiB backing files once"
    fill_file "$vit_flat" "$mib" && fill_file "$tgt_file" "$mib" || return 1
    sync
    log "backing files: $(stat -c '%n %s bytes' "$vit_flat" "$tgt_file" | tr '\n' ';')"
}

# ---------------------------------------------------------------- targets

# start_vit CPULIST CORES [EXTRA ARGS...]
start_vit() {
    stop_pid "$vit_pid"
    vit_pid=""
    local cpus=$1 cores=$2
    shift 2
    RUST_LOG=${VIT_LOG:-info} taskset -c "$cpus" "$vit_bin" --datastore "$work/ds" --cores "$cores" \
        "$@" >>"$work/vitd.log" 2>&1 &
    vit_pid=$!
    vit_cpus=$cpus vit_cores=$cores vit_extra=("$@")
    if ! wait_port "$VIT_PORT"; then
        record_error "vitd (--cores $cores on CPU $cpus) did not listen on $VIT_PORT: $(tail -n 3 "$work/vitd.log" | tr '\n' ' ')"
        return 1
    fi
    log "vitd pid $vit_pid on CPU $cpus, --cores $cores"
}

start_tgt() {
    stop_pid "$tgt_pid"
    tgt_pid=""
    local cpus=$1 c=(-C "$TGT_CONTROL_PORT" --lld iscsi)
    taskset -c "$cpus" "$tgt_bin" -f -C "$TGT_CONTROL_PORT" --iscsi "portal=127.0.0.1:$TGT_PORT" \
        >>"$work/tgtd.log" 2>&1 &
    tgt_pid=$!
    tgt_cpus=$cpus
    if ! wait_port "$TGT_PORT"; then
        record_error "tgtd did not listen on $TGT_PORT: $(tail -n 3 "$work/tgtd.log" | tr '\n' ' ')"
        return 1
    fi
    tgtadm "${c[@]}" --mode target --op new --tid 1 --targetname "$TGT_IQN" &&
        tgtadm "${c[@]}" --mode logicalunit --op new --tid 1 --lun "$TGT_DISK_LUN" \
            --backing-store "$tgt_file" --bsoflags direct &&
        tgtadm "${c[@]}" --mode logicalunit --op new --tid 1 --lun "$TGT_MEM_LUN" \
            --bstype null --backing-store /dev/null &&
        tgtadm "${c[@]}" --mode logicalunit --op new --tid 1 --lun "$TGT_STORE_LUN" \
            --backing-store "$tgt_shm" &&
        tgtadm "${c[@]}" --mode target --op bind --tid 1 --initiator-address ALL ||
        { record_error "tgtadm could not set up the target"; return 1; }
    log "tgtd pid $tgt_pid on CPU $cpus"
}

# How a child process that is gone ended.
exit_status() {
    [[ -n $1 ]] || { echo "never started"; return 0; }
    local st=0
    wait "$1" 2>/dev/null || st=$?
    if [[ $st -gt 128 ]]; then
        echo "killed by signal $((st - 128)) ($(kill -l $((st - 128)) 2>/dev/null))"
    else
        echo "exit status $st"
    fi
}

# Restarts a target that died since the last run (and records that it died).
ensure_alive() {
    case $1 in
    vit)
        if [[ -z $vit_pid ]] || ! kill -0 "$vit_pid" 2>/dev/null; then
            record_error "vitd exited ($(exit_status "$vit_pid")) before a run; restarting; its last log lines: $(tail -n 3 "$work/vitd.log" | tr '\n' ' ')"
            start_vit "$vit_cpus" "$vit_cores" "${vit_extra[@]}"
        fi
        ;;
    tgt)
        if [[ -z $tgt_pid ]] || ! kill -0 "$tgt_pid" 2>/dev/null; then
            record_error "tgtd exited ($(exit_status "$tgt_pid")) before a run; restarting"
            start_tgt "$tgt_cpus"
        fi
        ;;
    esac
}

# ---------------------------------------------------------------- runs

# run_fio MATRIX TARGET JOBSPEC REP FIO_CPUS NUMJOBS
run_fio() {
    local matrix=$1 target=$2 rep=$4 fcpus=$5 numjobs=$6
    local name rw bs qd mix
    read -r name rw bs qd mix <<<"$3"
    ensure_alive "$target"
    local pid port iqn lun
    if [[ $target == vit ]]; then
        pid=$vit_pid port=$VIT_PORT iqn=$VIT_IQN
        case $matrix in
        *disk) lun=$VIT_DISK_LUN ;;
        *memstore) lun=$VIT_STORE_LUN ;;
        *) lun=$VIT_MEM_LUN ;;
        esac
    else
        pid=$tgt_pid port=$TGT_PORT iqn=$TGT_IQN
        case $matrix in
        *disk) lun=$TGT_DISK_LUN ;;
        *memstore) lun=$TGT_STORE_LUN ;;
        *) lun=$TGT_MEM_LUN ;;
        esac
    fi
    local url="iscsi://127.0.0.1:$port/$iqn/$lun"
    url=${url//:/\\:} # fio splits file names at unescaped colons
    local base="$work/$matrix-$name-$target-$rep"
    # --thread: one fio process, so that the timeout below ends all of it (a forked job
    # left behind spins in libiscsi's reconnect loop once the target is gone). json+ adds
    # the buckets of fio's latency histogram, which the report adds up over the rounds.
    local args=(--thread --name="$name" --ioengine=libiscsi --filename="$url" --size="$SIZE"
        --rw="$rw" --bs="$bs" --iodepth="$qd" --numjobs="$numjobs" --group_reporting
        --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" --randrepeat=0 --norandommap
        --output-format=json+ --output="$base.json")
    [[ $mix != - ]] && args+=(--rwmixread="$mix")
    log "$matrix $name $target (round $rep)"
    local rss0 t0 t1 rss1 rc=0
    rss0=$(rss_kib "$pid")
    # Sample the target's CPU (in the background) within the period fio measures: a little
    # after the ramp (fio's login comes first), and when the ramp and the run would have
    # ended had fio started at once (its login puts its own end later). The report divides
    # the CPU rate over that window by fio's IOPS; sampled at fio's exit instead, the window
    # took in fio's logout and exit, idle time for the target (40-50 ms).
    (sleep "$(awk -v r="$RAMP" -v t="$RUNTIME" 'BEGIN {print r + (t >= 2 ? 0.5 : 0)}')"
        cpu_sample "$pid" >"$base.t0") &
    local sampler0=$!
    (sleep "$((RAMP + RUNTIME))"; cpu_sample "$pid" >"$base.t1") &
    local sampler1=$!
    timeout -k 5 $((RAMP + RUNTIME + 60)) taskset -c "$fcpus" "$FIO" "${args[@]}" \
        >"$base.out" 2>"$base.err" </dev/null || rc=$?
    wait "$sampler0" "$sampler1" 2>/dev/null
    t0=$(cat "$base.t0" 2>/dev/null)
    t1=$(cat "$base.t1" 2>/dev/null)
    rss1=$(rss_kib "$pid")
    local err=""
    if [[ $rc -ge 124 ]]; then
        # A hang: keep what the sockets held (bytes queued each way) for the report.
        log "fio timed out; sockets on port $port: $(ss -tnH "( sport = :$port or dport = :$port )" | tr -s ' ' | tr '\n' ';')"
        ss -tnH "( sport = :$port or dport = :$port )" >"$base.ss" 2>&1
    fi
    if [[ $rc -ne 0 ]]; then
        err="fio exit status $rc$([[ $rc -ge 124 ]] && echo " (timed out after $((RAMP + RUNTIME + 60)) s)"): $(tail -n 5 "$base.err" | tr '\n' ' ')"
    elif ! kill -0 "$pid" 2>/dev/null; then
        err="target process exited during the run"
    fi
    [[ -n $err ]] && record_error "$matrix $name $target round $rep: $err"
    python3 - "$base.json" "$records" "$matrix" "$name" "$target" "$rep" "$rw" "$bs" "$qd" \
        "$numjobs" "$t0" "$t1" "$rss0" "$rss1" "$err" <<'EOF'
import json, sys
(path, out, matrix, job, target, rnd, rw, bs, qd, numjobs,
 t0, t1, rss0, rss1, err) = sys.argv[1:]
try:
    text = open(path).read()
    # fio may print notes (e.g. about iodepth with this engine) before the JSON document.
    fio = json.loads(text[text.index("{"):])
except Exception:
    fio = None
num = lambda v: int(v) if v.strip().isdigit() else None
def workers(v):
    """{pid: ticks} of the kernel workers' field, or None."""
    if v == "-":
        return {}
    try:
        return {int(p): int(t) for p, t in (w.split(":") for w in v.split(","))}
    except ValueError:
        return None
def sample(v):
    parts = v.split()
    nums = [num(p) for i, p in enumerate(parts) if i != 5]
    kw = workers(parts[5]) if len(parts) == 9 else None
    return nums[:5] + [kw] + nums[5:] if len(parts) == 9 and None not in nums + [kw] else [None] * 9
((ticks0, ns0, busy0, user0, sleeps0, kw0, idle0, cpus0, steal0),
 (ticks1, ns1, busy1, user1, sleeps1, kw1, idle1, cpus1, steal1)) = sample(t0), sample(t1)
# The workers' ticks over the run: each worker's at the end less its own at the start (none for
# one started since; one that exited took its ticks with it). Kept as a start and an end: the
# start is what the workers still there at the end had then.
if kw0 is not None and kw1 is not None:
    kw0, kw1 = sum(kw0.get(p, 0) for p in kw1), sum(kw1.values())
else:
    kw0 = kw1 = None
rec = {"matrix": matrix, "job": job, "target": target, "round": int(rnd), "rw": rw,
       "bs": bs, "iodepth": int(qd), "numjobs": int(numjobs),
       "cpu_ticks_start": ticks0, "cpu_ticks_end": ticks1,
       "cpu_user_ticks_start": user0, "cpu_user_ticks_end": user1,
       "cpu_sample_ns_start": ns0, "cpu_sample_ns_end": ns1,
       "machine_busy_ticks_start": busy0, "machine_busy_ticks_end": busy1,
       "sleeps_start": sleeps0, "sleeps_end": sleeps1,
       "kworker_ticks_start": kw0, "kworker_ticks_end": kw1,
       "machine_idle_ticks_start": idle0, "machine_idle_ticks_end": idle1,
       "machine_steal_ticks_start": steal0, "machine_steal_ticks_end": steal1,
       # A CPU brought on or off line within the window leaves the idle ticks meaningless.
       "machine_cpus": cpus0 if cpus0 == cpus1 else None,
       "rss_kib_start": num(rss0), "rss_kib_end": num(rss1),
       "error": err or None, "fio": fio}
with open(out, "a") as f:
    f.write(json.dumps(rec) + "\n")
EOF
}

# run_matrix MATRIX [VITD ARGS...]
run_matrix() {
    local matrix=$1
    shift
    log "matrix $matrix: fio on CPU $CLIENT_CPU, targets on CPU $TARGET_CPU"
    start_vit "$TARGET_CPU" 1 "$@"
    start_tgt "$TARGET_CPU"
    local job rep
    for job in "${JOBS[@]}"; do
        [[ -z $JOB_FILTER || ${job%% *} =~ $JOB_FILTER ]] || continue
        # The polling matrices are about queue depth 1 only.
        [[ $matrix != poll-* || ${job%% *} == *-qd1 ]] || continue
        for rep in $(seq 1 "$REPS"); do
            run_fio "$matrix" vit "$job" "$rep" "$CLIENT_CPU" 1
            run_fio "$matrix" tgt "$job" "$rep" "$CLIENT_CPU" 1
            [[ $matrix == disk ]] && run_device_job "$job" "$rep" 1
        done
    done
}

# vitd unpinned with --cores 1 then 2, two fio jobs (two sessions), in-memory LUN.
run_scale() {
    local all="$CLIENT_CPU,$TARGET_CPU" job="4k-randread-qd32 randread 4k 32 -" cores rep
    log "scale: vitd --cores 1 and 2 on CPUs $all, two fio jobs on CPUs $all"
    for rep in $(seq 1 "$REPS"); do
        for cores in 1 2; do
            start_vit "$all" "$cores"
            run_fio scale-cores$cores vit "$job" "$rep" "$all" 2
        done
    done
}

# The backing file system alone: fio's io_uring engine with O_DIRECT on tgt's backing file,
# pinned to the targets' CPU (what no target over iSCSI can beat).
# run_device_job JOBSPEC ROUND PAIRED (PAIRED: 1 when run within a round of the disk matrix)
run_device_job() {
    local name rw bs qd mix rep=$2 paired=$3
    read -r name rw bs qd mix <<<"$1"
    local base="$work/device-$name-$rep"
    log "device $name (round $rep)"
    timeout -k 5 $((RAMP + RUNTIME + 60)) taskset -c "$TARGET_CPU" "$FIO" --name="$name" \
        --ioengine=io_uring --direct=1 --filename="$tgt_file" --size="$SIZE" --rw="$rw" \
        --bs="$bs" --iodepth="$qd" --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
        --randrepeat=0 --norandommap $([[ $mix != - ]] && echo "--rwmixread=$mix") \
        --output-format=json+ --output="$base.json" \
        >"$base.out" 2>"$base.err" </dev/null ||
        record_error "device $name round $rep: fio exit status $?: $(tail -n 3 "$base.err" | tr '\n' ' ')"
    python3 - "$base.json" "$records" "$name" "$rw" "$bs" "$qd" "$rep" "$paired" <<'EOF'
import json, sys
path, out, job, rw, bs, qd, rep, paired = sys.argv[1:]
try:
    text = open(path).read()
    fio = json.loads(text[text.index("{"):])
except Exception:
    fio = None
rec = {"matrix": "device", "job": job, "target": "local", "round": int(rep), "rw": rw, "bs": bs,
       "iodepth": int(qd), "numjobs": 1, "paired": paired == "1",
       "error": None if fio else "fio wrote no JSON", "fio": fio}
with open(out, "a") as f:
    f.write(json.dumps(rec) + "\n")
EOF
}

# The device alone once per job, for a run without the "disk" matrix (which measures the device in
# every round, right after vit and tgt, so that each round's targets can be set against the
# device's speed at that time: a shared host's disk can change speed from one minute to the next).
run_device() {
    local job
    [[ " $MATRICES " == *" disk "* ]] && return 0
    log "device: fio io_uring O_DIRECT on $tgt_file, CPU $TARGET_CPU"
    for job in "${JOBS[@]}"; do
        [[ -z $JOB_FILTER || ${job%% *} =~ $JOB_FILTER ]] || continue
        run_device_job "$job" 1 0
    done
}

# The QD 1 floor: examples/qd1_floor.rs, a minimal blocking server that does only what no target
# can skip (receive the command, read or write 4 KiB of tgt's backing file with O_DIRECT or
# nothing, send the answer), with a minimal client, pinned like fio and the targets.
run_floor() {
    local job name rw bs qd mix lun rep
    log "floor: qd1_floor, client CPU $CLIENT_CPU, server CPU $TARGET_CPU"
    for job in "${JOBS[@]}"; do
        read -r name rw bs qd mix <<<"$job"
        [[ $qd == 1 && $bs == 4k && ( -z $JOB_FILTER || $name =~ $JOB_FILTER ) ]] || continue
        for rep in $(seq 1 "$REPS"); do
            for lun in mem disk; do
                local base="$work/floor-$lun-$name-$rep"
                timeout -k 5 $((RUNTIME + 60)) "$QD1_FLOOR" "${rw#rand}" "$RUNTIME" "$CLIENT_CPU" \
                    "$TARGET_CPU" $([[ $lun == disk ]] && echo "$tgt_file") \
                    >"$base.json" 2>"$base.err" </dev/null ||
                    record_error "floor $lun $name: exit status $?: $(tail -n 3 "$base.err" | tr '\n' ' ')"
                python3 - "$base.json" "$records" "floor-$lun" "$name" "$rw" "$rep" <<'EOF'
import json, sys
path, out, matrix, job, rw, rep = sys.argv[1:]
try:
    floor = json.load(open(path))
except Exception:
    floor = None
rec = {"matrix": matrix, "job": job, "target": "minimal", "round": int(rep), "rw": rw,
       "bs": "4k", "iodepth": 1, "numjobs": 1, "error": None if floor else "qd1_floor wrote no JSON",
       "floor": floor}
with open(out, "a") as f:
    f.write(json.dumps(rec) + "\n")
EOF
            done
        done
    done
}

main() {
    mkdir -p "$BENCH_DIR" "$OUT" || exit 0
    work=$(mktemp -d "$BENCH_DIR/vit-bench.XXXXXX") || exit 0
    records=$work/records.jsonl errors=$work/errors.txt
    : >"$records"
    : >"$errors"
    ensure_tools || { log "cannot install tgt/python3; giving up"; exit 0; }
    # The machine the runs are made on, kept with the records (logs/machine.jsonl) so that a
    # report made again from them, or pooled with runs from another machine, names it.
    python3 "$here/bench-report.py" --print-machine "$work" >"$work/machine.jsonl" 2>/dev/null ||
        rm -f "$work/machine.jsonl"
    FIO=${FIO:-$("$here/build-fio.sh")} || { log "no fio with libiscsi; giving up"; exit 0; }
    ensure_binaries || { log "no vitd/vitctl binaries; giving up"; exit 0; }
    make_backing || { log "could not create the backing files; giving up"; exit 0; }
    # Run copies of the targets under names of their own: on a shared machine a
    # `pkill vitd` or `killall tgtd` by someone else would otherwise stop them mid-run.
    vit_bin=$work/bench-target-vit tgt_bin=$work/bench-target-tgt
    cp "$VITD" "$vit_bin" && cp "$(command -v tgtd)" "$tgt_bin" ||
        { log "could not copy the target binaries; giving up"; exit 0; }
    local m
    for m in $MATRICES; do
        case $m in
        disk | mem | memstore) run_matrix "$m" ;;
        poll)
            run_matrix poll-disk --poll-us "$POLL_US"
            run_matrix poll-mem --poll-us "$POLL_US"
            ;;
        device) run_device ;;
        floor) run_floor ;;
        scale) run_scale ;;
        *) record_error "unknown matrix $m" ;;
        esac
    done
    stop_pid "$vit_pid"
    stop_pid "$tgt_pid"
    vit_pid="" tgt_pid=""
    local machine_arg=()
    [[ -s $work/machine.jsonl ]] && machine_arg=(--machine "$work/machine.jsonl")
    python3 "$here/bench-report.py" --records "$records" --errors "$errors" "${machine_arg[@]}" \
        --out "$OUT" --runtime "$RUNTIME" --ramp "$RAMP" --size "$SIZE" \
        --client-cpu "$CLIENT_CPU" --target-cpu "$TARGET_CPU" \
        --tgt-version "$(tgtd --version 2>&1 | head -n 1)" \
        --vit-version "$("$VITD" --version 2>&1 | head -n 1) (source at $(git -C "$repo" log -1 --format=%h -- src 2>/dev/null))" \
        --fio-version "$("$FIO" --version 2>&1)" ||
        log "report generation failed (records kept in $records)"
    log "report: $OUT/latest.md"
}

# Sourced (tests/perf_tools.rs drives run_fio with a stand-in fio and target), it defines the
# functions and runs nothing.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main
    exit 0
fi
