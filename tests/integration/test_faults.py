"""The fault matrix: a sick S3, a bad network, full and read-only disks, a stopped daemon and
kill -9 mid-upload. Faults are put between the daemon and SeaweedFS by `FaultProxy`
(fault_proxy.py); every acknowledged record must be delivered, and — the object journal being
on — in exactly one object."""
import collections
import signal
import subprocess
import time

import pytest

from conftest import BIN, wait_for
from fault_proxy import Fault, FaultProxy
from test_durability import Producers, delivered_ids, stream_toml


@pytest.fixture
def proxy(s3):
    p = FaultProxy(s3.url)
    yield p
    p.stop()


def through(proxy):
    """A daemon's environment sending its S3 requests to the proxy."""
    return {"AWS_ENDPOINT_URL_S3": proxy.url}


def exactly_once(s3, bucket, prefix, acked):
    got = delivered_ids(s3, bucket, prefix)
    dupes = [k for k, n in collections.Counter(got).items() if n > 1]
    assert not dupes, f"{len(dupes)} records delivered twice, e.g. {dupes[:3]}"
    missing = set(acked) - set(got)
    assert not missing, f"{len(missing)} acknowledged records missing, e.g. {list(missing)[:3]}"


def put_ids(d, stream, ids, size=40):
    fh = d.firehose()
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        resp = fh.put_record_batch(DeliveryStreamName=stream, Records=[
            {"Data": (r.ljust(size - 1, ".") + "\n").encode()} for r in chunk])
        assert resp["FailedPutCount"] == 0
    return ids


def test_s3_errors_500_503_and_clock_skew_are_retried_until_every_record_lands_once(
        s3, bucket, daemon_factory, proxy):
    proxy.add(Fault("status", match="PUT", status=500, code="InternalError", times=4))
    proxy.add(Fault("status", match="PUT", status=503, code="SlowDown", times=4))
    proxy.add(Fault("status", match="PUT", status=403, code="RequestTimeTooSkewed", times=3))
    d = daemon_factory(stream_toml("sick", bucket, "sick/"), extra_env=through(proxy))
    ids = put_ids(d, "sick", [f"sick-{i}" for i in range(300)])
    wait_for(lambda: len(delivered_ids(s3, bucket, "sick/")) >= len(ids), timeout=120,
             what="every record delivered")
    exactly_once(s3, bucket, "sick/", ids)
    kinds = collections.Counter(line.split()[0] for _, line in proxy.injected)
    assert kinds["PUT"] == 11, proxy.injected
    # The skew was named as a cause retrying alone cannot fix, and cleared once S3 took the
    # object.
    assert "S3 delivery is blocked (clock_skewed)" in d.log()
    wait_for(lambda: "S3 delivery is no longer blocked" in d.log(), what="the skew cleared")


def test_a_response_that_never_comes_times_out_and_is_retried(s3, bucket, daemon_factory,
                                                              proxy):
    # The first PUT gets no byte back for 60 s; the client gives up on it (30 s) and tries again.
    proxy.add(Fault("hang", match="PUT", seconds=60))
    d = daemon_factory(stream_toml("hung", bucket, "hung/"), extra_env=through(proxy))
    ids = put_ids(d, "hung", [f"hung-{i}" for i in range(50)])
    wait_for(lambda: len(delivered_ids(s3, bucket, "hung/")) >= len(ids), timeout=120,
             what="delivered after the hang")
    exactly_once(s3, bucket, "hung/", ids)
    assert proxy.seen["PUT"] >= 2


MULTIPART = """
[s3]
multipart_threshold_mb = 5
part_size_mb = 5
"""


def test_connection_reset_mid_upload_and_mid_multipart_part(s3, bucket, daemon_factory, proxy):
    # A single PUT reset half-way through its body, then part 2 of a multipart upload.
    proxy.add(Fault("reset", match="PUT /" + bucket + "/small/"))
    proxy.add(Fault("reset", match="partNumber=2"))
    d = daemon_factory(MULTIPART + stream_toml("small", bucket, "small/")
                       + stream_toml("big", bucket, "big/", interval=900, size=12),
                       extra_env=through(proxy))
    small = put_ids(d, "small", [f"small-{i}" for i in range(100)])
    # ~12 MiB of 1 KiB records: one object of three parts.
    big = put_ids(d, "big", [f"big-{i}" for i in range(12 * 1024)], size=1024)
    wait_for(lambda: len(delivered_ids(s3, bucket, "small/")) >= len(small), timeout=120,
             what="the small object after its reset")
    wait_for(lambda: len(delivered_ids(s3, bucket, "big/")) >= len(big), timeout=180,
             what="the multipart object after its part's reset")
    exactly_once(s3, bucket, "small/", small)
    exactly_once(s3, bucket, "big/", big)
    assert {kind for kind, _ in proxy.injected} == {"reset"} and len(proxy.injected) == 2, \
        proxy.injected


def test_uploads_at_1_kib_per_second(s3, bucket, daemon_factory, proxy):
    proxy.slow_bps = 1024
    d = daemon_factory(stream_toml("slow", bucket, "slow/", interval=2),
                       extra_env=through(proxy))
    ids = put_ids(d, "slow", [f"slow-{i}" for i in range(100)])  # 4 KB: a few seconds a try
    wait_for(lambda: len(delivered_ids(s3, bucket, "slow/")) >= len(ids), timeout=120,
             what="delivered at 1 KiB/s")
    exactly_once(s3, bucket, "slow/", ids)


def test_dns_that_does_not_resolve_keeps_the_records_until_s3_is_found(s3, bucket,
                                                                        daemon_factory):
    port = s3.url.rsplit(":", 1)[1]
    d = daemon_factory(stream_toml("nodns", bucket, "nodns/"),
                       extra_env={"AWS_ENDPOINT_URL_S3": f"http://s3.hosepipe.invalid:{port}"})
    ids = put_ids(d, "nodns", [f"nodns-{i}" for i in range(80)])
    wait_for(lambda: d.log().count("S3 write failed; will retry") >= 2, timeout=60,
             what="failed attempts")
    assert "s3.hosepipe.invalid" in d.log()
    # The operator fixes the endpoint and restarts: the spool still has every record.
    d.stop()
    d.env["AWS_ENDPOINT_URL_S3"] = s3.url
    d.start()
    wait_for(lambda: len(delivered_ids(s3, bucket, "nodns/")) >= len(ids), timeout=90,
             what="delivered once S3 resolves")
    exactly_once(s3, bucket, "nodns/", ids)


def small_tmpfs(path, size):
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                       str(path)]).returncode:
        pytest.fail("cannot mount a small tmpfs (the test command runs as root)")
    return path


def test_a_full_local_bucket_disk_holds_the_records_until_there_is_room(daemon_factory,
                                                                         tmp_path):
    buckets = small_tmpfs(tmp_path / "buckets", "2m")
    try:
        d = daemon_factory(f'object_store = "local"\nbuckets_dir = "{buckets}"\n'
                           + stream_toml("local", "disk", "l/", size=1), auth=True)
        ids = put_ids(d, "local", [f"local-{i}" for i in range(5000)], size=1024)  # ~5 MB
        wait_for(lambda: "S3 write failed; will retry" in d.log(), timeout=60,
                 what="writes failing on the full disk")
        assert "No space left on device" in d.log() or "os error 28" in d.log(), d.log()[-3000:]
        subprocess.run(["mount", "-o", "remount,size=64m", str(buckets)], check=True)
        bucket_dir = buckets / "disk"

        def local_ids():
            out = []
            for p in bucket_dir.rglob("*"):
                if p.is_file() and not p.name.startswith("."):
                    out.extend(line.decode().rstrip(".") for line in p.read_bytes().splitlines()
                               if line)
            return out

        wait_for(lambda: len(local_ids()) >= len(ids), timeout=120,
                 what="delivered once there is room")
        got = local_ids()
        assert len(got) == len(set(got)) and set(got) >= set(ids)
    finally:
        subprocess.run(["umount", "-l", str(buckets)])


def test_a_read_only_spool_directory_is_refused_at_start_with_a_clear_error(tmp_path):
    ro = small_tmpfs(tmp_path / "ro", "1m")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        config = tmp_path / "c.toml"
        config.write_text('listen = "127.0.0.1:0"\nobject_store = "local"\n')
        out = subprocess.run([BIN, "serve", "--config", str(config), "--data-dir",
                              str(ro / "data")], capture_output=True, text=True, timeout=60)
        assert out.returncode != 0
        assert str(ro / "data") in out.stderr and "Read-only file system" in out.stderr, \
            out.stderr
    finally:
        subprocess.run(["umount", "-l", str(ro)])


def test_sigstop_and_sigcont_of_the_daemon_under_load(s3, bucket, daemon_factory):
    d = daemon_factory(stream_toml("paused", bucket, "paused/"))
    with Producers(d, "paused", threads=2) as p:
        time.sleep(2)
        d.proc.send_signal(signal.SIGSTOP)
        time.sleep(30)
        d.proc.send_signal(signal.SIGCONT)
        time.sleep(3)
    assert p.acked
    wait_for(lambda: set(delivered_ids(s3, bucket, "paused/")) >= p.acked, timeout=90,
             what="every acknowledged record delivered")
    exactly_once(s3, bucket, "paused/", p.acked)


def test_kill_9_during_a_multipart_upload_writes_the_object_once(s3, bucket, daemon_factory,
                                                                   proxy):
    # Uploads slowed to 2 MiB/s so the kill lands while the parts go up.
    proxy.slow_bps = 2 * 1024 * 1024
    d = daemon_factory(MULTIPART + stream_toml("mp", bucket, "mp/", interval=900, size=12),
                       extra_env=through(proxy))
    ids = put_ids(d, "mp", [f"mp-{i}" for i in range(12 * 1024)], size=1024)
    wait_for(lambda: any("partNumber=" in line for line in proxy_lines(proxy)), timeout=60,
             what="a part on its way")
    d.crash()
    d.start()
    wait_for(lambda: len(delivered_ids(s3, bucket, "mp/")) >= len(ids), timeout=180,
             what="the object written after the restart")
    exactly_once(s3, bucket, "mp/", ids)


def proxy_lines(proxy):
    return [line for _, line in proxy.injected] + list(proxy.started)


def test_a_brief_soak_loses_nothing_and_keeps_its_descriptors(tmp_path):
    """`hosepipe bench soak` for 2 minutes (BENCHMARKS.md has the 60-minute run): load at half
    of the capacity it measures first, a destination outage every 40 s; it exits non-zero on a
    lost record or descriptors that grow after warm-up."""
    out = subprocess.run([BIN, "bench", "soak", "--minutes", "2", "--outage-every", "40",
                          "--outage-seconds", "10", "--sample-every", "5"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    result = [line for line in out.stdout.splitlines() if line.startswith("[result]")]
    assert len(result) == 2 and "(0 failed requests)" in result[0], out.stdout
    assert "yes" in out.stdout, "an outage was sampled"
