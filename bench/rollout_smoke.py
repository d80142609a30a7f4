"""Rollout and rollback timings on the local engine (a first, small benchmark).

    python bench/rollout_smoke.py [--tenants 3] [--rounds 3]

Starts stand-in tenants on CPDOPS_LOCAL_DOCKER_URL, then per round: one rollout of all tenants
to version 2 and back to 1 (time per instance), and one rollout to a failing image (the rollback
time per instance: gate failure → the previous container answering its health URL again).
Prints medians; removes its containers at the end. Uses a throwaway SQLite database.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from orchestrator.context import build_context
from orchestrator.db.models import Rollout
from orchestrator.db.session import session_scope
from orchestrator.demo.fleet import demo_tenants, register_tenants, remove_demo, start_tenant
from orchestrator.fleet.images import build_standin
from orchestrator.settings import Settings
from rollouts.spec import GateSpec, RolloutRequest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            database_url=f"sqlite:///{Path(tmp) / 'bench.db'}",
            pull_policy="never",
            demo_base_port=28080,
        )
        ctx = build_context(settings)
        host = ctx.hosts.hosts()[0]
        images = {v: build_standin(host.client, v) for v in ("1", "2")}
        bad = build_standin(host.client, "3", fail="health")
        tenants = demo_tenants(args.tenants, settings.demo_base_port)
        try:
            for t in tenants:
                start_tenant(host, t, images["1"])
            with session_scope(ctx.factory) as s:
                register_tenants(s, tenants, host.name)
            gate = GateSpec(passes=1, deadline_s=30, interval_s=0.1)
            per_instance: list[float] = []
            rollbacks: list[float] = []
            for _ in range(args.rounds):
                for version in ("2", "1"):
                    started = time.monotonic()
                    rid = ctx.executor.create(RolloutRequest(image=images[version], gate=gate))
                    assert ctx.executor.run(rid) == "succeeded"
                    per_instance.append((time.monotonic() - started) / len(tenants))
                rid = ctx.executor.create(
                    RolloutRequest(image=bad, gate=GateSpec(passes=1, deadline_s=2, interval_s=0.1))
                )
                assert ctx.executor.run(rid) == "failed"
                with ctx.factory() as s:
                    first = s.get_one(Rollout, rid).instances[0]
                    rollbacks += [
                        st.detail["seconds"] for st in first.steps if st.step == "rollback"
                    ]
            print(f"tenants={len(tenants)} rounds={args.rounds}")
            print(f"rollout seconds per instance: median {statistics.median(per_instance):.3f}")
            print(
                f"rollback seconds per instance: median {statistics.median(rollbacks):.3f} "
                f"max {max(rollbacks):.3f}"
            )
        finally:
            remove_demo(host)
            ctx.close()


if __name__ == "__main__":
    main()
