"""The embedded default: no S3 anywhere, objects land in <data_dir>/buckets/<bucket>/."""
import gzip
import re

from conftest import wait_for
from test_s3_delivery import KEY_RE, records, put_all


def test_local_disk_is_the_default_without_s3_settings(daemon_factory):
    d = daemon_factory("""
[streams.clicks.extended_s3_destination_configuration]
bucket_arn = "arn:aws:s3:::quickstart"
prefix = "clicks/"
compression_format = "GZIP"
buffering_hints = { size_in_mbs = 1, interval_in_seconds = 1 }
""", auth=False)
    d.stop()
    d.env = {k: v for k, v in d.env.items() if not k.startswith("AWS_")}
    d.start()
    wait_for(lambda: "objects go to local disk" in d.log(), what="the object store log line")
    fh = d.firehose()
    sent = records(700)
    put_all(fh, "clicks", sent)
    root = d.data_dir / "buckets" / "quickstart"

    def files():
        found = sorted(p for p in root.rglob("*") if p.is_file())
        total = sum(len(gzip.decompress(p.read_bytes())) for p in found)
        return found if total >= sum(map(len, sent)) else None

    found = wait_for(files, timeout=30, what="objects on local disk")
    got = b"".join(gzip.decompress(p.read_bytes()) for p in found)
    assert sorted(got.splitlines(keepends=True)) == sorted(sent)
    for p in found:
        key = p.relative_to(root).as_posix()
        assert re.match(KEY_RE.format(prefix="clicks/", stream="clicks", version=1, ext=r"\.gz"), key), key
    assert d.stop() == 0
