"""A fleet: three hosepipe nodes sharing their streams through a three-server NATS JetStream
cluster (R=3) on loopback, delivering to SeaweedFS, driven by boto3 producers spread over the
nodes. A node killed under load, a NATS server killed under load, JetStream stopped entirely:
every acknowledged record is delivered (duplicates are counted and reported); control changes
made on one node reach every node."""
import concurrent.futures
import random
import re
import time

import botocore.exceptions
import pytest
import requests

from conftest import free_port, wait_for
from nats_cluster import NatsCluster
from test_durability import Producers, delivered_ids, stream_toml

DESTINATION_ID = "destinationId-000000000001"


@pytest.fixture
def nats(tmp_path):
    cluster = NatsCluster(tmp_path / "nats")
    yield cluster
    cluster.stop_all()


def log_toml(nats, node, prefix, extra=""):
    servers = ", ".join(f'"{u}"' for u in nats.urls)
    return f"""
[log]
backend = "jetstream"
servers = [{servers}]
node = "{node}"
prefix = "{prefix}"
ack_wait_seconds = 5
publish_timeout_ms = 2000
{extra}
"""


def start_fleet(daemon_factory, nats, streams="", size=3, log_extra=""):
    prefix = f"t{random.randint(0, 10**9)}"
    return [daemon_factory(log_toml(nats, f"node-{i}", prefix, log_extra) + streams,
                           listen=f"127.0.0.1:{free_port()}")
            for i in range(size)]


class FleetProducers(Producers):
    """Producers that send each request to a node picked at random (a dead node's requests
    fail and are not acknowledged)."""

    def __init__(self, nodes, stream, **kw):
        super().__init__(nodes[0], stream, **kw)
        self.nodes = nodes

    def client(self):
        self.daemon = random.choice(self.nodes)
        return super().client()


def metric_sum(node, name, stream):
    try:
        return node.metric(name, stream)
    except Exception:  # noqa: BLE001 - a dead node exports nothing
        return 0.0


def settle(s3, bucket, prefix, acked, timeout=90):
    """Waits until every acknowledged id is delivered; returns (delivered ids, duplicates)."""
    def all_there():
        got = delivered_ids(s3, bucket, prefix)
        return got if acked <= set(got) else None
    try:
        got = wait_for(all_there, timeout=timeout, interval=1,
                       what="every acknowledged record delivered")
    except AssertionError:
        got = delivered_ids(s3, bucket, prefix)
        missing = acked - set(got)
        raise AssertionError(f"{len(missing)} of {len(acked)} acknowledged records lost, "
                             f"e.g. {sorted(missing)[:5]}") from None
    return got, len(got) - len(set(got))


def test_a_node_killed_under_load_loses_nothing(s3, bucket, nats, daemon_factory):
    nodes = start_fleet(daemon_factory, nats, stream_toml("fleet", bucket, "f/"))
    with FleetProducers(nodes, "fleet", threads=3) as producers:
        time.sleep(3)
        nodes[1].crash()
        time.sleep(3)
    acked = producers.acked
    got, duplicates = settle(s3, bucket, "f/", acked)
    by_node = [metric_sum(n, "hosepipe_delivery_to_s3_records_total", "fleet") for n in nodes]
    redelivered = sum(metric_sum(n, "hosepipe_jetstream_redelivered_records_total", "fleet")
                      for n in nodes)
    print(f"\nfleet, node killed: {len(acked)} acknowledged, {len(set(got))} delivered, "
          f"{duplicates} duplicates, {redelivered:.0f} redelivered to the survivors, "
          f"delivered by node: {by_node}, {producers.errors} requests failed")
    assert len(acked) > 1000
    assert by_node[0] > 0 and by_node[2] > 0, "both surviving nodes deliver"
    for n in (nodes[0], nodes[2]):
        assert n.metric("hosepipe_jetstream_publish_seconds_count", "fleet") > 0
        # The gauges follow JetStream's state every 2 s.
        wait_for(lambda n=n: n.metric("hosepipe_jetstream_held_records", "fleet") == 0,
                 timeout=10, what="nothing held once all is delivered")

        def settled(n=n):
            stream = requests.get(f"{n.url}/status", timeout=5).json()["streams"][0]
            return stream["held_records"] == 0 and stream["pending_messages"] == 0
        wait_for(settled, timeout=10, what="/status: nothing held or waiting")
    for n in (nodes[0], nodes[2]):
        assert n.stop() == 0


def test_a_nats_server_killed_under_load_loses_nothing(s3, bucket, nats, daemon_factory):
    nodes = start_fleet(daemon_factory, nats, stream_toml("nl", bucket, "n/"))
    with FleetProducers(nodes, "nl", threads=3) as producers:
        time.sleep(3)
        nats.kill(0)
        time.sleep(4)
        nats.start(0)
        time.sleep(2)
    got, duplicates = settle(s3, bucket, "n/", producers.acked)
    print(f"\nfleet, NATS server killed: {len(producers.acked)} acknowledged, "
          f"{len(set(got))} delivered, {duplicates} duplicates, "
          f"{producers.slow_downs} Slow down., {producers.errors} requests failed")
    assert len(producers.acked) > 1000
    for n in nodes:
        assert n.stop() == 0


def test_jetstream_stopped_refuses_puts_and_the_fleet_resumes(s3, bucket, nats, daemon_factory):
    nodes = start_fleet(daemon_factory, nats, stream_toml("js", bucket, "j/"), size=2)
    fh = nodes[0].firehose()
    before = [{"Data": f"before-{i}\n".encode()} for i in range(50)]
    assert fh.put_record_batch(DeliveryStreamName="js", Records=before)["FailedPutCount"] == 0
    nats.stop_all()
    during = [{"Data": f"during-{i}\n".encode()} for i in range(20)]
    for node in nodes:
        resp = node.firehose().put_record_batch(DeliveryStreamName="js", Records=during)
        assert resp["FailedPutCount"] == 20
        assert {e["ErrorCode"] for e in resp["RequestResponses"]} == {"ServiceUnavailableException"}
        assert {e["ErrorMessage"] for e in resp["RequestResponses"]} == {"Slow down."}
        with pytest.raises(botocore.exceptions.ClientError) as e:
            node.firehose().put_record(DeliveryStreamName="js", Record={"Data": b"one\n"})
        assert e.value.response["Error"]["Code"] == "ServiceUnavailableException"
    nats.start_all()

    def accepted_again():
        resp = fh.put_record_batch(DeliveryStreamName="js",
                                   Records=[{"Data": b"after-0\n"}])
        return resp["FailedPutCount"] == 0
    wait_for(accepted_again, timeout=60, interval=0.5, what="puts accepted after JetStream is back")
    after = [{"Data": f"after-{i}\n".encode()} for i in range(1, 50)]
    assert nodes[1].firehose().put_record_batch(DeliveryStreamName="js",
                                                Records=after)["FailedPutCount"] == 0
    acked = {f"before-{i}" for i in range(50)} | {f"after-{i}" for i in range(50)}
    got, duplicates = settle(s3, bucket, "j/", acked)
    # What was refused may still be stored (a publish JetStream took while its answer was
    # lost): a duplicate for the producer's retry, never a loss.
    print(f"\nfleet, JetStream stopped: {len(set(got))} delivered, {duplicates} duplicates, "
          f"{len([g for g in got if g.startswith('during')])} refused records stored anyway")
    for n in nodes:
        assert n.stop() == 0


def create(fh, name, bucket, prefix):
    return fh.create_delivery_stream(
        DeliveryStreamName=name,
        ExtendedS3DestinationConfiguration={
            "RoleARN": "arn:aws:iam::000000000000:role/firehose",
            "BucketARN": f"arn:aws:s3:::{bucket}", "Prefix": prefix,
            "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1}})


def error_code(call):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    return e.value.response["Error"]["Code"]


def created_then_fed(s3, bucket, creator, nodes, feeder, prefix, tag):
    """Creates stream "cp" on `creator`, waits until every node has it, puts 100 records on
    `feeder` and waits until they are all delivered under `prefix`."""
    wait_for(lambda: create(creator.firehose(), "cp", bucket, prefix), timeout=30,
             what="the stream created")
    for n in nodes:
        wait_for(lambda n=n: n.firehose().describe_delivery_stream(DeliveryStreamName="cp"),
                 timeout=20, what="the new stream on every node")
    recs = [{"Data": f"{tag}-{i}\n".encode()} for i in range(100)]
    assert feeder.firehose().put_record_batch(DeliveryStreamName="cp", Records=recs)["FailedPutCount"] == 0
    settle(s3, bucket, prefix, {f"{tag}-{i}" for i in range(100)})


def test_control_changes_on_one_node_reach_every_node(s3, bucket, nats, daemon_factory):
    n1, n2, n3 = start_fleet(daemon_factory, nats)
    # Created on node 1, fed on node 3, delivered by any node.
    created_then_fed(s3, bucket, n1, (n1, n2, n3), n3, "v1/", "one")
    # The same name again, on another node: it exists in the fleet.
    assert error_code(lambda: create(n2.firehose(), "cp", bucket, "x/")) == "ResourceInUseException"

    # Updated on node 2: every node runs version 2 with the new prefix.
    n2.firehose().update_destination(
        DeliveryStreamName="cp", CurrentDeliveryStreamVersionId="1", DestinationId=DESTINATION_ID,
        ExtendedS3DestinationUpdate={"Prefix": "v2/"})
    for n in (n1, n2, n3):
        def updated(n=n):
            d = n.firehose().describe_delivery_stream(DeliveryStreamName="cp")
            desc = d["DeliveryStreamDescription"]
            prefix = desc["Destinations"][0]["ExtendedS3DestinationDescription"]["Prefix"]
            return desc["VersionId"] == "2" and prefix == "v2/"
        wait_for(updated, timeout=20, what="version 2 on every node")
    # A stale VersionId, on node 3.
    assert error_code(lambda: n3.firehose().update_destination(
        DeliveryStreamName="cp", CurrentDeliveryStreamVersionId="1",
        DestinationId=DESTINATION_ID,
        ExtendedS3DestinationUpdate={"Prefix": "v3/"})) == "ConcurrentModificationException"
    recs = [{"Data": f"two-{i}\n".encode()} for i in range(100)]
    for n in (n1, n2, n3):
        assert n.firehose().put_record_batch(DeliveryStreamName="cp", Records=recs)["FailedPutCount"] == 0
    got, _ = settle(s3, bucket, "v2/", {f"two-{i}" for i in range(100)})
    assert len(got) == 300

    # Tags set on node 3 are listed on node 1.
    n3.firehose().tag_delivery_stream(DeliveryStreamName="cp", Tags=[{"Key": "team", "Value": "a"}])
    wait_for(lambda: n1.firehose().list_tags_for_delivery_stream(
        DeliveryStreamName="cp")["Tags"] == [{"Key": "team", "Value": "a"}],
        timeout=20, what="the tag on node 1")

    # Encryption at rest started on node 2 is reported by node 3.
    n2.firehose().start_delivery_stream_encryption(
        DeliveryStreamName="cp",
        DeliveryStreamEncryptionConfigurationInput={"KeyType": "AWS_OWNED_CMK"})

    def encrypted():
        d = n3.firehose().describe_delivery_stream(DeliveryStreamName="cp")
        return d["DeliveryStreamDescription"]["DeliveryStreamEncryptionConfiguration"]["Status"] == "ENABLED"
    wait_for(encrypted, timeout=20, what="encryption ENABLED on node 3")

    # Deleted on node 1: every node stops it.
    n1.firehose().delete_delivery_stream(DeliveryStreamName="cp")
    for n in (n1, n2, n3):
        wait_for(lambda n=n: error_code(lambda: n.firehose().describe_delivery_stream(
            DeliveryStreamName="cp")) == "ResourceNotFoundException",
            timeout=20, what="the stream gone from every node")
        assert error_code(lambda n=n: n.firehose().put_record(
            DeliveryStreamName="cp", Record={"Data": b"x\n"})) == "ResourceNotFoundException"

    # Created again under the same name (while the nodes may still drain the old one): a
    # stream of its own.
    created_then_fed(s3, bucket, n2, (n1, n2, n3), n3, "v4/", "four")

    # Each node reports itself and its view of the log.
    for i, n in enumerate((n1, n2, n3)):
        text = n.metrics()
        assert re.search(rf'hosepipe_node_info\{{.*node="node-{i}".*\}} 1', text), text[:500]
        status = requests.get(f"{n.url}/status", timeout=5).json()
        assert (status["node"], status["log"]) == (f"node-{i}", "jetstream")
    for n in (n1, n2, n3):
        assert n.stop() == 0


def test_a_node_started_later_runs_the_fleets_streams(s3, bucket, nats, daemon_factory):
    n1, = start_fleet(daemon_factory, nats, size=1)
    create(n1.firehose(), "late", bucket, "l/")
    prefix = re.search(r'prefix = "(\w+)"', n1.config.read_text()).group(1)
    n2 = daemon_factory(log_toml(nats, "node-late", prefix), listen=f"127.0.0.1:{free_port()}")
    desc = n2.firehose().describe_delivery_stream(DeliveryStreamName="late")
    assert desc["DeliveryStreamDescription"]["DeliveryStreamStatus"] == "ACTIVE"
    recs = [{"Data": f"late-{i}\n".encode()} for i in range(50)]
    assert n2.firehose().put_record_batch(DeliveryStreamName="late", Records=recs)["FailedPutCount"] == 0
    settle(s3, bucket, "l/", {f"late-{i}" for i in range(50)})
    for n in (n1, n2):
        assert n.stop() == 0


def test_a_full_jetstream_stream_refuses_puts(s3, nats, daemon_factory):
    """`max_stream_mb` caps a stream in JetStream: with the destination down, the backlog fills
    it and puts are refused with "Slow down."; once the bucket exists, everything acknowledged
    is delivered."""
    bucket = f"full-{random.randint(0, 10**9)}"
    node, = start_fleet(daemon_factory, nats, stream_toml("full", bucket, "u/"), size=1,
                        log_extra="max_stream_mb = 1")
    fh = node.firehose()
    acked, refused = set(), 0
    for b in range(80):
        recs = [f"r{b}-{i}".ljust(199, ".") + "\n" for i in range(100)]
        resp = fh.put_record_batch(DeliveryStreamName="full",
                                   Records=[{"Data": r.encode()} for r in recs])
        for r, entry in zip(recs, resp["RequestResponses"]):
            if "RecordId" in entry:
                acked.add(r.split(".")[0])
            else:
                assert entry["ErrorMessage"] == "Slow down."
                refused += 1
    assert refused > 0, "1.6 MB into a 1 MiB stream whose destination is down"
    s3.create_bucket(bucket)
    got, duplicates = settle(s3, bucket, "u/", acked)
    print(f"\nfleet, stream full: {len(acked)} acknowledged, {refused} refused, "
          f"{len(set(got))} delivered, {duplicates} duplicates")
    assert node.stop() == 0


def test_concurrent_creates_across_nodes(s3, bucket, nats, daemon_factory):
    """Creates at once: different names on every node all succeed; one name from every node
    at once succeeds once, the others are ResourceInUseException."""
    nodes = start_fleet(daemon_factory, nats)

    def attempt(node, name):
        try:
            create(node.firehose(), name, bucket, f"{name}/")
            return "ok"
        except botocore.exceptions.ClientError as e:
            return e.response["Error"]["Code"]
    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        many = list(pool.map(lambda i: attempt(nodes[i % 3], f"s{i}"), range(6)))
        same = list(pool.map(lambda n: attempt(n, "one"), nodes))
    assert many == ["ok"] * 6
    assert sorted(same) == ["ResourceInUseException"] * 2 + ["ok"]
    every = {f"s{i}" for i in range(6)} | {"one"}
    for n in nodes:
        # A node lists at once what it created; the others' creations follow through its watch.
        wait_for(lambda n=n: set(n.firehose().list_delivery_streams(
            Limit=100)["DeliveryStreamNames"]) == every, timeout=20, what="every stream listed")
        assert n.stop() == 0
