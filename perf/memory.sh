#!/usr/bin/env bash
# vitd's resident memory: started, with 64 idle sessions, with 64 busy sessions (libiscsi's
# iscsi-perf, random 4 KiB reads, 4 in flight each), and after they leave. Writes
# perf/results/memory.md. A measurement, not a test: it never fails the build.
set -uo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${SESSIONS:-64}
BUSY_SECONDS=${BUSY_SECONDS:-10}
PORT=${PORT:-3270}
command -v iscsi-perf >/dev/null || { apt-get update -qq && apt-get install -y -qq libiscsi-bin >/dev/null; }
cargo build --release --quiet --bin vitd --bin vitctl --example hold_sessions || exit 0
T=$(mktemp -d)
trap 'kill $VITD 2>/dev/null; wait 2>/dev/null; rm -rf "$T"' EXIT
VITCTL="target/release/vitctl --datastore $T/ds"
mkdir -p "$T/ds"
$VITCTL homeobject create --listen 127.0.0.1:$PORT >/dev/null
$VITCTL target add --alias mem --iqn iqn.2026-11.io.vit:mem >/dev/null
$VITCTL target lun add --target mem --id 0 --size 1G --preallocate >/dev/null
target/release/vitd --datastore "$T/ds" 2>"$T/vitd.log" &
VITD=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2}' /proc/$VITD/status; }
sleep 2 # the data threads register their buffers after the portals are bound
start=$(rss)
target/release/examples/hold_sessions $PORT iqn.2026-11.io.vit:mem "$SESSIONS" 8 >"$T/hold.log" 2>&1 &
HOLD=$!
sleep 5
idle=$(rss)
wait $HOLD
held=$(cat "$T/hold.log")
URL=iscsi://127.0.0.1:$PORT/iqn.2026-11.io.vit:mem/0
for i in $(seq "$SESSIONS"); do
    timeout $((BUSY_SECONDS + 20)) iscsi-perf -i "iqn.2026-11.io.vit:busy-$i" -m 4 -b 8 -r -t "$BUSY_SECONDS" "$URL" >"$T/perf-$i.log" 2>&1 &
done
sleep $((BUSY_SECONDS / 2 + 2))
busy=$(rss)
wait $(jobs -p | grep -v "^$VITD$") 2>/dev/null
sleep 1
after=$(rss)
iops=$(for f in "$T"/perf-*.log; do tr '\r' '\n' <"$f" | grep -o "iops average [0-9]*" | tail -1; done | awk '{s+=$3} END {print s+0}')
{
    echo "# vitd resident memory ($(date -u +%Y-%m-%d), $(nproc) cores: $(lscpu | sed -n 's/^Model name: *//p'))"
    echo
    echo "Release build, \`--cores\` default ($(nproc) data threads), one 1 GiB preallocated LUN. Each data"
    echo "thread pins its registered buffers (256 x 64 KiB + 32 x 1 MiB = 48 MiB), so most of the"
    echo "resident size is there from the start and does not grow with load."
    echo
    echo "| state | VmRSS |"
    echo "|---|---|"
    echo "| started, no session | $((start / 1024)) MiB |"
    echo "| $SESSIONS idle sessions ($held) | $((idle / 1024)) MiB |"
    echo "| $SESSIONS busy sessions (iscsi-perf, random 4 KiB reads, 4 in flight each; $iops IOPS in all) | $((busy / 1024)) MiB |"
    echo "| after they logged out | $((after / 1024)) MiB |"
} > perf/results/memory.md
cat perf/results/memory.md
exit 0
