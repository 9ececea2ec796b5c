#!/usr/bin/env python3
"""Queue benchmark harness: no-op jobs through reelmesh vs BullMQ + Redis,
with the floor of any JetStream queue beside them.

Normally started by bench/queue.sh, which installs the tools, builds
reelmesh and the load generators, and starts reelmesh, a private
redis-server with a BullMQ worker, and a private nats-server with the
JetStream floor's worker. By hand, with reelmesh and BullMQ running:

    python3 bench/queue/run.py --load-bin target/release/reelmesh-queue-bench \\
        --endpoint http://127.0.0.1:50051 --nats-url nats://127.0.0.1:4222 \\
        --redis-port 6379 --runs 1

For each producer count it runs each tool's load generator --runs times (the
tools taking turns, the order rotating each round); every run submits
--warmup untimed jobs first, then --jobs timed ones. The report shows the
median over runs of each figure (throughput, submit p50/p99, submit ->
completed p50/p99) and the ratios reelmesh / BullMQ, and checks issue 4's
targets. The JetStream floor (bench/queue/load/src/bin/floor.rs) is a queue
with nothing but one stored job, one stored completion and one ack per job:
what reelmesh's transport alone allows on this machine. Standard library
only.
"""

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from machine import capture, host, revision  # noqa: E402  (bench/machine.py)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TOOLS = ("reelmesh", "bullmq", "jetstream")
LABELS = {"reelmesh": "reelmesh", "bullmq": "BullMQ", "jetstream": "JetStream floor"}
# Issue 4's targets.
SUBMIT_P99_MS = 5.0
E2E_P50_MS = 5.0
# (key in the load generators' JSON, column title, better when higher)
FIGURES = [
    ("throughput", "throughput (jobs/s)", True),
    ("submit_p50", "submit p50 (ms)", False),
    ("submit_p99", "submit p99 (ms)", False),
    ("e2e_p50", "submit→completed p50 (ms)", False),
    ("e2e_p99", "submit→completed p99 (ms)", False),
    ("server_cpu_ms", "server CPU per job (ms)", False),
]


def log(message):
    print(f"[queue-bench] {message}", file=sys.stderr, flush=True)


def load_command(args, tool, producers):
    common = ["--jobs", str(args.jobs), "--producers", str(producers), "--warmup", str(args.warmup),
              "--timeout-secs", str(int(args.timeout))]
    if tool == "reelmesh":
        return [args.load_bin, "--endpoint", args.endpoint, "--nats-url", args.nats_url,
                "--api-key", args.api_key, *common]
    if tool == "jetstream":
        return [args.floor_bin, "--nats-url", args.floor_nats_url, *common]
    return [args.node, str(HERE / "bullmq.mjs"), "load", "--port", str(args.redis_port),
            "--queue", args.bullmq_queue, "--node-modules", str(args.node_modules), *common]


def flatten(report):
    return {
        "throughput": report["throughput"],
        "seconds": report["seconds"],
        "submit_p50": report["submit_ms"]["p50"],
        "submit_p99": report["submit_ms"]["p99"],
        "submit_max": report["submit_ms"]["max"],
        "e2e_p50": report["e2e_ms"]["p50"],
        "e2e_p99": report["e2e_ms"]["p99"],
        "e2e_max": report["e2e_ms"]["max"],
    }


def cpu_by_process(pids):
    """{process name: user + system CPU seconds used so far} for these processes."""
    used = {}
    for pid in pids:
        try:
            # argv[0]'s file name: comm is cut to 15 characters. (redis-server
            # rewrites its command line as "redis-server <addr>".)
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
            name = Path(argv0.decode(errors="replace").split(" ", 1)[0]).name
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        used[name] = used.get(name, 0) + ticks / os.sysconf("SC_CLK_TCK")
    return used


def nats_connections(monitor):
    """{cid: (name, messages the client sent, messages it received)} for every
    connection nats-server knows, closed ones included (the load generator's
    ends before the run is read), or {} without a monitoring URL."""
    if not monitor:
        return {}
    try:
        with urllib.request.urlopen(f"{monitor}/connz?state=all&limit=100000", timeout=10) as answer:
            connz = json.load(answer)
    except (OSError, ValueError):
        return {}
    # The server's in_msgs are what the client sent it.
    return {conn["cid"]: (conn.get("name") or "(unnamed)", conn["in_msgs"], conn["out_msgs"])
            for conn in connz.get("connections") or []}


def messages_by_client(before, after, jobs):
    """{client name: [sent, received] per job} between two nats_connections()."""
    per_job = {}
    for cid, (name, sent, received) in after.items():
        _, sent_before, received_before = before.get(cid, (name, 0, 0))
        totals = per_job.setdefault(name, [0.0, 0.0])
        totals[0] += (sent - sent_before) / jobs
        totals[1] += (received - received_before) / jobs
    return {name: totals for name, totals in per_job.items() if totals != [0.0, 0.0]}


def run_load(args, tool, producers):
    argv = load_command(args, tool, producers)
    pids = args.server_pids.get(tool, [])
    cpu_before = cpu_by_process(pids)
    monitor = args.nats_monitor if tool == "reelmesh" else None
    connections_before = nats_connections(monitor)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=args.timeout + 60)
    except subprocess.TimeoutExpired:
        return {"error": f"no answer within {args.timeout + 60:.0f} s"}
    if done.returncode != 0:
        tail = " ".join(done.stderr.strip().splitlines()[-3:])
        return {"error": f"exit {done.returncode}: {tail[-300:]}"}
    try:
        run = flatten(json.loads(done.stdout.strip().splitlines()[-1]))
    except (ValueError, KeyError, IndexError) as err:
        return {"error": f"unreadable output ({err}): {done.stdout[-200:]}"}
    if pids:
        jobs = args.jobs + args.warmup
        spent = {name: (used - cpu_before.get(name, 0)) * 1e3 / jobs
                 for name, used in cpu_by_process(pids).items()}
        run["server_cpu_ms"] = sum(spent.values())
        run["cpu_by_process"] = spent
    if monitor:
        after = nats_connections(monitor)
        run["messages_by_client"] = messages_by_client(
            connections_before, after, args.jobs + args.warmup)
    return run


def benchmark(args, producer_counts, tools):
    """{(tool, producers): [run, ...]}, a run being flatten()'s dict or {"error": ...}."""
    results = {}
    for producers in producer_counts:
        for round_no in range(args.runs):
            order = tools[round_no % len(tools):] + tools[:round_no % len(tools)]
            for tool in order:
                runs = results.setdefault((tool, producers), [])
                if runs and "error" in runs[0]:
                    continue  # failed before: do not try again
                run = run_load(args, tool, producers)
                runs.append(run)
                if "error" in run:
                    log(f"{tool} producers={producers} run {round_no + 1}: FAILED {run['error']}")
                else:
                    log(f"{tool} producers={producers} run {round_no + 1}: "
                        f"{run['throughput']:.0f} jobs/s, submit p50/p99 {run['submit_p50']:.2f}/"
                        f"{run['submit_p99']:.2f} ms, e2e p50/p99 {run['e2e_p50']:.2f}/{run['e2e_p99']:.2f} ms")
    return results


def medians(runs):
    ok = [run for run in runs if "error" not in run]
    if not ok:
        return None
    keys = {key for run in ok for key, value in run.items() if isinstance(value, (int, float))}
    return {key: statistics.median(run[key] for run in ok if key in run) for key in keys}


def package_version(node_modules, name):
    try:
        return json.loads((Path(node_modules) / name / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return "not found"


def machine_info(args):
    reelmesh = capture([args.reelmesh_bin, "--version"]) if args.reelmesh_bin else "unknown"
    return {
        **host(),
        "reelmesh": f"{reelmesh}, {revision()} (release build)",
        "nats-server": capture(["nats-server", "--version"]),
        "redis-server": capture(["redis-server", "--version"]),
        "Node.js": capture([args.node, "--version"]),
        "BullMQ / ioredis": f"{package_version(args.node_modules, 'bullmq')} / "
                            f"{package_version(args.node_modules, 'ioredis')}",
        "rustc": capture(["rustc", "--version"]),
        "Python (harness)": platform.python_version(),
    }


def plural(count, noun):
    return f"{count} {noun}{'' if count == 1 else 's'}"


def fmt(value, key):
    if value is None:
        return "—"
    return f"{value:.0f}" if key == "throughput" else f"{value:.2f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def targets(meds, producer_counts):
    """Lines saying, per producer count, whether issue 4's targets are met."""
    lines = []
    for producers in producer_counts:
        ours, theirs = meds.get(("reelmesh", producers)), meds.get(("bullmq", producers))
        if ours is None:
            lines.append(f"- {plural(producers, 'producer')}: reelmesh was not measured.")
            continue
        def verdict(ok):
            return "**met**" if ok else "**not met**"
        parts = []
        if theirs is not None:
            parts.append(f"throughput ≥ BullMQ's: {verdict(ours['throughput'] >= theirs['throughput'])} "
                         f"({ours['throughput']:.0f} vs {theirs['throughput']:.0f} jobs/s)")
        parts.append(f"submit p99 < {SUBMIT_P99_MS:g} ms: {verdict(ours['submit_p99'] < SUBMIT_P99_MS)} "
                     f"({ours['submit_p99']:.2f} ms)")
        parts.append(f"submit→completed p50 < {E2E_P50_MS:g} ms: {verdict(ours['e2e_p50'] < E2E_P50_MS)} "
                     f"({ours['e2e_p50']:.2f} ms)")
        lines.append(f"- {plural(producers, 'producer')}: " + "; ".join(parts) + ".")
    return lines


def render_report(args, info, results, producer_counts, tools, started, finished):
    meds = {key: medians(runs) for key, runs in results.items()}
    lines = []
    add = lines.append
    add("# reelmesh queue benchmark: reelmesh vs BullMQ + Redis")
    add("")
    add(f"Run {started:%Y-%m-%d %H:%M} – {finished:%H:%M} UTC with `{args.command}`: "
        f"{args.jobs} no-op jobs per run after {args.warmup} untimed warm-up jobs, "
        f"{args.runs} run{'s' if args.runs != 1 else ''} per tool and producer count (tools taking "
        f"turns), medians over runs.")
    add("")
    add("## Machine")
    add("")
    for key, value in info.items():
        add(f"- **{key}**: {value}")
    add("")
    add("## Setup")
    add("")
    if args.reelmesh_mode == "dev":
        shape = ("one `reelmesh dev` process (gateway, render, notify, store in one process; "
                 f"`REELMESH_RENDER_CONCURRENCY={args.concurrency}`) with its nats-server")
    else:
        shape = (f"nats-server and the `reelmesh-gateway`, `reelmesh-render` "
                 f"(`REELMESH_RENDER_CONCURRENCY={args.concurrency}`) and `reelmesh-notify` "
                 f"processes, default configuration otherwise")
    add(f"- **reelmesh**: {shape}. nats-server runs JetStream with **file** storage and its "
        f"default sync (every publish written to the file before it is acknowledged, fsync "
        f"every 2 min). Log level info (the default), to files. Job: "
        f"`{{\"noop\": {{\"seconds\": 0}}}}` through SubmitJob over one shared gRPC channel; "
        f"completion seen on a core NATS subscription to `reelmesh.events.*.*.completed` "
        f"(bench/queue/load).")
    add(f"- **BullMQ**: redis-server with `appendonly yes`, `appendfsync everysec` (durable "
        f"file storage, fsync every second), RDB snapshots off; one Worker process with a "
        f"no-op processor and `concurrency: {args.concurrency}`; `queue.add` from the load "
        f"process (one Queue, one connection); completion seen with QueueEvents "
        f"(bench/queue/bullmq.mjs). Default job options (completed jobs are kept, as reelmesh "
        f"keeps its job records).")
    add("- **JetStream floor**: its own nats-server (file storage, the same defaults) and one "
        "worker process (bench/queue/load/src/bin/floor.rs) pulling from a work-queue stream, "
        f"{args.concurrency} jobs at a time. A job is one message published with its ack "
        "awaited (the submit), delivered, answered with one stored completion message (whose "
        "ack is awaited) and acked: no job record, no events, no gRPC. No JetStream queue "
        "can do less per job with durable jobs and durable completions, so this is the "
        "least reelmesh's transport costs here, not a competitor.")
    add("- server CPU per job: user + system CPU time of the tool's server processes during a run "
        "(reelmesh: nats-server, gateway, render, notify; BullMQ: redis-server and the worker; "
        "JetStream floor: nats-server and its worker), "
        "divided by all the run's jobs, warm-up included; the load generators are not counted.")
    add("- Each tool's producers run in one process, each submitting one job at a time (the "
        "next only after the answer). submit = the submit call's round trip; submit→completed "
        "= when the load process received the completed event minus the instant just before "
        "the submit; throughput = jobs / (first submit → last completed event).")
    add("")
    add("## Results")
    add("")
    add("Throughput: higher is better. Latencies: lower is better. The ratio row is "
        "reelmesh / BullMQ: above 1× reelmesh has more throughput; below 1× its latency is lower.")
    add("")
    add("| producers | tool | jobs | " + " | ".join(title for _, title, _ in FIGURES) + " |")
    add("|---|---|---|" + "---|" * len(FIGURES))
    for producers in producer_counts:
        for tool in tools:
            med = meds.get((tool, producers))
            runs = results.get((tool, producers), [])
            if med is None:
                error = next((run["error"] for run in runs if "error" in run), "not run")
                add(f"| {producers} | {LABELS[tool]} | {args.jobs} | failed: {error} |" + " |" * (len(FIGURES) - 1))
                continue
            add(f"| {producers} | {LABELS[tool]} | {args.jobs} | "
                + " | ".join(fmt(med.get(key), key) for key, _, _ in FIGURES) + " |")
        if "reelmesh" in tools and "bullmq" in tools:
            ours, theirs = meds.get(("reelmesh", producers)), meds.get(("bullmq", producers))
            add(f"| {producers} | reelmesh / BullMQ | | "
                + " | ".join(ratio(ours and ours.get(key), theirs and theirs.get(key)) for key, _, _ in FIGURES) + " |")
    add("")
    add("Issue 4's targets:")
    add("")
    lines.extend(targets(meds, producer_counts))
    add("")
    add("## Details")
    add("")
    add("Every run (throughput in jobs/s; latencies in ms as p50 / p99 / max):")
    add("")
    add("| producers | tool | run | throughput | submit | submit→completed | server CPU per job |")
    add("|---|---|---|---|---|---|---|")
    for producers in producer_counts:
        for tool in tools:
            for index, run in enumerate(results.get((tool, producers), []), 1):
                if "error" in run:
                    add(f"| {producers} | {LABELS[tool]} | {index} | failed: {run['error']} | | | |")
                    continue
                add(f"| {producers} | {LABELS[tool]} | {index} | {run['throughput']:.0f} | "
                    f"{run['submit_p50']:.2f} / {run['submit_p99']:.2f} / {run['submit_max']:.2f} | "
                    f"{run['e2e_p50']:.2f} / {run['e2e_p99']:.2f} / {run['e2e_max']:.2f} | "
                    f"{fmt(run.get('server_cpu_ms'), 'server_cpu_ms')} |")
    add("")
    add("Where the server CPU goes: median CPU time per job of each server process (ms):")
    add("")
    for producers in producer_counts:
        for tool in tools:
            runs = [run for run in results.get((tool, producers), []) if "cpu_by_process" in run]
            if not runs:
                continue
            names = sorted({name for run in runs for name in run["cpu_by_process"]})
            shares = ", ".join(
                f"{name} {statistics.median(run['cpu_by_process'].get(name, 0) for run in runs):.3f}"
                for name in names)
            add(f"- {producers} producer(s), {LABELS[tool]}: {shares}")
    lines.extend(message_report(results, producer_counts))
    add("")
    add("Load generator commands (one per run; P = producers; ports are picked afresh each time):")
    add("")
    for tool in tools:
        argv = [relative(arg) for arg in load_command(args, tool, "P")]
        add(f"- {LABELS[tool]}: `{' '.join(quote(arg) for arg in argv)}`")
    add("")
    return "\n".join(lines)


def message_report(results, producer_counts):
    """The NATS messages per job of each client, medians over runs."""
    lines = []
    for producers in producer_counts:
        runs = [run for run in results.get(("reelmesh", producers), []) if "messages_by_client" in run]
        if not runs:
            continue
        if not lines:
            lines += ["", "NATS messages per job of each client, as nats-server's monitoring "
                      "(`/connz`) counts them (median over runs; sent / received by the client; "
                      "warm-up included):", ""]
        names = sorted({name for run in runs for name in run["messages_by_client"]})
        def median(name, index):
            return statistics.median(run["messages_by_client"].get(name, [0, 0])[index] for run in runs)
        sent = sum(median(name, 0) for name in names)
        received = sum(median(name, 1) for name in names)
        shares = ", ".join(f"{name} {median(name, 0):.2f} / {median(name, 1):.2f}" for name in names)
        lines.append(f"- {producers} producer(s): {shares}; all {sent:.2f} / {received:.2f}")
    return lines


def relative(arg):
    """A path inside the repository, relative to its root."""
    text = str(arg)
    root = str(REPO) + os.sep
    return text[len(root):] if text.startswith(root) else text


def quote(arg):
    arg = str(arg)
    return arg if re.fullmatch(r"[\w@%+=:,./\-\[\]]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("BENCH_JOBS", 2000)))
    parser.add_argument("--producers", default=os.environ.get("BENCH_PRODUCERS", "1,16"),
                        help="comma-separated producer counts")
    parser.add_argument("--warmup", type=int, default=int(os.environ.get("BENCH_WARMUP", 200)))
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", 5)))
    parser.add_argument("--tools", default=os.environ.get("BENCH_TOOLS", ",".join(TOOLS)))
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("BENCH_TIMEOUT", 300)),
                        help="seconds one run's jobs may take to complete")
    parser.add_argument("--concurrency", type=int,
                        default=int(os.environ.get("BENCH_CONCURRENCY", 16)),
                        help="worker concurrency both systems were started with (for the report)")
    parser.add_argument("--reelmesh-mode", choices=("services", "dev"), default="services",
                        help="how reelmesh was started (for the report)")
    parser.add_argument("--load-bin", help="the reelmesh-queue-bench binary")
    parser.add_argument("--reelmesh-bin", help="the reelmesh binary (for its version)")
    parser.add_argument("--endpoint", default="http://127.0.0.1:50051")
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--api-key", default=os.environ.get("REELMESH_API_KEY", "dev-key"))
    parser.add_argument("--node", default="node")
    parser.add_argument("--node-modules", type=Path, default=REPO / ".tools/bench-node/node_modules")
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--reelmesh-pids", default="",
                        help="comma-separated pids of reelmesh's server processes (for CPU per job)")
    parser.add_argument("--bullmq-pids", default="",
                        help="comma-separated pids of redis-server and the BullMQ worker")
    parser.add_argument("--nats-monitor", default="",
                        help="nats-server's monitoring URL (http://host:port), for messages per job")
    parser.add_argument("--bullmq-queue", default="reelmesh-bench")
    parser.add_argument("--floor-bin", help="the reelmesh-queue-floor binary")
    parser.add_argument("--floor-nats-url", default="nats://127.0.0.1:4223",
                        help="the JetStream floor's own nats-server")
    parser.add_argument("--floor-pids", default="",
                        help="comma-separated pids of the floor's nats-server and worker")
    parser.add_argument("--results", type=Path, default=HERE / "results.md")
    parser.add_argument("--command", default=" ".join(quote(a) for a in sys.argv),
                        help="the command line to show in the report")
    args = parser.parse_args()

    tools = [tool for tool in TOOLS if tool in args.tools.split(",")]
    args.server_pids = {
        "reelmesh": [int(pid) for pid in args.reelmesh_pids.split(",") if pid],
        "bullmq": [int(pid) for pid in args.bullmq_pids.split(",") if pid],
        "jetstream": [int(pid) for pid in args.floor_pids.split(",") if pid],
    }
    try:
        producer_counts = [int(p) for p in args.producers.split(",")]
    except ValueError:
        parser.error(f"--producers: expected comma-separated numbers, got {args.producers!r}")
    if not tools or args.runs < 1 or args.jobs < 1 or min(producer_counts) < 1:
        parser.error("bad --tools/--runs/--jobs/--producers")
    if "reelmesh" in tools and not args.load_bin:
        parser.error("--load-bin is needed to run reelmesh")
    if "jetstream" in tools and not args.floor_bin:
        parser.error("--floor-bin is needed to run the JetStream floor")

    started = dt.datetime.now(dt.timezone.utc)
    info = machine_info(args)
    log("\n".join(f"{k}: {v}" for k, v in info.items()))
    results = benchmark(args, producer_counts, tools)
    finished = dt.datetime.now(dt.timezone.utc)
    report = render_report(args, info, results, producer_counts, tools, started, finished)
    args.results.write_text(report)
    print()
    print(report)
    log(f"wrote {args.results}")
    if any("error" in run for runs in results.values() for run in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
