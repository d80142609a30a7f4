"""10,000 monitors in one engine: resident memory, probe start lag and ``/metrics`` render time.

    python bench/monitor_scale.py [--monitors 10000] [--interval 10] [--duration 45]
        [--mix http=4,tcp=3,sip=3] [--renders 7] [--json FILE]

Starts local targets on 127.0.0.1 (``bench/responders.py`` http, tcp and sip), then a child
process of its own (so nothing else inflates its memory) that runs one ``MonitorEngine`` with
``--monitors`` monitors split by ``--mix`` at ``--interval`` (jitter on, as in the product) for
``--duration`` seconds, and reports:

* **RSS**: ``VmRSS`` of the child at the end of the run, with every monitor running (and its
  peak, ``VmHWM``); the figures are the whole Python process (interpreter, httpx, …);
* **start lag**: for every check after a monitor's first, the actual start (when the probe's
  ``check`` is entered: after the engine's semaphore) minus the fixed-rate schedule the engine
  keeps, i.e. first start + k × interval; p50, p99 and max;
* **/metrics render**: what the ``/metrics`` route does, ``MetricsRegistry.render()`` of
  ``orchestrator.metrics.make_registry()`` with ``monitors.metrics.register(registry, engine)``
  (the monitor collector writes its own text exposition), while the engine keeps probing; median
  of ``--renders`` renders, and the size of the text. Alongside: ``generate_latest_median_ms``,
  prometheus_client's ``generate_latest`` of the same registry (the route before), interleaved
  with the renders; ``collect_median_ms``: the collector's ``collect()`` alone, building the
  families from ``engine.snapshot()``; ``render_stopped_median_ms``: the renders once the engine
  has stopped, with no loop thread competing for the GIL, and ``render_matches`` whether that
  text is byte for byte ``generate_latest``'s.

Run under the shared lock: ``flock /tmp/cpdops-bench.lock python bench/monitor_scale.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from array import array
from pathlib import Path
from typing import Any

from harness import (
    LOCALHOST,
    Children,
    cpu_seconds,
    machine,
    median,
    percentile,
    python_argv,
    rss_bytes,
    start_responder,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the worktree's monitors/


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        kind, _, weight = part.partition("=")
        if kind not in ("http", "tcp", "sip"):
            raise SystemExit(f"--mix: unknown kind {kind!r} (http, tcp, sip)")
        mix[kind] = float(weight or 1)
    return mix


class StartRecorder:
    """Wraps a probe: notes when each check starts, as lag against the fixed-rate schedule."""

    def __init__(self, inner: Any, interval: float, lags: array[float], lock: threading.Lock):
        self._inner = inner
        self._interval = interval
        self._lags = lags
        self._lock = lock
        self._first: dict[str, tuple[float, int]] = {}

    async def check(self, spec: Any) -> Any:
        now = time.monotonic()
        first = self._first.get(spec.id)
        if first is None:
            self._first[spec.id] = (now, 1)
        else:
            start, count = first
            self._first[spec.id] = (start, count + 1)
            with self._lock:
                self._lags.append(now - (start + count * self._interval))
        return await self._inner.check(spec)

    async def aclose(self) -> None:
        await self._inner.aclose()


def run_child(args: argparse.Namespace) -> None:
    from prometheus_client import generate_latest

    from monitors.engine import MonitorEngine
    from monitors.metrics import register
    from monitors.probe import MonitorSpec
    from monitors.probes import PROBES

    targets = json.loads(args.targets)
    mix = parse_mix(args.mix)
    total_weight = sum(mix.values())
    lags: array[float] = array("d")
    lock = threading.Lock()

    def wrapped(kind: str) -> Any:
        return lambda: StartRecorder(PROBES[kind](), args.interval, lags, lock)

    specs = []
    kinds = [k for k, w in mix.items() for _ in range(round(w / total_weight * 1000))]
    for i in range(args.monitors):
        kind = kinds[i % len(kinds)]
        specs.append(
            MonitorSpec(
                id=f"t{i % 500}/{kind}-{i}",
                name=f"{kind}-{i}",
                tenant=f"t{i % 500}",
                host=f"h{i % 20}",
                kind=kind,
                target=targets[kind],
                interval_s=args.interval,
                timeout_s=min(5.0, args.interval),
            )
        )
    engine = MonitorEngine(
        lambda change: None, probes={k: wrapped(k) for k in ("http", "tcp", "sip")}
    )
    engine.start()
    try:
        rss_idle = rss_bytes()
        cpu0, t0 = cpu_seconds(os.getpid()), time.monotonic()
        engine.set_monitors(specs)
        time.sleep(args.duration)
        cpu1, t1 = cpu_seconds(os.getpid()), time.monotonic()
        rss = rss_bytes()
        hwm = next(
            int(line.split()[1]) * 1024
            for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith("VmHWM:")
        )
        views = engine.snapshot()
        checked = sum(1 for v in views if v.last_result is not None)
        passed = sum(1 for v in views if v.last_result is not None and v.last_result.ok)
        probes = sum(v.probe_count for v in views)
        # imported only now: its imports (sqlalchemy, …) are not the engine's memory
        from orchestrator.metrics import make_registry

        registry = make_registry()
        collector = register(registry, engine)
        renders, plain, collects, size = [], [], [], 0
        for _ in range(args.renders):
            started = time.perf_counter()
            families = list(collector.collect())
            collects.append(time.perf_counter() - started)
            del families
            started = time.perf_counter()
            generate_latest(registry)
            plain.append(time.perf_counter() - started)
            started = time.perf_counter()
            text = registry.render()
            renders.append(time.perf_counter() - started)
            size = len(text)
        with lock:
            lag_values = list(lags)
    finally:
        engine.stop()
    idle_renders = []  # the same registry once the engine has stopped: no loop thread competing
    for _ in range(args.renders):
        started = time.perf_counter()
        text = registry.render()
        idle_renders.append(time.perf_counter() - started)
    matches = text == generate_latest(registry)
    sys.stdout.write(
        json.dumps(
            {
                "monitors": len(specs),
                "rss_before_monitors_mb": rss_idle / 2**20,
                "rss_mb": rss / 2**20,
                "hwm_mb": hwm / 2**20,
                "seconds": t1 - t0,
                "cores": (cpu1 - cpu0) / (t1 - t0),
                "probes": probes,
                "probes_per_s": probes / (t1 - t0),
                "checked": checked,
                "passed_last": passed,
                "lag_n": len(lag_values),
                "lag_p50_ms": 1000 * percentile(lag_values, 50),
                "lag_p99_ms": 1000 * percentile(lag_values, 99),
                "lag_max_ms": 1000 * max(lag_values, default=float("nan")),
                "render_median_ms": 1000 * median(renders),
                "render_max_ms": 1000 * max(renders),
                "generate_latest_median_ms": 1000 * median(plain),
                "collect_median_ms": 1000 * median(collects),
                "render_stopped_median_ms": 1000 * median(idle_renders),
                "render_matches": matches,
                "renders": len(renders),
                "metrics_bytes": size,
            }
        )
        + "\n"
    )
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--monitors", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=45.0, help="seconds before measuring")
    parser.add_argument("--mix", default="http=4,tcp=3,sip=3")
    parser.add_argument("--renders", type=int, default=7)
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--targets", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return
    parse_mix(args.mix)
    with Children() as children:
        targets = {
            "http": f"http://{LOCALHOST}:{start_responder(children, 'http')}/health",
            "tcp": f"{LOCALHOST}:{start_responder(children, 'tcp')}",
            "sip": f"sip:{LOCALHOST}:{start_responder(children, 'sip')}",
        }
        child = children.start(
            "engine",
            python_argv(
                "monitor_scale.py", "--child", "--targets", json.dumps(targets),
                "--monitors", args.monitors, "--interval", args.interval,
                "--duration", args.duration, "--mix", args.mix, "--renders", args.renders,
            ),
        )  # fmt: skip
        result = child.read_json(args.duration + 120)
    for key, value in result.items():
        print(f"{key:24} {value:.1f}" if isinstance(value, float) else f"{key:24} {value}")
    if args.json:
        data = {"machine": machine(), "args": vars(args), "result": result}
        Path(args.json).write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
