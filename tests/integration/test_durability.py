"""Durable acceptance: crashes, S3 outages, spool corruption, backpressure and a full disk.
Every record whose PutRecordBatch entry got a RecordId must end up in S3, and in one object only."""
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
import requests
from botocore.config import Config

from conftest import BIN, FH_AK, FH_SK, REGION, S3Server, free_port, wait_for

CRASH_CYCLES = int(os.environ.get("HOSEPIPE_CRASH_CYCLES", "5"))


def stream_toml(name, bucket, prefix, interval=1, size=1, fmt="UNCOMPRESSED"):
    return f"""
[streams.{name}.extended_s3_destination_configuration]
bucket_arn = "arn:aws:s3:::{bucket}"
prefix = "{prefix}"
compression_format = "{fmt}"
buffering_hints = {{ size_in_mbs = {size}, interval_in_seconds = {interval} }}
"""


def delivered_ids(s3, bucket, prefix):
    ids = []
    for _, body, _ in s3.objects(bucket, prefix):
        ids.extend(line.decode().rstrip(".") for line in body.splitlines() if line)
    return ids


class Producers:
    """Threads pushing records with unique ids; they keep going through daemon crashes and
    remember which ids were acknowledged (got a RecordId)."""

    def __init__(self, daemon, stream, threads=4, batch=50, size=0, retry_failed=False):
        self.daemon, self.stream, self.batch, self.size = daemon, stream, batch, size
        self.retry_failed = retry_failed
        self.acked, self.slow_downs, self.errors = set(), 0, 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(t,), daemon=True)
                        for t in range(threads)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def client(self):
        """One attempt per request. botocore's `max_attempts` counts retries, and a resend after
        the daemon died mid-request would put the records in twice: the producer's own
        duplicate, which no server can tell apart."""
        return boto3.client("firehose", endpoint_url=self.daemon.url, aws_access_key_id=FH_AK,
                            aws_secret_access_key=FH_SK, region_name=REGION,
                            config=Config(retries={"total_max_attempts": 1}))

    def record(self, rid):
        pad = "." * max(0, self.size - len(rid) - 1)
        return f"{rid}{pad}\n".encode()

    def run(self, t):
        n = 0
        pending = []
        while not self.stop.is_set():
            if not pending:
                pending = [f"p{t}-{n + i}" for i in range(self.batch)]
                n += self.batch
            try:
                fh = self.client()
                resp = fh.put_record_batch(DeliveryStreamName=self.stream,
                                           Records=[{"Data": self.record(r)} for r in pending])
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                # Outcome unknown (the daemon died mid-request): not acknowledged. Move on.
                with self.lock:
                    self.errors += 1
                pending = []
                time.sleep(0.1)
                continue
            failed = []
            with self.lock:
                for rid, entry in zip(pending, resp["RequestResponses"]):
                    if "RecordId" in entry:
                        self.acked.add(rid)
                    else:
                        assert entry["ErrorCode"] == "ServiceUnavailableException"
                        assert entry["ErrorMessage"] == "Slow down."
                        self.slow_downs += 1
                        failed.append(rid)
            # As the AWS docs advise: resend only the failed entries, with backoff.
            pending = failed if self.retry_failed else []
            if failed:
                time.sleep(0.05 + random.random() * 0.1)


def crash_cycles(d, cycles=CRASH_CYCLES):
    """`cycles` times: let the producers run a moment, then kill -9 the daemon and restart it
    on the same address."""
    for _ in range(cycles):
        time.sleep(random.uniform(0.5, 2.0))
        d.crash()
        d.start()
    time.sleep(1)


def test_kill_9_cycles_lose_no_acknowledged_record(s3, bucket, daemon_factory):
    d = daemon_factory(stream_toml("crashy", bucket, "c/"), listen=f"127.0.0.1:{free_port()}")
    with Producers(d, "crashy") as producers:
        crash_cycles(d)
    assert d.stop() == 0, d.log()
    acked = producers.acked
    got = delivered_ids(s3, bucket, "c/")
    missing = acked - set(got)
    duplicates = len(got) - len(set(got))
    print(f"\ncrash test: {CRASH_CYCLES} kill -9 cycles, {len(acked)} acknowledged, "
          f"{len(set(got))} distinct delivered, {duplicates} duplicates, "
          f"{producers.errors} requests with unknown outcome")
    assert len(acked) > 0
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {sorted(missing)[:5]}"
    assert duplicates == 0, f"{duplicates} records in two objects (the object journal is on)"


def test_outage_with_a_crash_in_the_middle_loses_nothing(tmp_path, daemon_factory):
    server = S3Server(tmp_path / "s3")
    try:
        bucket = server.create_bucket("outage-crash")
        d = daemon_factory(stream_toml("oc", bucket, "o/"), listen=f"127.0.0.1:{free_port()}",
                           extra_env={"AWS_ENDPOINT_URL_S3": server.url})
        with Producers(d, "oc", threads=2) as producers:
            time.sleep(1)
            server.stop()
            time.sleep(2)                 # records pile up in the spool while S3 is down
            d.crash()                     # ... and the daemon dies with them undelivered
            d.start()
            time.sleep(1)
            server.start()
            time.sleep(1)
        assert d.stop() == 0
        got = set(delivered_ids(server, bucket, "o/"))
        assert producers.acked and producers.acked <= got, \
            f"{len(producers.acked - got)} acknowledged records lost"
    finally:
        server.stop()


def spool_segments(d, stream):
    return sorted((d.data_dir / "spool" / f"s-{stream}").glob("seg-*.log"))


def test_a_torn_tail_is_truncated_and_the_rest_delivered(s3, bucket, daemon_factory):
    d = daemon_factory(stream_toml("torn", bucket, "t/", interval=900, size=128))
    fh = d.firehose()
    ids = [f"torn-{i}" for i in range(100)]
    fh.put_record_batch(DeliveryStreamName="torn", Records=[{"Data": f"{i}\n".encode()} for i in ids])
    d.crash()
    seg = spool_segments(d, "torn")[-1]
    with open(seg, "ab") as f:
        f.write(b"\x40\x00\x00\x00half-a-record")   # a write torn by the crash
    d.start()
    assert requests.get(f"{d.url}/health", timeout=5).status_code == 200
    assert d.metric("hosepipe_spool_truncated_bytes_total", "torn") > 0
    assert d.stop() == 0
    assert sorted(delivered_ids(s3, bucket, "t/")) == sorted(ids)


def test_truncation_mid_record_keeps_every_whole_record(s3, bucket, daemon_factory):
    d = daemon_factory(stream_toml("cut", bucket, "x/", interval=900, size=128))
    ids = [f"cut-{i}" for i in range(50)]
    d.firehose().put_record_batch(DeliveryStreamName="cut",
                                  Records=[{"Data": f"{i}\n".encode()} for i in ids])
    d.crash()
    seg = spool_segments(d, "cut")[-1]
    os.truncate(seg, seg.stat().st_size - 5)
    d.start()
    assert d.metric("hosepipe_spool_truncated_bytes_total", "cut") > 0
    assert d.stop() == 0
    assert sorted(delivered_ids(s3, bucket, "x/")) == sorted(ids[:-1])


def test_a_corrupt_middle_segment_is_moved_aside_and_the_daemon_serves(s3, bucket, daemon_factory):
    d = daemon_factory("[spool]\nsegment_mb = 1\n" +
                       stream_toml("rot", bucket, "r/", interval=900, size=128))
    fh = d.firehose()
    for b in range(10):
        fh.put_record_batch(DeliveryStreamName="rot", Records=[
            {"Data": f"rot-{b}-{i}".ljust(999, ".").encode() + b"\n"} for i in range(500)])
    d.crash()
    segs = spool_segments(d, "rot")
    assert len(segs) >= 3
    data = bytearray(segs[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    segs[0].write_bytes(bytes(data))
    d.start()
    # The reader meets the damage when it reaches the segment, not at start-up.
    wait_for(lambda: d.metric("hosepipe_spool_corrupt_segments_total", "rot") == 1,
             what="the damaged segment found by the reader")
    # The log is read from the daemon's stderr by a thread of its own: it may lag the metric.
    wait_for(lambda: "corrupt spool segment moved aside" in d.log(), what="the ERROR log")
    assert d.metric("hosepipe_spool_lost_records_total", "rot") > 0
    assert list((segs[0].parent / "corrupt").glob("seg-*.log"))
    fh = d.firehose()
    fh.put_record_batch(DeliveryStreamName="rot", Records=[{"Data": b"after-the-damage\n"}])
    assert d.stop() == 0
    got = delivered_ids(s3, bucket, "r/")
    assert "after-the-damage" in got
    # The records of the other segments, and those before the damage, are delivered.
    assert sum(1 for g in got if g.startswith("rot-9-")) == 500
    assert len({g for g in got if g.startswith("rot-")}) >= 4000


def test_backpressure_slows_producers_down_and_loses_nothing(s3, bucket, daemon_factory):
    # A spool of 2 MiB fills faster than 1 MiB objects drain it; 1 MiB of memory is plenty.
    d = daemon_factory("[memory]\nmax_mb = 1\n[spool]\nmax_mb = 2\nsegment_mb = 1\n" +
                       stream_toml("bp", bucket, "b/", interval=1, size=1))
    with Producers(d, "bp", threads=4, batch=200, size=1000, retry_failed=True) as producers:
        wait_for(lambda: len(producers.acked) >= 8000, timeout=120, interval=0.5,
                 what="8000 acknowledged records")
    peak = d.rss_peak_kib()
    print(f"\nbackpressure test: {len(producers.acked)} records acknowledged, "
          f"{producers.slow_downs} Slow down. entries retried, peak RSS {peak / 1024:.1f} MiB")
    assert producers.slow_downs > 0, "the 2 MiB spool must have refused some records"
    assert d.metric("hosepipe_throttled_records_total", "bp") > 0
    assert d.stop() == 0
    got = set(delivered_ids(s3, bucket, "b/"))
    assert producers.acked <= got
    assert peak < 512 * 1024, "memory stays bounded by the budget"


def test_quotas_throttle_put_record_and_put_record_batch(s3, bucket, daemon_factory):
    d = daemon_factory("[quotas.quoted]\nrecords_per_second = 5\n" +
                       stream_toml("quoted", bucket, "q/"))
    fh = d.firehose()
    refused = 0
    for i in range(30):
        try:
            fh.put_record(DeliveryStreamName="quoted", Record={"Data": f"q{i}\n".encode()})
        except fh.exceptions.ServiceUnavailableException:
            refused += 1
    assert refused > 0
    resp = fh.put_record_batch(DeliveryStreamName="quoted",
                               Records=[{"Data": b"x\n"}] * 20)
    assert resp["FailedPutCount"] == 20
    assert d.metric("hosepipe_throttled_records_total", "quoted") >= refused + 20


def test_a_full_spool_disk_is_backpressure_not_corruption(s3, bucket, daemon_factory, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        d = daemon_factory(stream_toml("full", bucket, "f/", interval=900, size=128),
                           data_dir=mnt / "data")
        fh = d.firehose()
        acked, refused = [], 0
        for b in range(12):
            batch = [f"full-{b}-{i}" for i in range(500)]
            resp = fh.put_record_batch(DeliveryStreamName="full", Records=[
                {"Data": r.ljust(999, ".").encode() + b"\n"} for r in batch])
            for rid, e in zip(batch, resp["RequestResponses"]):
                if "RecordId" in e:
                    acked.append(rid)
                else:
                    assert e["ErrorMessage"] == "Slow down."
                    refused += 1
        assert refused > 0 and acked, (len(acked), refused)
        assert requests.get(f"{d.url}/health", timeout=5).status_code == 200
        assert d.stop() == 0          # flushes what was acknowledged
        got = delivered_ids(s3, bucket, "f/")
        assert sorted(got) == sorted(acked)
        d.start()                     # the spool it left is consistent
        assert d.metric("hosepipe_spool_corrupt_segments_total", "full") == 0
        assert d.stop() == 0
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_status_prints_a_table_per_stream(s3, bucket, daemon_factory):
    d = daemon_factory(stream_toml("shown", bucket, "s/", interval=900, size=128))
    d.firehose().put_record_batch(DeliveryStreamName="shown", Records=[{"Data": b"abc\n"}] * 3)
    out = subprocess.run([BIN, "status", "--endpoint", d.url], capture_output=True, text=True,
                         check=True).stdout
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["STREAM", "STATE", "DESTINATION", "BUFFERED"]
    row = next(l for l in lines if l.startswith("shown"))
    assert "ACTIVE" in row and f"s3://{bucket}" in row and "12 B" in row and " 3 " in row, out


def test_a_deleted_streams_spool_is_not_inherited_by_a_new_stream(s3, bucket, daemon_factory):
    d = daemon_factory()
    fh = d.firehose()
    cfg = lambda b: {"RoleARN": "r", "BucketARN": f"arn:aws:s3:::{b}", "Prefix": "n/",  # noqa: E731
                     "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1}}
    fh.create_delivery_stream(DeliveryStreamName="reborn",
                              ExtendedS3DestinationConfiguration=cfg("no-such-bucket-here"))
    fh.put_record_batch(DeliveryStreamName="reborn", Records=[{"Data": b"old\n"}] * 10)
    fh.delete_delivery_stream(DeliveryStreamName="reborn")  # its records can never go out
    d.crash()
    d.start()
    wait_for(lambda: "set aside" in d.log(), timeout=10, what="the set-aside log line")
    fh = d.firehose()
    fh.create_delivery_stream(DeliveryStreamName="reborn", ExtendedS3DestinationConfiguration=cfg(bucket))
    fh.put_record_batch(DeliveryStreamName="reborn", Records=[{"Data": b"new\n"}] * 3)
    assert d.stop() == 0
    assert delivered_ids(s3, bucket, "n/") == ["new"] * 3
    assert list((d.data_dir / "spool" / "orphaned").iterdir())
