"""Probe throughput and CPU per probe: the cpdops engine against blackbox_exporter (SPEC §8).

    python bench/probe_throughput.py [--kinds http,tcp,mix,sip,sip-tcp] [--rounds 3]
        [--duration 10] [--interval 1] [--http-rate 2000] [--tcp-rate 2000] [--sip-rate 5000]
        [--no-blackbox] [--profile]

For each kind, local targets on 127.0.0.1 (``bench/responders.py`` for http and tcp, Kamailio
with its stock config for sip when installed, else the Python SIP responder), then per round:

* **cpdops**: a child process runs one ``MonitorEngine`` with ``rate × interval`` monitors of
  that kind at ``--interval`` (jitter on, as in the product); after a warm-up it counts the
  checks done and passed (``on_result``) and its own CPU (``/proc/self/stat``, every thread)
  over ``--duration`` seconds. ``mix`` is half http, half tcp monitors.
* **blackbox_exporter**: started here on a free 127.0.0.1 port with a config file in a temp dir;
  a driver child sends ``GET /probe?module=…&target=…`` at the same rate over keep-alive
  connections and counts probes done and ``probe_success 1``; the CPU counted is blackbox's
  own process (``/proc/<pid>/stat``), not the driver's nor the responder's.

blackbox has no SIP module. ``sip`` (OPTIONS over UDP) is compared against the target only;
``sip-tcp`` compares cpdops' SIP OPTIONS over TCP with blackbox's tcp prober sending the same
OPTIONS request and expecting ``SIP/2.0 200`` (query_response): a fair equivalent of one
connection + one request + one reply line, though blackbox parses less than cpdops does.

``--profile`` adds one unmeasured cpdops run per kind under ``py-spy record`` and prints the
functions where the loop thread spends its time. Run under the shared lock:
``flock /tmp/cpdops-bench.lock python bench/probe_throughput.py``. Prints a table and, with
``--json FILE``, writes every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    LOCALHOST,
    Child,
    Children,
    cpu_seconds,
    free_port,
    kamailio_binary,
    machine,
    median,
    python_argv,
    start_kamailio,
    start_responder,
    wait_port,
)

KINDS = ("http", "tcp", "mix", "sip", "sip-tcp")
BLACKBOX_MODULES = {"http": "http_2xx", "tcp": "tcp_connect", "sip-tcp": "sip_options_tcp"}
TIMEOUT_S = 2.0
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the worktree's monitors/


@dataclass(frozen=True)
class Targets:
    http: str = ""
    tcp: str = ""
    sip: str = ""
    sip_hostport: str = ""


# ------------------------------------------------------------------ cpdops engine (child)


def engine_specs(kind: str, count: int, interval: float, targets: Targets) -> list[Any]:
    from monitors.probe import MonitorSpec

    specs = []
    for i in range(count):
        probe_kind, target, options = kind, "", {}
        if kind == "mix":
            probe_kind = "http" if i % 2 == 0 else "tcp"
        if probe_kind == "http":
            target = targets.http
        elif probe_kind == "tcp":
            target = targets.tcp
        else:
            probe_kind, target = "sip", targets.sip
            options = {"transport": "tcp" if kind == "sip-tcp" else "udp"}
        specs.append(
            MonitorSpec(
                id=f"m{i}",
                name=f"m{i}",
                tenant=f"t{i % 100}",
                host="bench",
                kind=probe_kind,
                target=target,
                interval_s=interval,
                timeout_s=TIMEOUT_S,
                options=options,
            )
        )
    return specs


def run_engine(args: argparse.Namespace) -> None:
    from monitors.engine import MonitorEngine

    targets = Targets(**json.loads(args.targets))
    count = round(args.rate * args.interval)
    counts: Counter[str] = Counter()

    def on_result(spec: Any, result: Any, status: Any) -> None:
        counts["done"] += 1
        if result.ok:
            counts["ok"] += 1
        else:
            counts[result.reason] += 1

    engine = MonitorEngine(lambda change: None, on_result=on_result)
    engine.start()
    try:
        engine.set_monitors(engine_specs(args.kind, count, args.interval, targets))
        time.sleep(args.warmup)
        before, cpu0, t0 = Counter(counts), cpu_seconds(os.getpid()), time.monotonic()
        report({"phase": "measuring"})
        time.sleep(args.duration)
        after, cpu1, t1 = Counter(counts), cpu_seconds(os.getpid()), time.monotonic()
    finally:
        engine.stop()
    delta = after - before
    failures = {k: v for k, v in delta.items() if k not in ("done", "ok")}
    report(
        {
            "monitors": count,
            "seconds": t1 - t0,
            "done": delta["done"],
            "ok": delta["ok"],
            "cpu_s": cpu1 - cpu0,
            "failures": dict(sorted(failures.items(), key=lambda kv: -kv[1])[:3]),
            "threads": threading.active_count(),
        }
    )


def report(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------ blackbox driver (child)


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    headers = head.decode("latin-1").lower()
    found = re.search(r"\r\ncontent-length: *(\d+)", headers)
    if found:
        return await reader.readexactly(int(found[1]))
    if "transfer-encoding: chunked" not in headers:
        raise RuntimeError(f"cannot frame reply: {headers[:200]!r}")
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return body
        body += chunk[:-2]


async def drive(args: argparse.Namespace) -> None:
    paths = [
        f"/probe?module={module}&target={target}"
        for module, target in (item.split("|", 1) for item in args.probe)
    ]
    window: dict[str, float] = {}
    counts: Counter[str] = Counter()
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    end = start + args.warmup + args.duration
    index = 0

    async def worker() -> None:
        nonlocal index
        reader, writer = await asyncio.open_connection(LOCALHOST, args.blackbox_port)
        try:
            while True:
                slot, index = index, index + 1
                due = start + slot / args.rate
                if due >= end:
                    return
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                path = paths[slot % len(paths)]
                writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
                body = await _read_reply(reader)
                now = loop.time()
                if "t0" in window and now < window["t1"]:
                    counts["done"] += 1
                    if b"\nprobe_success 1" in body:
                        counts["ok"] += 1
        finally:
            writer.close()

    async def measure() -> None:
        await asyncio.sleep(start + args.warmup - loop.time())
        cpu0 = cpu_seconds(args.blackbox_pid)
        window["t0"], window["t1"] = loop.time(), loop.time() + args.duration
        report({"phase": "measuring"})
        await asyncio.sleep(args.duration)
        window["cpu"] = cpu_seconds(args.blackbox_pid) - cpu0
        window["seconds"] = loop.time() - window["t0"]

    workers = [asyncio.create_task(worker()) for _ in range(args.connections)]
    await measure()
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    report(
        {
            "seconds": window["seconds"],
            "done": counts["done"],
            "ok": counts["ok"],
            "cpu_s": window["cpu"],
        }
    )


# ------------------------------------------------------------------ orchestration (parent)


def blackbox_config(path: Path, sip_uri: str) -> None:
    host = LOCALHOST
    request = "\r\n".join(
        [
            f"OPTIONS {sip_uri} SIP/2.0",
            f"Via: SIP/2.0/TCP {host}:5060;branch=z9hG4bKbench1;rport",
            "Max-Forwards: 70",
            f"From: <sip:blackbox@{host}>;tag=bench1",
            f"To: <{sip_uri}>",
            f"Call-ID: bench1@{host}",
            "CSeq: 1 OPTIONS",
            "Content-Length: 0",
            "",
            "",
        ]
    )
    modules = {
        "http_2xx": {"prober": "http", "timeout": "2s", "http": {"preferred_ip_protocol": "ip4"}},
        "tcp_connect": {"prober": "tcp", "timeout": "2s", "tcp": {"preferred_ip_protocol": "ip4"}},
        "sip_options_tcp": {
            "prober": "tcp",
            "timeout": "2s",
            "tcp": {
                "preferred_ip_protocol": "ip4",
                "query_response": [{"send": request}, {"expect": "^SIP/2.0 200"}],
            },
        },
    }
    path.write_text(json.dumps({"modules": modules}, indent=2))  # JSON is YAML


def start_blackbox(children: Children, sip_uri: str) -> tuple[Child, int]:
    binary = shutil.which("prometheus-blackbox-exporter")
    if binary is None:
        raise RuntimeError("apt-get install -y prometheus-blackbox-exporter")
    config = children.tmp / "blackbox.yml"
    blackbox_config(config, sip_uri)
    port = free_port()
    child = children.start(
        "blackbox",
        [
            binary,
            f"--config.file={config}",
            f"--web.listen-address={LOCALHOST}:{port}",
            "--log.level=warn",
        ],
    )
    wait_port(port)
    return child, port


def rate_of(args: argparse.Namespace, kind: str) -> float:
    return float(args.sip_rate if kind.startswith("sip") else getattr(args, f"{kind}_rate", 0))


def profile_child(child: Child, seconds: float, out: Path) -> None:
    spy = Path(sys.executable).with_name("py-spy")
    spy_bin = str(spy) if spy.exists() else shutil.which("py-spy")
    if spy_bin is None:
        print("py-spy not found (pip install py-spy); no profile")
        return
    argv = [spy_bin, "record", "-p", str(child.pid), "-d", str(int(seconds)), "-r", "100"]
    subprocess.run(
        [*argv, "-f", "raw", "-o", str(out), "--nonblocking"],
        check=False,
        capture_output=True,
        timeout=seconds + 30,
    )


def summarise_profile(path: Path, top: int = 15) -> list[tuple[str, float]]:
    """Inclusive share of samples per function on the engine loop thread."""
    if not path.exists():
        return []
    total = 0
    inclusive: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if "cpdops-monitors" not in stack and "_run_loop" not in stack:
            continue
        count = int(count_text)
        total += count
        frames = {frame.split(" (")[0] + " " + frame.split("/")[-1] for frame in stack.split(";")}
        for frame in frames:
            inclusive[frame] += count
    return [(name, n / total) for name, n in inclusive.most_common(top)] if total else []


def one_run(
    children: Children,
    prober: str,
    kind: str,
    args: argparse.Namespace,
    targets: Targets,
    blackbox: tuple[Child, int] | None,
    profile: Path | None = None,
) -> dict[str, Any]:
    rate = rate_of(args, kind)
    common = ["--rate", rate, "--warmup", args.warmup, "--duration", args.duration]
    if prober == "cpdops":
        argv = python_argv(
            "probe_throughput.py", "--role", "engine", "--kind", kind, *common,
            "--interval", args.interval, "--targets", json.dumps(targets.__dict__),
        )  # fmt: skip
    else:
        assert blackbox is not None
        probes = []
        for sub in ("http", "tcp") if kind == "mix" else (kind,):
            target = {"http": targets.http, "tcp": targets.tcp, "sip-tcp": targets.sip_hostport}
            probes += ["--probe", f"{BLACKBOX_MODULES[sub]}|{target[sub]}"]
        argv = python_argv(
            "probe_throughput.py", "--role", "driver", *common, *probes,
            "--blackbox-port", blackbox[1], "--blackbox-pid", blackbox[0].pid,
            "--connections", args.connections,
        )  # fmt: skip
    child = children.start(f"{prober}-{kind}", argv)
    try:
        child.read_json(60)  # measuring
        if profile is not None:
            profile_child(child, args.duration - 1, profile)
        result = child.read_json(args.duration + 60)
    finally:
        children.stop(child)
    seconds = result["seconds"]
    result.update(
        prober=prober,
        kind=kind,
        target_rate=rate,
        rate=result["done"] / seconds,
        ok_ratio=result["ok"] / result["done"] if result["done"] else 0.0,
        cores=result["cpu_s"] / seconds,
        cpu_us_per_probe=1e6 * result["cpu_s"] / result["done"] if result["done"] else 0.0,
    )
    return result


def start_targets(children: Children, kinds: list[str], sip_server: str) -> Targets:
    http = tcp = sip = sip_hostport = ""
    if {"http", "mix"} & set(kinds):
        http = f"http://{LOCALHOST}:{start_responder(children, 'http')}/health"
    if {"tcp", "mix"} & set(kinds):
        tcp = f"{LOCALHOST}:{start_responder(children, 'tcp')}"
    if {"sip", "sip-tcp"} & set(kinds):
        if sip_server == "kamailio":
            port = free_port()
            start_kamailio(children, port)
        else:
            port = start_responder(children, "sip")
        sip_hostport = f"{LOCALHOST}:{port}"
        sip = f"sip:{sip_hostport}"
    return Targets(http=http, tcp=tcp, sip=sip, sip_hostport=sip_hostport)


def main_parent(args: argparse.Namespace) -> None:
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise SystemExit(f"unknown kinds {sorted(unknown)} (known: {', '.join(KINDS)})")
    sip_server = args.sip_server
    if sip_server == "auto":
        sip_server = "kamailio" if kamailio_binary() else "python"
    if "sip-tcp" in kinds and sip_server != "kamailio":
        raise SystemExit("sip-tcp needs kamailio (the Python responder is UDP only)")
    results: list[dict[str, Any]] = []
    profiles: dict[str, list[tuple[str, float]]] = {}
    with Children() as children:
        targets = start_targets(children, kinds, sip_server)
        blackbox = None if args.no_blackbox else start_blackbox(children, targets.sip)
        for kind in kinds:
            for _ in range(args.rounds):
                results.append(one_run(children, "cpdops", kind, args, targets, None))
                print_row(results[-1])
                if blackbox is not None and (kind in BLACKBOX_MODULES or kind == "mix"):
                    results.append(one_run(children, "blackbox", kind, args, targets, blackbox))
                    print_row(results[-1])
            if args.profile:
                out = children.tmp / f"profile-{kind}.txt"
                one_run(children, "cpdops", kind, args, targets, None, profile=out)
                profiles[kind] = summarise_profile(out)
    summary = summarise(results)
    print("\nmedians over rounds:")
    for row in summary:
        print_row(row)
    for kind, rows in profiles.items():
        print(f"\npy-spy, engine loop thread, kind {kind} (inclusive share of samples):")
        for name, share in rows:
            print(f"  {share:6.1%}  {name}")
    if args.json:
        data = {
            "machine": machine(),
            "args": vars(args),
            "sip_server": sip_server,
            "runs": results,
            "summary": summary,
            "profiles": profiles,
        }
        Path(args.json).write_text(json.dumps(data, indent=2))


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for key in dict.fromkeys((r["kind"], r["prober"]) for r in results):
        runs = [r for r in results if (r["kind"], r["prober"]) == key]
        row: dict[str, Any] = {"kind": key[0], "prober": key[1], "n": len(runs)}
        for field in ("target_rate", "rate", "ok_ratio", "cores", "cpu_us_per_probe"):
            row[field] = median([r[field] for r in runs])
        rows.append(row)
    return rows


def print_row(row: dict[str, Any]) -> None:
    print(
        f"{row['kind']:8} {row['prober']:8} target {row['target_rate']:6.0f}/s  "
        f"done {row['rate']:7.0f}/s  ok {row['ok_ratio']:6.1%}  "
        f"CPU {row['cores']:5.2f} cores  {row['cpu_us_per_probe']:6.0f} µs/probe"
        + (f"  n={row['n']}" if "n" in row else ""),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="http,tcp,mix,sip,sip-tcp")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--interval", type=float, default=1.0, help="cpdops monitor interval")
    parser.add_argument("--http-rate", type=float, default=2000)
    parser.add_argument("--tcp-rate", type=float, default=2000)
    parser.add_argument("--mix-rate", type=float, default=2000)
    parser.add_argument("--sip-rate", type=float, default=5000)
    parser.add_argument("--sip-server", choices=("auto", "kamailio", "python"), default="auto")
    parser.add_argument("--connections", type=int, default=64, help="driver → blackbox")
    parser.add_argument("--no-blackbox", action="store_true")
    parser.add_argument("--profile", action="store_true", help="one py-spy run per kind")
    parser.add_argument("--json", help="write all figures to this file")
    # internal: the child processes
    parser.add_argument("--role", choices=("parent", "engine", "driver"), default="parent")
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--targets", help=argparse.SUPPRESS)
    parser.add_argument("--probe", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--blackbox-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--blackbox-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "engine":
        run_engine(args)
    elif args.role == "driver":
        asyncio.run(drive(args))
    else:
        main_parent(args)


if __name__ == "__main__":
    main()
