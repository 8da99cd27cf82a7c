"""The side-by-side job on Apache Flink (PyFlink Table API, local mini-cluster):
1-minute tumbling event-time windows with a 15-s watermark lag, clicks and
impressions per ad for the slices `*` and `country`, over a JSON-lines file
written by `adclick gen --out`. Results go to Flink's blackhole sink.

    python flink_job.py FILE PARALLELISM

Prints one JSON object: records, the total time (JVM start-up included), the
job's own time (Flink's net runtime, from submission to the end of the
bounded input), and the CPU seconds the JVM used during the job.
"""

import json
import os
import sys
import time


def jvm_cpu_seconds():
    """utime + stime of the Java processes started by this one (the PyFlink
    gateway runs the mini-cluster in a child JVM)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    me = os.getpid()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        ppid = int(fields[1])
        if ppid == me:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: flink_job.py FILE PARALLELISM")
    path = os.path.abspath(sys.argv[1])
    parallelism = int(sys.argv[2])
    with open(path, "rb") as f:
        records = sum(1 for _ in f)

    started = time.monotonic()
    from pyflink.table import EnvironmentSettings, TableEnvironment

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    env.get_config().set("parallelism.default", str(parallelism))
    env.execute_sql(f"""
        CREATE TABLE clicks (
            ad_id STRING,
            click_timestamp BIGINT,
            user_id STRING,
            ip STRING,
            country STRING,
            event_id STRING,
            event_type STRING,
            ts AS TO_TIMESTAMP_LTZ(click_timestamp, 3),
            WATERMARK FOR ts AS ts - INTERVAL '15' SECOND
        ) WITH (
            'connector' = 'filesystem',
            'path' = 'file://{path}',
            'format' = 'json',
            'json.ignore-parse-errors' = 'true'
        )""")
    env.execute_sql("""
        CREATE TABLE counts (
            window_start TIMESTAMP(3),
            ad_id STRING,
            country STRING,
            clicks BIGINT,
            impressions BIGINT
        ) WITH ('connector' = 'blackhole')""")
    ready = time.monotonic()
    cpu_before = jvm_cpu_seconds()
    result = env.execute_sql("""
        INSERT INTO counts
        SELECT window_start, ad_id, country,
               SUM(CASE WHEN event_type = 'click' THEN 1 ELSE 0 END),
               SUM(CASE WHEN event_type = 'impression' THEN 1 ELSE 0 END)
        FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTES))
        GROUP BY window_start, window_end, GROUPING SETS ((ad_id), (ad_id, country))""")
    result.wait()
    done = time.monotonic()
    cpu = jvm_cpu_seconds() - cpu_before
    net_ms = None
    try:
        job = result.get_job_client().get_job_execution_result().result()
        net_ms = job.get_net_runtime()
    except Exception as e:  # the figure is optional; the wall times are not
        print(f"no net runtime from Flink: {e}", file=sys.stderr)
    job_s = net_ms / 1000.0 if net_ms else done - ready
    print(json.dumps({
        "records": records,
        "parallelism": parallelism,
        "total_s": round(done - started, 2),
        "startup_s": round(ready - started, 2),
        "job_s": round(job_s, 2),
        "job_cpu_s": round(cpu, 2),
        "records_per_s": round(records / job_s),
        "records_per_cpu_s": round(records / cpu) if cpu > 0 else None,
    }))


if __name__ == "__main__":
    main()
