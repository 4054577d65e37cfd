#!/usr/bin/env bash
# vitd's resident memory over a long mixed run (issue 4: "steady over a 10-minute mixed run").
#
# For DURATION seconds: fio (libiscsi engine) runs a 16 KiB 70/30 random mix at QD 16 on a
# file LUN and a 4 KiB 50/50 random mix at QD 4 on an in-memory LUN of the same target,
# while a third loop logs a fresh session in and out every couple of seconds (iscsi-inq,
# then iscsi-ls over a discovery session). Every SAMPLE seconds it records vitd's VmRSS,
# its thread count and open file descriptors. Writes perf/results/soak.{md,csv}.
# A measurement, not a test: it never fails the build.
#
# Environment: DURATION=600 SAMPLE=10 PORT=3271 BENCH_DIR=/var/tmp FIO (default:
# perf/build-fio.sh) VITD VITCTL (default: cargo build --release) OUT=perf/results
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
DURATION=${DURATION:-600}
SAMPLE=${SAMPLE:-10}
PORT=${PORT:-3271}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
OUT=${OUT:-$here/results}
IQN=iqn.2026-11.io.vit:soak

log() { echo "soak: $(date -u +%H:%M:%S) $*" >&2; }

command -v iscsi-inq >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq libiscsi-bin >/dev/null; } ||
    { log "no libiscsi-bin; giving up"; exit 0; }
FIO=${FIO:-$("$here/build-fio.sh")} || { log "no fio with libiscsi; giving up"; exit 0; }
if [[ -z ${VITD:-} || -z ${VITCTL:-} ]]; then
    tdir=${CARGO_TARGET_DIR:-$repo/target}
    (cd "$repo" && CARGO_TARGET_DIR=$tdir cargo build --release -q --bin vitd --bin vitctl) ||
        { log "build failed; giving up"; exit 0; }
    VITD=$tdir/release/vitd VITCTL=$tdir/release/vitctl
fi

work=$(mktemp -d "$BENCH_DIR/vit-soak.XXXXXX") || exit 0
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    [[ -n ${vitd_pid:-} ]] && kill "$vitd_pid" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 0' INT TERM

ds=$work/ds
"$VITCTL" --datastore "$ds" homeobject create --listen "127.0.0.1:$PORT" >/dev/null &&
    "$VITCTL" --datastore "$ds" target add --alias soak --iqn "$IQN" >/dev/null &&
    "$VITCTL" --datastore "$ds" target lun add --target soak --id 0 --size 512M --preallocate >/dev/null ||
    { log "could not make the datastore; giving up"; exit 0; }
# LUN 1: 64 MiB kept in memory (ctl.conf `backend ramdisk` with `option capacity`).
python3 - "$ds/.iSCSI-Config/etc/vit.conf" "$IQN" <<'EOF' || exit 0
import sys
path, iqn = sys.argv[1:]
text = open(path).read()
head = f"target {iqn} {{\n"
text = text.replace(head, head + "\tlun 1 {\n\t\tbackend ramdisk\n\t\tsize 64M\n\t\toption capacity 64M\n\t}\n", 1)
open(path, "w").write(text)
EOF

"$VITD" --datastore "$ds" 2>"$work/vitd.log" &
vitd_pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
kill -0 "$vitd_pid" 2>/dev/null || { log "vitd did not start: $(tail -n 3 "$work/vitd.log")"; exit 0; }

url() { local u="iscsi://127.0.0.1:$PORT/$IQN/$1"; echo "${u//:/\\:}"; }
fio_job() { # NAME LUN RW BS QD MIX
    timeout -k 5 $((DURATION + 60)) "$FIO" --thread --name="$1" --ioengine=libiscsi \
        --filename="$(url "$2")" --rw="$3" --bs="$4" --iodepth="$5" --rwmixread="$6" \
        --time_based --runtime="$DURATION" --randrepeat=0 --norandommap \
        --output-format=json --output="$work/$1.json" >"$work/$1.out" 2>"$work/$1.err"
}
fio_job disk 0 randrw 16k 16 70 &
pids+=($!)
fio_job mem 1 randrw 4k 4 50 &
pids+=($!)
(
    end=$((SECONDS + DURATION))
    n=0 bad=0
    while ((SECONDS < end)); do
        iscsi-inq -i "iqn.2026-11.io.vit:churn-$((n % 8))" "iscsi://127.0.0.1:$PORT/$IQN/0" >/dev/null 2>&1 || bad=$((bad + 1))
        iscsi-ls "iscsi://127.0.0.1:$PORT/" >/dev/null 2>&1 || bad=$((bad + 1))
        n=$((n + 1))
        echo "$n $bad" >"$work/churn"
        sleep 2
    done
) &
pids+=($!)

csv=$work/soak.csv
echo "seconds,rss_kib,rss_anon_kib,rss_file_kib,threads,fds" >"$csv"
log "running for $DURATION s (vitd pid $vitd_pid)"
t0=$SECONDS
while ((SECONDS - t0 <= DURATION)); do
    kill -0 "$vitd_pid" 2>/dev/null || { log "vitd exited during the run"; break; }
    st=$(cat "/proc/$vitd_pid/status" 2>/dev/null) || break
    fds=$(ls "/proc/$vitd_pid/fd" | wc -l)
    awk -v t=$((SECONDS - t0)) -v fds="$fds" '
        /^VmRSS:/ {rss = $2} /^RssAnon:/ {anon = $2} /^RssFile:/ {file = $2} /^Threads:/ {thr = $2}
        END {print t "," rss "," anon "," file "," thr "," fds}' <<<"$st" >>"$csv"
    sleep "$SAMPLE"
done
wait "${pids[@]}" 2>/dev/null
alive=yes
kill -0 "$vitd_pid" 2>/dev/null || alive=no

mkdir -p "$OUT"
cp "$csv" "$OUT/soak.csv"
python3 - "$csv" "$work" "$DURATION" "$alive" "$(cat "$work/churn" 2>/dev/null)" \
    "$("$VITD" --version | head -n 1) (source at $(git -C "$repo" log -1 --format=%h -- src 2>/dev/null))" \
    >"$OUT/soak.md" <<'EOF'
import csv, json, os, subprocess, sys
from datetime import datetime, timezone
path, work, duration, alive, churn, version = sys.argv[1:]
rows = [r for r in csv.DictReader(open(path))]
rss = [int(r["rss_kib"]) for r in rows]
def fio(name):
    try:
        text = open(os.path.join(work, name + ".json")).read()
        j = json.loads(text[text.index("{"):])["jobs"][0]
        return j["read"]["iops"] + j["write"]["iops"], j["error"]
    except Exception as e:
        return None, str(e)
model = next((l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True,
              text=True).stdout.splitlines() if l.startswith("Model name:")), "?")
n, bad = (churn.split() + ["0", "0"])[:2] if churn else ("0", "0")
print(f"# vitd over a {int(duration) // 60}-minute mixed run — "
      f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
print()
print(f"Machine: {model}, {os.cpu_count()} CPUs. {version}, default `--cores`. One target: LUN 0 a "
      "512 MiB preallocated VMDK (O_DIRECT, write-through), LUN 1 64 MiB `backend ramdisk` kept in memory (`option capacity 64M`).")
print()
for name, what in (("disk", "fio libiscsi, 16 KiB 70/30 random mix, QD 16, LUN 0"),
                   ("mem", "fio libiscsi, 4 KiB 50/50 random mix, QD 4, LUN 1")):
    iops, err = fio(name)
    print(f"- {what}: " + (f"{iops:,.0f} IOPS, fio error {err}" if iops is not None else f"no result ({err})"))
print(f"- session churn: {n} rounds of iscsi-inq (a new session, INQUIRY, logout) and iscsi-ls "
      f"(a discovery session), {bad} failed")
print(f"- vitd alive at the end: {alive}")
print()
if rss:
    warm = next((r for r in rows if int(r["seconds"]) >= 60), rows[-1])
    print("| | seconds | VmRSS KiB | threads | open fds |")
    print("|---|---:|---:|---:|---:|")
    for label, r in (("first sample", rows[0]), ("after 1 minute", warm), ("end", rows[-1])):
        print(f"| {label} | {r['seconds']} | {int(r['rss_kib']):,} | {r['threads']} | {r['fds']} |")
    print()
    print(f"VmRSS min {min(rss):,} KiB, max {max(rss):,} KiB; end minus the 1-minute sample: "
          f"{rss[-1] - int(warm['rss_kib']):+,} KiB ({len(rows)} samples in perf/results/soak.csv). "
          "The in-memory LUN's pages count once written (up to 64 MiB).")
EOF
log "report: $OUT/soak.md"
cat "$OUT/soak.md"
exit 0
