"""``shardsession demo``: a multi-tenant schema over four shards, under chaos.

It starts the embedded cluster (or uses shards given with ``--dsn``), loads
tenants, users and orders, runs cross-shard queries and checks their answers,
moves money between users on different shards from several processes while
killing worker processes and crashing inside commits, runs recovery, and shows
that the books still balance.  See :func:`shardsession.demo.run.run_demo`.
"""

from __future__ import annotations

from shardsession.demo.run import QUICK, DemoOptions, run_demo
from shardsession.demo.workload import Sizes

__all__ = ["QUICK", "DemoOptions", "Sizes", "run_demo"]
