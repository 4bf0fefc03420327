"""The spool is the buffer: a destination outage backs up on disk (bounded by the spool cap, not
by memory), a restart reads the backlog instead of loading it, memory stays within the budget
while it drains, and producers that re-send at once are paced instead of spinning."""
import gzip
import re
import threading
import time
from pathlib import Path

import requests

from conftest import S3Server, free_port, wait_for
from test_durability import Producers, delivered_ids, stream_toml

RECORD = 1000          # bytes per record
BATCH = 500            # records per PutRecordBatch


def rss_kib(d):
    status = Path(f"/proc/{d.proc.pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))


def fill_until_refused(fh, stream, limit_batches=400):
    """Pushes 500 x 1000-byte batches until one is refused; returns the acknowledged ids."""
    acked = []
    for b in range(limit_batches):
        ids = [f"bk-{b}-{i}" for i in range(BATCH)]
        resp = fh.put_record_batch(DeliveryStreamName=stream, Records=[
            {"Data": (r.ljust(RECORD - 1, ".") + "\n").encode()} for r in ids])
        for rid, entry in zip(ids, resp["RequestResponses"]):
            if "RecordId" in entry:
                acked.append(rid)
            else:
                assert entry["ErrorMessage"] == "Slow down."
        if resp["FailedPutCount"]:
            return acked
    raise AssertionError(f"never refused after {limit_batches} batches")


class RssSampler:
    """Samples a daemon's VmRSS every 50 ms in the background."""

    def __init__(self, d):
        self.d, self.peak, self.stop = d, 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, rss_kib(self.d))
            except (OSError, AttributeError):
                pass
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_an_outage_backs_up_on_disk_past_memory_and_drains_after_restarts(tmp_path,
                                                                          daemon_factory):
    spool_mb, memory_mb = 48, 8
    server = S3Server(tmp_path / "s3")
    try:
        bucket = server.create_bucket("backlog")
        d = daemon_factory(
            f"[spool]\nmax_mb = {spool_mb}\nsegment_mb = 4\n[memory]\nmax_mb = {memory_mb}\n"
            + stream_toml("bk", bucket, "k/", interval=1, size=1, fmt="GZIP"),
            listen=f"127.0.0.1:{free_port()}",
            extra_env={"AWS_ENDPOINT_URL_S3": server.url})
        server.stop()
        fh = d.firehose()
        acked = fill_until_refused(fh, "bk")
        # The backlog is bounded by the spool on disk, not by the 8 MiB of memory.
        assert len(acked) * RECORD > 0.85 * spool_mb * 2**20, len(acked)
        assert d.metric("hosepipe_spool_backlog_records", "bk") >= len(acked)
        assert d.metric("hosepipe_spool_unread_records", "bk") > 0, "most of it waits on disk"
        status = requests.get(f"{d.url}/status", timeout=5).json()
        assert status["memory_used_bytes"] <= status["memory_budget_bytes"] * 2
        # A crash with the backlog on disk; the restart reads it, it does not load it.
        d.crash()
        d.start()
        assert requests.get(f"{d.url}/health", timeout=5).status_code == 200
        wait_for(lambda: "undelivered records in the spool; reading them back" in d.log(),
                 what="the replay log line")
        with RssSampler(d) as rss:
            time.sleep(1)
            server.start()
            # kill -9 in the middle of the drain, then drain to the end.
            wait_for(lambda: len(server.objects(bucket, "k/")) >= 5, timeout=120,
                     what="the drain under way")
        d.crash()
        d.start()
        with RssSampler(d) as rss2:
            wait_for(lambda: d.metric("hosepipe_spool_backlog_records", "bk") == 0,
                     timeout=300, interval=0.5, what="the backlog drained")
        peak_mib = max(rss.peak, rss2.peak) / 1024
        print(f"\nbacklog test: {len(acked)} records ({len(acked) * RECORD / 2**20:.1f} MiB) "
              f"accepted during the outage with {memory_mb} MiB of memory; "
              f"RSS while draining peaked at {peak_mib:.1f} MiB")
        # The budget plus the binary's own footprint (a debug build here).
        assert peak_mib < memory_mb + 96, peak_mib
        assert d.stop() == 0
        got = [line.decode().rstrip(".")
               for _, body, _ in server.objects(bucket, "k/")
               for line in gzip.decompress(body).splitlines() if line]
        missing = set(acked) - set(got)
        assert not missing, f"{len(missing)} acknowledged records lost"
    finally:
        server.stop()


def test_producers_that_resend_at_once_are_paced_not_spun(s3, bucket, daemon_factory):
    # A 1 MiB budget takes one ~690 KB request at a time.
    base = "[memory]\nmax_mb = 1\n" + stream_toml("pace", bucket, "p/", interval=1, size=1)
    # Without a wait, a request that finds no room is refused before its body is decoded.
    d = daemon_factory("[admission]\nwait_ms = 0\n" + base)
    with Producers(d, "pace", threads=4, batch=BATCH, size=RECORD, retry_failed=True) as p:
        wait_for(lambda: p.slow_downs > 0 and len(p.acked) > 5000, timeout=120,
                 what="refusals and acknowledgements")
    refused = re.search(r'^hosepipe_refused_requests_total\{reason="memory"\} (\S+)$',
                        d.metrics(), re.M)
    assert refused and float(refused.group(1)) > 0
    assert d.stop() == 0
    assert p.acked <= set(delivered_ids(s3, bucket, "p/"))
    # With a wait, the same clients queue for capacity instead of being refused.
    d = daemon_factory("[admission]\nwait_ms = 3000\n" + base.replace("p/", "q/"))
    with Producers(d, "pace", threads=4, batch=BATCH, size=RECORD, retry_failed=True) as p:
        wait_for(lambda: len(p.acked) > 5000, timeout=120, what="acknowledgements")
    waited = re.search(r"^hosepipe_request_capacity_wait_seconds_count (\S+)$", d.metrics(),
                       re.M)
    assert waited and float(waited.group(1)) > 0, "requests waited for capacity"
    assert p.slow_downs == 0, "nobody was refused while capacity came within the wait"
    assert d.stop() == 0
    assert p.acked <= set(delivered_ids(s3, bucket, "q/"))
