"""Failure → DOWN latency: how long after a target stops answering the engine reports DOWN.

    python bench/down_latency.py [--kinds http,tcp,sip] [--modes stop,freeze] [--repeats 5]
        [--interval 1] [--timeout 1] [--failure-threshold 3] [--json FILE]

Per kind, a local responder (``bench/responders.py``) on a fixed 127.0.0.1 port and one monitor
in a ``MonitorEngine`` (jitter on, so the check phase relative to the failure is random). Per
repetition: wait until the monitor is UP, wait a random fraction of an interval, then fail the
target and measure until ``on_change`` reports DOWN. Modes:

* ``stop``: the responder process is terminated (the port refuses: TCP RST, ICMP for UDP);
* ``freeze``: the responder is SIGSTOPped (the port stays open, nothing answers: each check runs
  into ``--timeout``). A TCP connect check still passes then (the kernel completes handshakes
  into the listen backlog of a stopped process): such repetitions count as ``never_down``.

The responder is restarted (or resumed) between repetitions. The failure threshold defaults to
the project's (3, ``MonitorDefaults.failure_threshold``); the timeout to the longest the fleet
file allows at this interval (timeout ≤ interval). SPEC §8 target: ≤ 2 intervals + 1 s.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from harness import LOCALHOST, Child, Children, free_port, machine, median, python_argv

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the worktree's monitors/


class Watcher:
    """Receives ``on_change`` and lets the bench wait for a status of one monitor."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._status: dict[str, tuple[str, float]] = {}

    def on_change(self, change: Any) -> None:
        with self._cond:
            self._status[change.spec.id] = (change.new.name, time.monotonic())
            self._cond.notify_all()

    def wait(self, monitor_id: str, status: str, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._status.get(monitor_id, ("", 0.0))[0] != status:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{monitor_id} not {status} within {timeout_s}s")
                self._cond.wait(left)
            return self._status[monitor_id][1]


def start(children: Children, kind: str, port: int) -> Child:
    child = children.start(f"responder-{kind}", python_argv("responders.py", kind, port))
    child.read_json(15)
    return child


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="http,tcp,sip")
    parser.add_argument("--modes", default="stop,freeze")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, help="check timeout (default: the interval)")
    parser.add_argument("--failure-threshold", type=int, default=3)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    from monitors.engine import MonitorEngine
    from monitors.probe import MonitorSpec

    timeout = args.timeout or args.interval
    watcher = Watcher()
    rows: list[dict[str, Any]] = []
    with Children() as children, MonitorEngine(watcher.on_change) as engine:
        for kind in args.kinds.split(","):
            port = free_port()  # TCP port; for sip the same number is used for UDP
            target = {
                "http": f"http://{LOCALHOST}:{port}/health",
                "tcp": f"{LOCALHOST}:{port}",
                "sip": f"sip:{LOCALHOST}:{port}",
            }[kind]
            for mode in args.modes.split(","):
                latencies: list[float] = []
                reasons = set()
                never = 0
                limit = (args.failure_threshold + 3) * (args.interval + timeout)
                for rep in range(args.repeats):
                    responder = start(children, kind, port)
                    spec = MonitorSpec(
                        id=f"{kind}-{mode}-{rep}",
                        name=kind,
                        tenant="bench",
                        host="bench",
                        kind=kind,
                        target=target,
                        interval_s=args.interval,
                        timeout_s=timeout,
                        failure_threshold=args.failure_threshold,
                    )
                    engine.set_monitors([spec])
                    watcher.wait(spec.id, "UP", 10 * args.interval + 5)
                    time.sleep(random.uniform(0, args.interval))
                    failed_at = time.monotonic()
                    if mode == "stop":
                        children.stop(responder)
                        failed_at = time.monotonic()
                    else:
                        responder.signal(signal.SIGSTOP)
                    try:
                        down_at = watcher.wait(spec.id, "DOWN", limit)
                    except RuntimeError:
                        never += 1  # still UP: recorded as such, not as a latency
                    else:
                        latencies.append(down_at - failed_at)
                    view = next(v for v in engine.snapshot() if v.spec.id == spec.id)
                    if view.last_result is not None:
                        reasons.add(view.last_result.reason)
                    engine.set_monitors([])
                    children.stop(responder)
                row = {
                    "kind": kind,
                    "mode": mode,
                    "n": len(latencies),
                    "never_down": never,
                    "median_s": median(latencies),
                    "max_s": max(latencies, default=float("nan")),
                    "target_s": 2 * args.interval + 1,
                    "reasons": sorted(reasons),
                    "latencies": latencies,
                }
                rows.append(row)
                print(
                    f"{kind:5} {mode:6} n={row['n']} median {row['median_s']:.2f}s "
                    f"max {row['max_s']:.2f}s (target ≤ {row['target_s']:.1f}s) "
                    f"never DOWN (within {limit:.0f}s) {never}; reason {'; '.join(row['reasons'])}",
                    flush=True,
                )
    if args.json:
        data = {
            "machine": machine(),
            "args": vars(args),
            "interval_s": args.interval,
            "timeout_s": timeout,
            "failure_threshold": args.failure_threshold,
            "rows": rows,
        }
        Path(args.json).write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
