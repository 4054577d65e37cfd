#!/usr/bin/env python3
"""Turns perf/bench.sh's per-run records into latest.json and latest.md.

Each record is one fio run against one target; this script derives the figures (IOPS,
MiB/s, completion latency percentiles, the target's CPU time per I/O), averages the
rounds of each (matrix, job, target), and writes the vit/tgt ratios and issue 4's goals.
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from datetime import datetime, timezone

CLK_TCK = os.sysconf("SC_CLK_TCK")
READS = {"read", "randread", "randrw", "rw"}
# A process at this share of one CPU or more (means of the rounds) is at its limit: the goals
# table says so, for the client (fio) and for the target.
LIMIT_PCT = 95.0
FIGURES = [
    # key, heading, format, better ("hi" or "lo")
    ("iops", "IOPS", "{:,.0f}", "hi"),
    ("mib_s", "MiB/s", "{:,.1f}", "hi"),
    ("p50_us", "clat p50 µs", "{:,.1f}", "lo"),
    ("p99_us", "clat p99 µs", "{:,.1f}", "lo"),
    ("p999_us", "clat p99.9 µs", "{:,.1f}", "lo"),
    ("cpu_us_per_io", "target CPU µs/IO", "{:,.2f}", "lo"),
    ("user_us_per_io", "of which user µs/IO", "{:,.2f}", "lo"),
    ("kworker_us_per_io", "kernel workers µs/IO", "{:,.2f}", "lo"),
    ("sleeps_per_io", "target sleeps /IO", "{:,.2f}", "lo"),
    ("target_cpu_pct", "target CPU %", "{:,.0f}", "lo"),
    ("fio_cpu_pct", "fio CPU %", "{:,.0f}", "lo"),
    ("other_cpu_pct", "other CPU %", "{:,.0f}", "lo"),
    ("steal_cpu_pct", "of which steal %", "{:,.0f}", "lo"),
]


# Figures that are latency percentiles: their goals are judged on all rounds' I/Os pooled.
LATENCY_KEYS = {"p50_us", "p99_us", "p999_us"}


def percentile_us(side, pct):
    """A completion latency percentile of one direction of a fio job, in µs."""
    table = side.get("clat_ns", {}).get("percentile") or {}
    value = table.get(pct)
    return None if value is None else value / 1000.0


def latency_side(rec):
    """The direction whose latency a run reports (the read side for the mixed job), or None."""
    fio = rec.get("fio")
    if "floor" in rec or not fio or not fio.get("jobs"):
        return None
    return fio["jobs"][0]["read" if rec["rw"] in READS else "write"]


def histogram_percentiles(bins):
    """p50/p99/p99.9 (µs) of a latency histogram {bucket ns: count}, the way fio reads its own:
    the first bucket at which the running count reaches the share."""
    total = sum(bins.values())
    if total == 0:
        return None
    out, acc, wanted = {}, 0, [("p50_us", 0.50), ("p99_us", 0.99), ("p999_us", 0.999)]
    for ns in sorted(bins):
        acc += bins[ns]
        while wanted and acc >= wanted[0][1] * total:
            out[wanted.pop(0)[0]] = ns / 1000.0
    out["ios"] = total
    return out


def pooled_latency(recs):
    """The latency percentiles of every I/O of all these runs together (fio's json+ histogram
    buckets added up), or None when some run has no histogram. Over rounds this is the figure
    the rounds estimate: a mean of each round's p99.9 lets one round's few slowest I/Os (33 of a
    5 s QD 1 run) move it as much as all the others together."""
    bins = {}
    for rec in recs:
        side = latency_side(rec)
        hist = (side or {}).get("clat_ns", {}).get("bins")
        if not hist:
            return None
        for ns, count in hist.items():
            bins[int(ns)] = bins.get(int(ns), 0) + count
    return histogram_percentiles(bins) if recs else None


def floor_figures(rec):
    """The figures of one run of examples/qd1_floor (the "floor" matrix): its own client's
    latency and the minimal server's CPU per round trip."""
    fl = rec["floor"]
    if not fl or not fl.get("round_trips"):
        return None, rec.get("error") or "no round trip completed"
    out = {k: None for k, *_ in FIGURES}
    out.update({"ios": fl["round_trips"], "iops": fl["per_s"], "mib_s": fl["per_s"] / 256,
                "p50_us": fl["p50_us"], "p999_us": fl["p999_us"],
                "cpu_us_per_io": fl["server_cpu_us_per_rt"]})
    return out, rec.get("error")


def machine_busy_pct(rec, window_s):
    """The busy time of all the machine's CPUs over a run's sampled window, in % of one CPU, or
    None. /proc/stat's busy counters are sampled at the clock tick, and a CPU that sleeps between
    short bursts (a QD 1 run) has its tick stopped, so they miss most of the bursts; its idle time
    is measured exactly, so busy is every CPU's wall time less the idle time (records before
    machine_idle_ticks were kept fall back to the busy counters)."""
    i0, i1 = rec.get("machine_idle_ticks_start"), rec.get("machine_idle_ticks_end")
    cpus = rec.get("machine_cpus")
    if None not in (i0, i1, cpus) and i1 >= i0:
        return 100.0 * (cpus - (i1 - i0) / CLK_TCK / window_s)
    b0, b1 = rec.get("machine_busy_ticks_start"), rec.get("machine_busy_ticks_end")
    if b0 is not None and b1 is not None and b1 >= b0:
        return 100.0 * (b1 - b0) / CLK_TCK / window_s
    return None


def figures(rec):
    """The figures of one run, or (None, reason) when the run gave none."""
    if "floor" in rec:
        return floor_figures(rec)
    fio = rec.get("fio")
    if not fio or not fio.get("jobs"):
        return None, rec.get("error") or "fio wrote no JSON"
    jobs = fio["jobs"]
    bad = [j.get("error") for j in jobs if j.get("error")]
    if bad:
        return None, f"fio job error {bad[0]}"
    ios = sum(j["read"]["total_ios"] + j["write"]["total_ios"] for j in jobs)
    if ios == 0:
        return None, "no I/O completed"
    side = latency_side(rec)
    out = {
        "ios": ios,
        "iops": sum(j["read"]["iops"] + j["write"]["iops"] for j in jobs),
        "mib_s": sum(j["read"]["bw_bytes"] + j["write"]["bw_bytes"] for j in jobs) / 2**20,
        "p50_us": percentile_us(side, "50.000000"),
        "p99_us": percentile_us(side, "99.000000"),
        "p999_us": percentile_us(side, "99.900000"),
        "fio_cpu_pct": sum(j.get("usr_cpu", 0) + j.get("sys_cpu", 0) for j in jobs),
        "cpu_us_per_io": None,
        "user_us_per_io": None,
        "kworker_us_per_io": None,
        "sleeps_per_io": None,
        "target_cpu_pct": None,
        "other_cpu_pct": None,
        "steal_cpu_pct": None,
    }
    t0, t1 = rec.get("cpu_ticks_start"), rec.get("cpu_ticks_end")
    n0, n1 = rec.get("cpu_sample_ns_start"), rec.get("cpu_sample_ns_end")
    if None not in (t0, t1, n0, n1) and t1 >= t0 and n1 > n0 and out["iops"] > 0:
        # CPU seconds per second over the sampled window, over the I/Os per second.
        rate = (t1 - t0) / CLK_TCK / ((n1 - n0) / 1e9)
        out["cpu_us_per_io"] = rate * 1e6 / out["iops"]
        out["target_cpu_pct"] = 100.0 * rate
        u0, u1 = rec.get("cpu_user_ticks_start"), rec.get("cpu_user_ticks_end")
        if u0 is not None and u1 is not None and u1 >= u0:
            user = (u1 - u0) / CLK_TCK / ((n1 - n0) / 1e9)
            out["user_us_per_io"] = user * 1e6 / out["iops"]
        k0, k1 = rec.get("kworker_ticks_start"), rec.get("kworker_ticks_end")
        if k0 is not None and k1 is not None and k1 >= k0:
            workers = (k1 - k0) / CLK_TCK / ((n1 - n0) / 1e9)
            out["kworker_us_per_io"] = workers * 1e6 / out["iops"]
        s0, s1 = rec.get("sleeps_start"), rec.get("sleeps_end")
        if s0 is not None and s1 is not None and s1 >= s0:
            out["sleeps_per_io"] = (s1 - s0) / ((n1 - n0) / 1e9) / out["iops"]
        busy = machine_busy_pct(rec, (n1 - n0) / 1e9)
        if busy is not None:
            # The kernel's workers on the targets' CPU work for the target (their own column).
            ours = out["target_cpu_pct"] + out["fio_cpu_pct"]
            if out["kworker_us_per_io"] is not None:
                ours += out["kworker_us_per_io"] * out["iops"] / 1e4
            out["other_cpu_pct"] = max(0.0, busy - ours)
        # Steal: time the hypervisor ran something else on the machine's CPUs while the guest
        # wanted them (the host's load); busy time counts it, so it is part of "other CPU".
        st0, st1 = rec.get("machine_steal_ticks_start"), rec.get("machine_steal_ticks_end")
        if st0 is not None and st1 is not None and st1 >= st0:
            out["steal_cpu_pct"] = 100.0 * (st1 - st0) / CLK_TCK / ((n1 - n0) / 1e9)
    return out, rec.get("error")


def mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def aggregate(records):
    """Groups runs by (matrix, job, target) and averages their figures."""
    groups, good = {}, {}
    for rec in records:
        figs, err = figures(rec)
        key = (rec["matrix"], rec["job"], rec["target"])
        if figs:
            good.setdefault(key, []).append(rec)
        g = groups.setdefault(
            key,
            {"matrix": rec["matrix"], "job": rec["job"], "target": rec["target"],
             "rw": rec["rw"], "bs": rec["bs"], "iodepth": rec["iodepth"],
             "numjobs": rec["numjobs"], "runs": [], "errors": []},
        )
        g["runs"].append({"round": rec["round"], "figures": figs, "error": err,
                          "paired": bool(rec.get("paired")),
                          "rss_kib_start": rec.get("rss_kib_start"),
                          "rss_kib_end": rec.get("rss_kib_end")})
        if err:
            g["errors"].append(f"round {rec['round']}: {err}")
    for g in groups.values():
        ok = [r["figures"] for r in g["runs"] if r["figures"]]
        g["valid_runs"] = len(ok)
        g["mean"] = {k: mean([f[k] for f in ok]) for k, *_ in FIGURES} if ok else None
    for key, recs in good.items():
        groups[key]["pooled"] = pooled_latency(recs)
    return groups


def pooled(groups, key, figure):
    """One latency percentile of all the I/Os of one (matrix, job, target), or None."""
    p = (groups.get(key) or {}).get("pooled")
    return p.get(figure) if p else None


def group_mean(groups, key, figure):
    """The mean of one figure of one (matrix, job, target), or None."""
    g = groups.get(key)
    return g["mean"][figure] if g and g["mean"] else None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt(value, spec):
    return "–" if value is None else spec.format(value)


def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def backing_device(path):
    """The block device holding `path` and its I/O scheduler, as "vda, I/O scheduler
    mq-deadline", or None where sysfs does not tell (a tmpfs, an overlay). The scheduler is part
    of every file-LUN I/O's kernel work, the targets' and the device run's alike (on the Intel
    host mq-deadline cost about 2.5 µs of CPU per 16 KiB mix I/O against none: perf/HISTORY.md,
    2026-11-27 12:48 UTC)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    dev = f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    # A partition has no queue of its own: its disk, the directory above it, has.
    for queue in (f"{dev}/queue", f"{dev}/../queue"):
        sched = read_text(f"{queue}/scheduler")
        if sched is not None:
            name = os.path.basename(os.path.realpath(f"{queue}/.."))
            chosen = re.search(r"\[([^\]]+)\]", sched)
            return f"{name}, I/O scheduler {chosen.group(1) if chosen else sched}"
    return None


def machine(backing_dir=None):
    """This machine, as the report's Machine line gives it. On a virtual machine the hypervisor
    and how an idle CPU waits (whether it polls before it halts) are part of what a wakeup
    costs, so they are named too; and the TCP congestion control every socket gets unless it
    asks for another (targets and fio alike), since some pace their sends; and the block device
    under the file LUNs with its I/O scheduler."""
    model, hypervisor = "?", None
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("Hypervisor vendor:"):
                hypervisor = line.split(":", 1)[1].strip()
    except OSError:
        pass
    idle = read_text("/sys/devices/system/cpu/cpuidle/current_driver")
    poll_ns = read_text("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
    if idle and poll_ns is not None:
        idle += f", guest_halt_poll_ns {poll_ns}"
    return {"cpu_model": model, "cpus": os.cpu_count(), "kernel": platform.release(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "hypervisor": hypervisor, "cpuidle": idle,
            "tcp_congestion": read_text("/proc/sys/net/ipv4/tcp_congestion_control"),
            "backing": backing_device(backing_dir) if backing_dir else None}


def describe(host):
    text = (f"{host.get('cpu_model', '?')}, {host.get('cpus', '?')} CPUs, "
            f"{host.get('memory_gib', '?')} GiB, kernel {host.get('kernel', '?')}")
    if host.get("hypervisor"):
        text += f", {host['hypervisor']} guest"
    if host.get("cpuidle"):
        text += f" (cpuidle {host['cpuidle']})"
    if host.get("tcp_congestion"):
        text += f", TCP congestion control {host['tcp_congestion']}"
    if host.get("backing"):
        text += f"; file LUNs on {host['backing']}"
    return text


def machine_line(hosts):
    """The Machine line: one machine, or each distinct one with the runs made on it (pooled runs
    may come from different machines)."""
    distinct = []
    for i, h in enumerate(hosts, 1):
        for d in distinct:
            if d[0] == h:
                d[1].append(i)
                break
        else:
            distinct.append((h, [i]))
    if len(distinct) == 1:
        return f"Machine: {describe(distinct[0][0])}."
    parts = [f"{describe(h)} (run{'s' if len(runs) > 1 else ''} {', '.join(map(str, runs))})"
             for h, runs in distinct]
    return "Machines: " + "; ".join(parts) + "."


def matrix_table(groups, matrix, jobs):
    lines = ["| job | target | " + " | ".join(h for _, h, _, _ in FIGURES) + " |",
             "|---|---|" + "---:|" * len(FIGURES)]
    for job in jobs:
        vit, tgt = groups.get((matrix, job, "vit")), groups.get((matrix, job, "tgt"))
        if vit is None and tgt is None:
            continue  # not run in this matrix (the polling ones run QD 1 only)
        for name, g in (("vit", vit), ("tgt", tgt)):
            m = g["mean"] if g else None
            cells = [fmt(m[k] if m else None, spec) for k, _, spec, _ in FIGURES]
            note = "" if g and g["valid_runs"] == len(g["runs"]) else " ⚠"
            lines.append(f"| {job} | {name}{note} | " + " | ".join(cells) + " |")
        cells = []
        for k, _, _, _ in FIGURES:
            a, b = group_mean(groups, (matrix, job, "vit"), k), group_mean(groups, (matrix, job, "tgt"), k)
            # A ratio of two counts near zero (sleeps per I/O of a target that never waits)
            # says nothing.
            near_zero = k in ("sleeps_per_io", "kworker_us_per_io") and (b or 0) < 0.05
            cells.append(fmt(None if near_zero else ratio(a, b), "{:.2f}×"))
        lines.append(f"| {job} | **vit/tgt** | " + " | ".join(cells) + " |")
    return lines


def spread(groups, matrix):
    """How far apart the rounds of one matrix were: for each job and target, the largest IOPS of
    its rounds over the smallest, minus one; returns (median, largest, where) or None."""
    rows = []
    for (m, job, target), g in groups.items():
        iops = [r["figures"]["iops"] for r in g["runs"] if r["figures"]]
        if m == matrix and len(iops) > 1 and min(iops) > 0:
            rows.append((max(iops) / min(iops) - 1, f"{job} {target}"))
    if not rows:
        return None
    rows.sort()
    return statistics.median(r[0] for r in rows), rows[-1][0], rows[-1][1]


def by_round(groups, key, figure, paired_only=False):
    """One figure of one (matrix, job, target), round by round: {round: value}; with
    `paired_only`, only the runs made within a round of another matrix (the device's within the
    file-LUN matrix's rounds; a device measured once after a whole matrix has no round of its own)."""
    g = groups.get(key)
    runs = g["runs"] if g else []
    return {r["round"]: r["figures"][figure] for r in runs
            if r["figures"] and (r["paired"] or not paired_only)}


def paired_ratios(groups, a, b, figure, paired_only=False):
    """a/b of one figure for each round in which both ran (with `paired_only`, b's runs made
    within a round only, see by_round)."""
    x, y = by_round(groups, a, figure), by_round(groups, b, figure, paired_only)
    return [v for v in (ratio(x[n], y[n]) for n in sorted(x) if n in y) if v is not None]


def round_ratios(groups, matrix, job, key):
    """vit/tgt of one figure round by round: each round ran vit then tgt back to back, so a pair
    shares the machine's drift better than the means of all rounds do."""
    return paired_ratios(groups, (matrix, job, "vit"), (matrix, job, "tgt"), key)


def goals(groups, matrix, job_order):
    """Issue 4's figures on one matrix: a dict per goal with the ratio of the means, whether it
    meets the goal, and how many rounds met it on their own (with their lowest and highest
    ratio)."""
    def m(job, target, key):
        return group_mean(groups, (matrix, job, target), key)

    specs = []
    present = [j for j in job_order if (matrix, j, "vit") in groups]
    for job in present:
        specs.append((job, "cpu_us_per_io", 0.25, "≤", f"{job}: target CPU/IO ≤ 0.25× tgt"))
    for job, key, goal, op in [
        ("4k-randread-qd32", "iops", 2.0, "≥"),
        ("128k-seqread-qd8", "mib_s", 1.5, "≥"),
        ("128k-seqwrite-qd8", "mib_s", 1.5, "≥"),
        ("4k-randread-qd1", "p50_us", 0.7, "≤"),
        ("4k-randwrite-qd1", "p50_us", 0.7, "≤"),
        ("4k-randread-qd1", "p999_us", 1.0, "≤"),
        ("4k-randwrite-qd1", "p999_us", 1.0, "≤"),
    ]:
        if job in present:
            specs.append((job, key, goal, op, f"{job}: {key} {op} {goal}× tgt"))
    def at_limit(job, target):
        """Who was at its limit in this target's runs (fio or the target, at 95% of a CPU or
        more by the means): a goal missed while fio is at its limit is the client's, not the
        target's (the issue asks for that to be shown with numbers)."""
        busy = [(who, m(job, target, k)) for who, k in
                (("fio", "fio_cpu_pct"), (target, "target_cpu_pct"))]
        return [f"{who} {pct:.0f}%" for who, pct in busy if pct is not None and pct >= LIMIT_PCT]

    rows = []
    for job, key, goal, op, name in specs:
        def meets(x):
            return x is not None and (x >= goal if op == "≥" else x <= goal)
        r = of_means = ratio(m(job, "vit", key), m(job, "tgt", key))
        # Latency goals are judged on every I/O of all rounds together (see pooled_latency);
        # the ratio of the rounds' means is kept beside it.
        statistic = "mean of the rounds"
        if key in LATENCY_KEYS:
            p = ratio(pooled(groups, (matrix, job, "vit"), key),
                      pooled(groups, (matrix, job, "tgt"), key))
            if p is not None:
                r, statistic = p, "all rounds' I/Os pooled"
        with_workers = None
        if key == "cpu_us_per_io":
            both = [(m(job, t, key), m(job, t, "kworker_us_per_io")) for t in ("vit", "tgt")]
            if all(None not in pair for pair in both):
                with_workers = ratio(sum(both[0]), sum(both[1]))
        per = round_ratios(groups, matrix, job, key)
        rows.append({"goal": name, "ratio": r, "statistic": statistic,
                     "ratio_with_kworkers": with_workers,
                     "ratio_of_means": of_means, "met": meets(r),
                     "rounds_met": sum(1 for x in per if meets(x)), "rounds": len(per),
                     "round_min": min(per, default=None), "round_max": max(per, default=None),
                     "at_limit_vit_runs": at_limit(job, "vit"),
                     "at_limit_tgt_runs": at_limit(job, "tgt")})
    return rows


def goal_note(goal):
    """A goal row's mark when its ratio is of the pooled percentiles, or when the kernel's
    workers on the target CPU change a CPU ratio."""
    if goal.get("ratio_with_kworkers") is not None:
        return f" ² (with kernel workers: {fmt(goal['ratio_with_kworkers'], '{:.2f}×')})"
    if goal.get("statistic") != "all rounds' I/Os pooled":
        return ""
    return f" ¹ (means: {fmt(goal['ratio_of_means'], '{:.2f}×')})"


def pooled_table(groups, matrix, jobs):
    """Latency percentiles of all the rounds' I/Os together, per job and target."""
    keys = [("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")]
    lines = ["| job | I/Os vit / tgt | " +
             " | ".join(f"vit {h} µs | tgt {h} µs | vit/tgt" for _, h in keys) + " |",
             "|---|---:|" + "---:|" * (3 * len(keys))]
    for job in jobs:
        kv, kt = (matrix, job, "vit"), (matrix, job, "tgt")
        pv, pt = (groups.get(kv) or {}).get("pooled"), (groups.get(kt) or {}).get("pooled")
        if not pv and not pt:
            continue
        cells = [f"{fmt((pv or {}).get('ios'), '{:,}')} / {fmt((pt or {}).get('ios'), '{:,}')}"]
        for k, _ in keys:
            a, b = pooled(groups, kv, k), pooled(groups, kt, k)
            cells += [fmt(a, "{:,.1f}"), fmt(b, "{:,.1f}"), fmt(ratio(a, b), "{:.2f}×")]
        lines.append(f"| {job} | " + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else []


def device_table(groups, job_order):
    rows = [j for j in job_order if ("device", j, "local") in groups]
    if not rows:
        return []
    lines = ["| job | IOPS | MiB/s | clat p50 µs | clat p99 µs | clat p99.9 µs | "
             "vit file LUN / device, IOPS | tgt file LUN / device, IOPS |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for job in rows:
        m = groups[("device", job, "local")]["mean"] or {}
        share = {t: ratio(group_mean(groups, ("disk", job, t), "iops"), m.get("iops"))
                 for t in ("vit", "tgt")}
        lines.append(f"| {job} | {fmt(m.get('iops'), '{:,.0f}')} | {fmt(m.get('mib_s'), '{:,.1f}')} | "
                     f"{fmt(m.get('p50_us'), '{:,.1f}')} | {fmt(m.get('p99_us'), '{:,.1f}')} | "
                     f"{fmt(m.get('p999_us'), '{:,.1f}')} | {fmt(share['vit'], '{:.2f}')} | "
                     f"{fmt(share['tgt'], '{:.2f}')} |")
    return lines


def device_rounds(groups, job_order):
    """Each file-LUN job's rounds set against the device alone measured in the same round (the
    "disk" matrix runs it right after vit and tgt): how far the device's speed moved between
    rounds, and each target's IOPS over the device's of its own round (median and range)."""
    out = {}
    for job in job_order:
        dev = by_round(groups, ("device", job, "local"), "iops", paired_only=True)
        share = {t: paired_ratios(groups, ("disk", job, t), ("device", job, "local"), "iops",
                                  paired_only=True)
                 for t in ("vit", "tgt")}
        if len(dev) < 2 or not share["vit"] or not share["tgt"]:
            continue
        out[job] = {"rounds": len(dev), "device_iops_min": min(dev.values()),
                    "device_iops_max": max(dev.values())}
        for t, v in share.items():
            out[job] |= {f"{t}_share_median": statistics.median(v), f"{t}_share_min": min(v),
                         f"{t}_share_max": max(v)}
    return out


def device_rounds_table(rows):
    if not rows:
        return []
    lines = ["| job | rounds | device IOPS, slowest–fastest round | vit / device, median (range) | "
             "tgt / device, median (range) | vit/tgt of the medians |",
             "|---|---:|---:|---:|---:|---:|"]
    for job, r in rows.items():
        cell = lambda t: (f"{r[t + '_share_median']:.2f} ({r[t + '_share_min']:.2f}–"
                          f"{r[t + '_share_max']:.2f})")
        lines.append(f"| {job} | {r['rounds']} | {r['device_iops_min']:,.0f}–{r['device_iops_max']:,.0f} | "
                     f"{cell('vit')} | {cell('tgt')} | "
                     f"{fmt(ratio(r['vit_share_median'], r['tgt_share_median']), '{:.2f}×')} |")
    return lines


def device_note(records, rounds):
    """The header's word on the device runs made within the rounds (none in older runs)."""
    paired = len({r["round"] for r in records if r.get("paired")})
    if not paired:
        return ""
    if paired == rounds:
        return "(then, on file LUNs, the device alone) "
    return f"(then, on file LUNs in {paired} of the rounds, the device alone) "


def storage_cost_table(groups, job_order):
    """CPU per I/O of the storage stack alone (fio's io_uring engine on the backing file system,
    every bit of its CPU) beside each target's on the file LUN: what is left of vit's is the network
    and the protocol, and the storage stack's cost counts against the goal of 0.25× tgt too."""
    rows = [j for j in job_order if ("device", j, "local") in groups and ("disk", j, "vit") in groups]
    if not rows:
        return []
    lines = ["| job | CPU/IO µs: fio alone on the device | vit file LUN | vit less fio alone | "
             "tgt file LUN | 0.25× tgt | fio alone / (0.25× tgt) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for job in rows:
        m = groups[("device", job, "local")]["mean"] or {}
        dev = None
        if m.get("fio_cpu_pct") is not None and m.get("iops"):
            dev = m["fio_cpu_pct"] * 1e4 / m["iops"]
        vit = group_mean(groups, ("disk", job, "vit"), "cpu_us_per_io")
        tgt = group_mean(groups, ("disk", job, "tgt"), "cpu_us_per_io")
        goal = tgt / 4 if tgt is not None else None
        rest = vit - dev if vit is not None and dev is not None else None
        lines.append(f"| {job} | {fmt(dev, '{:.2f}')} | {fmt(vit, '{:.2f}')} | {fmt(rest, '{:.2f}')} | "
                     f"{fmt(tgt, '{:.2f}')} | {fmt(goal, '{:.2f}')} | {fmt(ratio(dev, goal), '{:.2f}')} |")
    return lines


def floor_table(groups):
    """QD 1 p50: the device's own latency plus the protocol round trip (the in-memory LUN's
    latency) next to what the file LUNs did, for vit sleeping and polling."""
    def p50(matrix, job, target):
        return group_mean(groups, (matrix, job, target), "p50_us")

    def add(a, b):
        return None if a is None or b is None else a + b

    f = lambda v: fmt(v, "{:,.1f}")
    lines = ["| QD 1 job, p50 µs | device | vit memory LUN | device + memory | vit file LUN | "
             "vit --poll-us memory LUN | device + memory | vit --poll-us file LUN | tgt file LUN | "
             "0.7× tgt |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for job in ("4k-randread-qd1", "4k-randwrite-qd1"):
        dev, tgt = p50("device", job, "local"), p50("disk", job, "tgt")
        mem, pmem = p50("mem", job, "vit"), p50("poll-mem", job, "vit")
        lines.append(f"| {job} | {f(dev)} | {f(mem)} | {f(add(dev, mem))} | "
                     f"{f(p50('disk', job, 'vit'))} | {f(pmem)} | {f(add(dev, pmem))} | "
                     f"{f(p50('poll-disk', job, 'vit'))} | {f(tgt)} | "
                     f"{f(None if tgt is None else 0.7 * tgt)} |")
    return lines


def minimal_table(groups):
    """QD 1 next to examples/qd1_floor, the least work a target can do per I/O here."""
    if not any(k[0].startswith("floor-") for k in groups):
        return []
    f1, f2 = (lambda v: fmt(v, "{:,.1f}")), (lambda v: fmt(v, "{:,.2f}"))
    lines = ["| QD 1 job | LUN | minimal server CPU/IO µs | vit | tgt | 0.25× tgt | "
             "minimal server p50 µs | vit | tgt | 0.7× tgt |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for job in ("4k-randread-qd1", "4k-randwrite-qd1"):
        for lun, matrix in (("memory", "mem"), ("file", "disk")):
            mk = ("floor-" + matrix, job, "minimal")
            if mk not in groups:
                continue
            cpu = {t: group_mean(groups, (matrix, job, t), "cpu_us_per_io") for t in ("vit", "tgt")}
            p50 = {t: group_mean(groups, (matrix, job, t), "p50_us") for t in ("vit", "tgt")}
            q = lambda v, x: None if v is None else x * v
            lines.append(
                f"| {job} | {lun} | {f2(group_mean(groups, mk, 'cpu_us_per_io'))} | "
                f"{f2(cpu['vit'])} | {f2(cpu['tgt'])} | {f2(q(cpu['tgt'], 0.25))} | "
                f"{f1(group_mean(groups, mk, 'p50_us'))} | {f1(p50['vit'])} | {f1(p50['tgt'])} | "
                f"{f1(q(p50['tgt'], 0.7))} |")
    return lines


def scale_table(groups):
    keys = sorted(k for k in groups if k[0].startswith("scale-"))
    if not keys:
        return []
    lines = ["| vitd | fio jobs | IOPS | MiB/s | clat p50 µs | clat p99 µs | target CPU µs/IO | target CPU % | fio CPU % |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key in keys:
        g = groups[key]
        m = g["mean"] or {}
        cores = key[0].removeprefix("scale-cores")
        lines.append(
            f"| --cores {cores} | {g['numjobs']} | {fmt(m.get('iops'), '{:,.0f}')} | "
            f"{fmt(m.get('mib_s'), '{:,.1f}')} | {fmt(m.get('p50_us'), '{:,.1f}')} | "
            f"{fmt(m.get('p99_us'), '{:,.1f}')} | {fmt(m.get('cpu_us_per_io'), '{:,.2f}')} | "
            f"{fmt(m.get('target_cpu_pct'), '{:,.0f}')} | {fmt(m.get('fio_cpu_pct'), '{:,.0f}')} |")
    return lines


def vit_rss(records):
    """vitd's resident memory (KiB) at the first and last run of each matrix."""
    out = {}
    for rec in records:
        if rec["target"] != "vit":
            continue
        m = out.setdefault(rec["matrix"], {"start": None, "end": None})
        if m["start"] is None:
            m["start"] = rec.get("rss_kib_start")
        m["end"] = rec.get("rss_kib_end") or m["end"]
    return out


def main():
    if sys.argv[1:2] == ["--print-machine"] and len(sys.argv) <= 3:
        # perf/bench.sh keeps this beside a run's records, so a report made later (or pooled
        # with runs from elsewhere) names the machine each run was made on; the optional
        # directory is where the backing files are (its block device and I/O scheduler).
        print(json.dumps(machine(sys.argv[2] if len(sys.argv) == 3 else None)))
        return
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", required=True, action="append",
                    help="records.jsonl of a run; given more than once, the runs are pooled "
                    "(their rounds numbered on after one another)")
    ap.add_argument("--errors", required=True, action="append")
    ap.add_argument("--machine", action="append", default=[],
                    help="the machine a run was made on (`bench-report.py --print-machine`, kept "
                    "by perf/bench.sh in its logs as machine.jsonl), once per --records in the "
                    "same order; default: the machine making the report")
    ap.add_argument("--out", required=True)
    ap.add_argument("--runtime", type=float, required=True)
    ap.add_argument("--ramp", type=float, required=True)
    ap.add_argument("--size", required=True)
    ap.add_argument("--client-cpu", required=True)
    ap.add_argument("--target-cpu", required=True)
    ap.add_argument("--vit-version", default="?")
    ap.add_argument("--tgt-version", default="?")
    ap.add_argument("--fio-version", default="?")
    ap.add_argument("--date", help="the date of the runs (when the report is made again from "
                    "kept records); default: now")
    a = ap.parse_args()

    records, errors = [], []
    for path in a.records:
        run = []
        with open(path) as f:
            for line in f:
                if line.strip():
                    run.append(json.loads(line))
        # Rounds of a later run are numbered after those of the runs before it.
        offset = max((r["round"] for r in records), default=0)
        for rec in run:
            rec["round"] += offset
        records += run
    for path in a.errors:
        with open(path) as f:
            errors += [line.rstrip("\n") for line in f if line.strip()]
    groups = aggregate(records)
    # Runs that gave no figures without the harness noticing (e.g. unreadable fio output).
    for g in groups.values():
        for r in g["runs"]:
            if r["figures"] is None and r["error"] and not any(r["error"] in e for e in errors):
                errors.append(f"{g['matrix']} {g['job']} {g['target']} round {r['round']}: {r['error']}")
    if a.machine and len(a.machine) != len(a.records):
        ap.error(f"--machine given {len(a.machine)} time(s) for {len(a.records)} --records")
    hosts = []
    for path in a.machine:
        with open(path) as f:
            hosts.append(json.loads(f.read()))
    hosts = hosts or [machine()]
    now = a.date or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    job_order = []
    for rec in records:
        if rec["job"] not in job_order:
            job_order.append(rec["job"])
    rounds = max((r["round"] for r in records), default=0)
    matrices = [m for m in ("disk", "mem", "memstore", "poll-disk", "poll-mem")
                if any(k[0] == m for k in groups)]

    dev_rounds = device_rounds(groups, job_order)
    summary = {
        "date": now, "machine": hosts[0], "machines": hosts,
        "setup": {"runtime_s": a.runtime, "ramp_s": a.ramp, "lun_size": a.size,
                  "client_cpu": a.client_cpu, "target_cpu": a.target_cpu,
                  "vit": a.vit_version, "tgt": a.tgt_version, "fio": a.fio_version},
        "results": list(groups.values()),
        "ratios": {m: {job: {k: ratio(group_mean(groups, (m, job, "vit"), k),
                                       group_mean(groups, (m, job, "tgt"), k))
                                 for k, *_ in FIGURES}
                           for job in job_order if (m, job, "vit") in groups}
                   for m in matrices},
        "goals": {m: goals(groups, m, job_order)
                  for m in matrices},
        "device_rounds": dev_rounds,
        "vitd_rss_kib": vit_rss(records),
        "errors": errors,
    }
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "latest.json"), "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")

    md = [f"# vit vs tgt — {now}", "",
          machine_line(hosts) + "  ",
          f"vit: {a.vit_version}; tgt: {a.tgt_version}; {a.fio_version} (libiscsi engine).  ",
          f"fio on CPU {a.client_cpu}, targets on CPU {a.target_cpu} (vitd --cores 1); "
          f"{a.ramp:g} s ramp + {a.runtime:g} s measured per run, runs alternate vit, tgt "
          + device_note(records, rounds)
          + f"for {rounds} round(s)"
          + (f" (the rounds of {len(a.records)} runs pooled)" if len(a.records) > 1 else "")
          + f"; figures are the mean of the rounds. LUNs of {a.size}.  ",
          "Latency is fio's completion latency (read side for the mixed job). Target CPU is "
          "user+system time of the whole target process (all threads) from /proc/PID/stat, "
          "as a rate over a window within fio's measured period (from just after the ramp to the "
          "run's end, fio's logout left out), divided by fio's "
          "IOPS (so µs of target CPU per I/O; clock-tick resolution).  ",
          "CPU % is of one CPU; \"other CPU %\" is what the rest of the machine used during the "
          "run (busy time of all CPUs, their wall time less their idle time, minus the target, "
          "fio and the kernel workers on the targets' CPU): high values mean the figures are "
          "disturbed by other load (interrupts taken on an idle CPU and fio's threads other "
          "than its job's count here too); \"of which steal %\" is the part of it the hypervisor "
          "took for other guests or its own work (the host's load, which no process in this "
          "machine causes).  ",
          "Over loopback a target's send runs the client's TCP receive and wakes the client "
          "in the target's own context (softirq), so the target CPU per I/O includes that "
          "kernel work, for both targets alike; at QD 1 it dominates (one wakeup each way per "
          "I/O).  ",
          "\"of which user\" is the part of the target's CPU time spent outside the kernel: "
          "the target's own code (clock-tick resolution, coarse at QD 1).  ",
          "\"kernel workers µs/IO\" is the CPU time of the kernel's per-CPU worker threads "
          "(kworker/N:…) on the targets' CPU over the same window, per I/O: not part of any "
          "process's time, but work done for the target, chiefly the completion of O_DIRECT "
          "writes issued through io_uring (vit), which the kernel finishes in its dio "
          "workqueue, where a blocking pwrite (tgt) finishes in the thread that waits for it.  ",
          "\"target sleeps /IO\" counts the target's voluntary context switches (all threads) "
          "per I/O: each is a wait for work that ended in a wakeup, the kernel's most expensive "
          "per-I/O cost on this VM; a target that is the bottleneck finds work queued and sleeps "
          "less per I/O than one that waits on its client.  ",
          "⚠ marks a figure where some round failed (see Errors).", ""]
    # Records made before the machine's idle ticks were kept (2026-11-27 15:41 UTC, c1c9dab;
    # the window moved within fio's measured period just after, d1a046a) were measured the
    # older way, which the paragraphs above do not describe.
    before = sorted({r["round"] for r in records
                     if r.get("machine_busy_ticks_start") is not None
                     and r.get("machine_idle_ticks_start") is None})
    if before:
        md.insert(-2, f"Round(s) {', '.join(map(str, before))} were recorded before the "
                  "machine's idle ticks were kept: their \"other CPU %\" is the busy counters "
                  "sampled at the clock tick less the target, fio and the kernel workers, which "
                  "misses short bursts (it can read 0 with up to about a fifth of a CPU of other "
                  "load at QD 1), and their CPU window ran to fio's exit (CPU figures about 1% "
                  "low), with kernel workers counted from those alive at its two ends.  ")
    titles = {"disk": "File LUNs, O_DIRECT (vit vmdk preallocated vs tgt rdwr --bsoflags direct)",
              "mem": "In-memory LUNs without backing store (vit backend ramdisk, no capacity, "
                     "vs tgt --bstype null: reads return zeroes, writes are discarded)",
              "memstore": "In-memory LUNs that keep the data (vit backend ramdisk with option "
                          "capacity vs tgt rdwr on a tmpfs file)",
              "poll-disk": "QD 1 with vitd --poll-us, file LUNs (latency traded for CPU)",
              "poll-mem": "QD 1 with vitd --poll-us, in-memory LUNs (latency traded for CPU)"}
    for m in matrices:
        md += [f"## {titles[m]}", ""] + matrix_table(groups, m, job_order) + [""]
        pt = pooled_table(groups, m, job_order)
        if pt:
            md += ["Completion latency of all rounds' I/Os together (fio's latency histograms "
                   "added up over the rounds; the table above averages each round's "
                   "percentiles):", ""] + pt + [""]
        sp = spread(groups, m)
        if sp:
            md += [f"Round-to-round spread of IOPS (largest over smallest round, minus one): median "
                   f"{100 * sp[0]:.0f}%, largest {100 * sp[1]:.0f}% ({sp[2]}); a vit/tgt ratio within "
                   f"about {100 * sp[0]:.0f}% of 1 is within this machine's run-to-run noise.", ""]
    dt = device_table(groups, job_order)
    if dt:
        md += ["## The device alone (fio io_uring, O_DIRECT, on the targets' CPU)", "",
               "The backing file system without any target, every job; the last two columns say "
               "how close each target's file LUN comes to it (near 1: the device is the limit). At "
               "QD 1 a file LUN's latency is the device's plus the protocol's round trip (what the "
               "in-memory LUN shows); the second table puts them side by side.", ""]
        md += dt + [""]
        dr = device_rounds_table(dev_rounds)
        if dr:
            md += ["Round by round: the device alone ran right after vit and tgt in each round, so "
                   "each target's IOPS can be set against the device's speed of that moment (the "
                   "host's disk may change speed from one minute to the next; the table above "
                   "compares means over all rounds).", ""] + dr + [""]
        md += floor_table(groups) + [""]
        sc = storage_cost_table(groups, job_order)
        if sc:
            md += ["The storage stack's own CPU per I/O: fio's io_uring engine alone on the device "
                   "(fio's whole CPU over its I/Os, its own user time included: about an eighth of "
                   "it) beside each target on the file LUN. A target does the same file I/O (vit "
                   "through io_uring too, with registered buffers that spare it the page pinning "
                   "fio's engine does here; tgt with pread/pwrite in worker threads), so about this "
                   "much of its CPU per I/O is the storage stack's, and it counts against the goal "
                   "of 0.25× tgt like the rest; the last column is the share of that budget it takes "
                   "before any network or protocol work.", ""] + sc + [""]
    mt = minimal_table(groups)
    if mt:
        md += ["## QD 1: the floor (examples/qd1_floor.rs)", "",
               "A minimal server doing only what a QD 1 I/O cannot skip over loopback (a blocking "
               "receive of the 48-byte command, or of the command and 4 KiB of data; for a file "
               "LUN a 4 KiB O_DIRECT read or write of tgt's backing file; one send of the answer), "
               "pinned like the targets, driven one request at a time by a minimal client pinned "
               "like fio. Its CPU per round trip (getrusage of the server thread) is the kernel's "
               "work alone: no target can spend less here, so where it is above 0.25× tgt that "
               "goal is out of reach on this machine. Its latency is measured by its own client, "
               "lighter than fio with libiscsi, so it is a lower bound for the latency columns, "
               "not a like-for-like figure.", ""] + mt + [""]
    for m in matrices:
        md += [f"### Issue 4 goals, {m}", "",
               "vit/tgt of the means of all rounds, and round by round (each round ran vit then "
               "tgt back to back): how many rounds met the goal on their own, and their range. "
               "Latency goals compare the percentiles of all rounds' I/Os together (fio's "
               "histograms added up; ¹ gives the ratio of the rounds' means beside it): a mean of "
               "the rounds' p99.9 moves as much with one round's few slowest I/Os as with all the "
               "others. ² adds to each target's CPU the time of the kernel's per-CPU workers on "
               "the targets' CPU (kernel workers µs/IO; the issue's figure is the process's own "
               "time, the ratio before it). "
               f"The last column names who was at its limit ({LIMIT_PCT:.0f}% of a CPU or more, "
               "means of the rounds) in vit's runs and in tgt's: where fio is, vit's figure is "
               "what the client could ask for.", "",
               "| goal | vit/tgt | met | rounds met | per round | at its limit: vit's runs / tgt's |",
               "|---|---:|---|---:|---:|---|"]
        md += [f"| {g['goal']}{goal_note(g)} | {fmt(g['ratio'], '{:.2f}×')} | {'yes' if g['met'] else 'no'} | "
               f"{g['rounds_met']} of {g['rounds']} | "
               f"{fmt(g['round_min'], '{:.2f}')}–{fmt(g['round_max'], '{:.2f}×')} | "
               f"{', '.join(g['at_limit_vit_runs']) or '–'} / "
               f"{', '.join(g['at_limit_tgt_runs']) or '–'} |"
               for g in goals(groups, m, job_order)]
        md.append("")
    st = scale_table(groups)
    if st:
        md += ["## Scaling (report only)", "",
               "vitd unpinned on both CPUs, in-memory LUN, fio 4 KiB random read QD 32 with two "
               "jobs (two sessions) also on both CPUs.", ""] + st + [""]
    md += ["vitd resident memory (KiB) at the first and last run of each matrix (vitd "
           "restarts for each; the ramdisk LUN's pages count once written):", ""]
    md += [f"- {m}: {fmt(r['start'], '{:,}')} → {fmt(r['end'], '{:,}')}"
           for m, r in vit_rss(records).items()]
    md.append("")
    md += ["## Errors", ""] + ([f"- {e}" for e in errors] or ["none"]) + [""]
    with open(os.path.join(a.out, "latest.md"), "w") as f:
        f.write("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
