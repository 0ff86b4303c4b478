"""`make bench-kinesis`: the Kinesis source's rate next to a raw GetRecords drain, same run.

    python -m bench.kinesis [--records N] [--shards S]

Both read the same records from the same server (moto's Kinesis, in this process's threads):
  raw       one loop reading every shard with GetRecords (Limit 500) until caught up: the rate
            at which this server hands records out, with no work done on them;
  pipeline  the real worker (2 processes) and beat with ETL_SOURCE=kinesis and default settings,
            from the first committed row to the last (start-up excluded), every record masked,
            written and checkpointed.
Only the ratio means anything on a shared 2-core machine. Runs on an embedded Postgres and Redis
of its own unless ETL_TEST_DATABASE_URL and ETL_TEST_BROKER_URL name servers.
"""

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import boto3

from etl import store
from etl.crypto import sealing, vault
from etl.demo import embedded, processes
from etl.ops import samples, seeding
from etl.progress import Bar
from etl.sources.kinesis import stream as kinesis

HERE = Path(__file__).parent


def raw_drain(endpoint: str, stream: str) -> tuple[int, float]:
    """Read every record of every shard, GetRecords Limit 500, one loop; (records, seconds)."""
    client = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")
    started = time.perf_counter()
    total = 0
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        it = client.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")
        iterator = it["ShardIterator"]
        while iterator:
            page = client.get_records(ShardIterator=iterator, Limit=500)
            total += len(page["Records"])
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
    return total, time.perf_counter() - started


def pipeline_rate(endpoint: str, stream: str, expected: int, workdir: Path) -> tuple[float, float]:
    """Rows+rejections per second between the first and the last commit; (rate, seconds)."""
    database, broker = os.environ["ETL_TEST_DATABASE_URL"], os.environ["ETL_TEST_BROKER_URL"]
    conn = embedded.fresh_schema(database)
    env = processes.local_env(
        database_url=database,
        broker_url=broker,
        queue_url="http://unused.invalid/000000000000/none",
        sqs_endpoint=endpoint,
        ETL_SOURCE="kinesis",
        KINESIS_STREAM_NAME=stream,
        AWS_ENDPOINT_URL_KINESIS=endpoint,
        ETL_MASKING_KEY="bench-masking-key-0123456789abcdefghijkl",
        ETL_PAYLOAD_KEY=sealing.new_key(),
        ETL_VAULT_PUBLIC_KEY=vault.new_keypair()[1],
        ETL_METRICS_PORT="0",
    )
    group = processes.ProcessGroup(env=env, workdir=workdir)
    group.start("worker", "beat")
    first = last = None
    done = 0
    try:
        deadline = time.monotonic() + 600
        with Bar("rec") as bar:
            bar.start(expected, "pipeline")
            while done < expected:
                if time.monotonic() > deadline:
                    raise SystemExit(f"pipeline wrote {done} of {expected} records in 600 s; see {workdir}")
                s = store.stats(conn)
                now_done = int(s["rows"]) + int(s["rejected"])
                if now_done and first is None:
                    first = (time.perf_counter(), now_done)
                bar.advance(now_done - done)
                done = now_done
                time.sleep(0.1)
            last = time.perf_counter()
    finally:
        group.stop()
        conn.close()
    assert first is not None
    seconds = last - first[0]
    return (done - first[1]) / seconds if seconds > 0 else float("inf"), seconds


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args.add_argument("--records", type=int, default=20_000)
    args.add_argument("--shards", type=int, default=2)
    opts = args.parse_args(argv)
    os.environ.update(processes.LOCAL_AWS)
    with embedded.for_run("bench-kinesis-"):
        moto = processes.MotoServer()
        try:
            os.environ["AWS_ENDPOINT_URL_KINESIS"] = moto.endpoint
            stream = kinesis.Stream(f"bench-{uuid.uuid4().hex[:6]}")
            stream.create(opts.shards)
            bodies = samples.generate(opts.records, seed=5)
            with Bar("rec") as bar:
                seeding.put(stream, bodies, bar)
            raw, raw_seconds = raw_drain(moto.endpoint, stream.name)
            with tempfile.TemporaryDirectory(prefix="bench-kinesis-") as tmp:
                rate, seconds = pipeline_rate(moto.endpoint, stream.name, len(bodies), Path(tmp))
        finally:
            moto.stop()
    result: dict[str, Any] = {
        "records": opts.records,
        "shards": opts.shards,
        "raw_getrecords_per_s": round(raw / raw_seconds),
        "pipeline_per_s": round(rate),
        "pipeline_seconds": round(seconds, 1),
        "ratio": round(rate / (raw / raw_seconds), 2),
    }
    print(
        f"Kinesis (moto, {opts.shards} shards, {opts.records:,} records): raw GetRecords drain "
        f"{result['raw_getrecords_per_s']:,}/s, pipeline {result['pipeline_per_s']:,}/s = {result['ratio']} x"
    )
    (HERE / "kinesis-results.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
