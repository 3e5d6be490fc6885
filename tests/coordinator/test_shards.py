"""``create_shards``: what it passes to every worker's connection."""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import text

import shardsession as ss


def test_timeouts_and_every_options_source_all_apply(shard_dsns: dict[str, str]) -> None:
    # options in the DSN, the timeout arguments, and connect_args' options: none is lost
    dsn = shard_dsns["s0"]
    with_options = make_conninfo(dsn, options="-c work_mem=7MB")
    assert conninfo_to_dict(with_options)["options"] == "-c work_mem=7MB"
    shards = ss.create_shards(
        {"s0": with_options}, statement_timeout=30, lock_timeout=5,
        connect_args={"options": "-c idle_in_transaction_session_timeout=60s"},
        recovery_interval=None, deadlock_interval=None,
    )  # fmt: skip
    # recovery and the deadlock detector connect with the same settings
    direct = conninfo_to_dict(shards.dsns["s0"])
    assert "idle_in_transaction_session_timeout=60s" in direct["options"]
    assert "work_mem=7MB" in direct["options"]
    try:
        with ss.Session(shards) as s:
            show = {name: s.scalar(text(f"SHOW {name}"), bind_arguments={"shard_id": "s0"})
                    for name in ("work_mem", "statement_timeout", "lock_timeout",
                                 "idle_in_transaction_session_timeout")}  # fmt: skip
    finally:
        shards.close()
    assert show == {
        "work_mem": "7MB",
        "statement_timeout": "30s",
        "lock_timeout": "5s",
        "idle_in_transaction_session_timeout": "1min",
    }
