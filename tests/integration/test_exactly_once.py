"""Exactly-once objects: `kill -9` again and again under load from boto3, with an S3 outage
(SeaweedFS stopped and started) in the middle, on a GZIP stream, a dynamically partitioned stream
and a Parquet stream. Every acknowledged record must be in exactly one object: counted by the
record id inside each record, across the records, the partitions, the Parquet rows and the
error output."""
import base64
import gzip
import io
import json
import os
import random
import time

import pyarrow.parquet as pq

from conftest import S3Server, free_port
from test_durability import Producers

CYCLES = int(os.environ.get("HOSEPIPE_EXACTLY_ONCE_CYCLES", "20"))

STREAMS = """
[catalog.eo.rows]
columns = [{ name = "id", type = "string" }, { name = "k", type = "int" }]

[streams.eo-gzip.extended_s3_destination_configuration]
bucket_arn = "arn:aws:s3:::BUCKET"
prefix = "gzip/"
error_output_prefix = "errors-gzip/!{firehose:error-output-type}/"
compression_format = "GZIP"
buffering_hints = { size_in_mbs = 1, interval_in_seconds = 1 }

[streams.eo-part.extended_s3_destination_configuration]
bucket_arn = "arn:aws:s3:::BUCKET"
prefix = "part/k=!{partitionKeyFromQuery:k}/"
error_output_prefix = "errors-part/!{firehose:error-output-type}/"
buffering_hints = { size_in_mbs = 1, interval_in_seconds = 1 }
dynamic_partitioning_configuration = { enabled = true }
processing_configuration = { enabled = true, processors = [
  { type = "MetadataExtraction", parameters = [
    { parameter_name = "MetadataExtractionQuery", parameter_value = "{k: .k}" },
    { parameter_name = "JsonParsingEngine", parameter_value = "JQ-1.6" } ] },
  { type = "AppendDelimiterToRecord" } ] }

[streams.eo-parquet.extended_s3_destination_configuration]
bucket_arn = "arn:aws:s3:::BUCKET"
prefix = "parquet/"
error_output_prefix = "errors-parquet/!{firehose:error-output-type}/"
buffering_hints = { size_in_mbs = 64, interval_in_seconds = 1 }

[streams.eo-parquet.extended_s3_destination_configuration.data_format_conversion_configuration]
enabled = true
schema_configuration = { database_name = "eo", table_name = "rows" }
input_format_configuration = { deserializer = { open_x_json_ser_de = {} } }
output_format_configuration = { serializer = { parquet_ser_de = { compression = "SNAPPY" } } }
"""


class JsonProducers(Producers):
    """Producers whose records are JSON objects carrying their id and a partition key."""

    def record(self, rid):
        return (json.dumps({"id": rid, "k": sum(map(ord, rid)) % 4}) + "\n").encode()


def ids_in(server, bucket, prefix, read):
    """The record ids in every object under prefix, and in the error output beside it."""
    got = []
    for _, body, _ in server.objects(bucket, f"{prefix}/"):
        got.extend(read(body))
    for _, body, _ in server.objects(bucket, f"errors-{prefix}/"):
        for line in body.splitlines():
            got.append(json.loads(base64.b64decode(json.loads(line)["rawData"]))["id"])
    return got


def json_lines(body):
    return [json.loads(line)["id"] for line in body.splitlines() if line.strip()]


READERS = {
    "eo-gzip": ("gzip", lambda body: json_lines(gzip.decompress(body))),
    "eo-part": ("part", json_lines),
    "eo-parquet": ("parquet",
                   lambda body: pq.read_table(io.BytesIO(body)).column("id").to_pylist()),
}


def test_kill_9_cycles_and_an_outage_leave_every_record_in_exactly_one_object(
        tmp_path, daemon_factory):
    server = S3Server(tmp_path / "s3")
    try:
        bucket = server.create_bucket("exactly-once")
        d = daemon_factory(STREAMS.replace("BUCKET", bucket),
                           listen=f"127.0.0.1:{free_port()}",
                           extra_env={"AWS_ENDPOINT_URL_S3": server.url})
        producers = {name: JsonProducers(d, name, threads=2) for name in READERS}
        logs = []
        for p in producers.values():
            p.__enter__()
        try:
            for cycle in range(CYCLES):
                if cycle == CYCLES // 2:
                    server.stop()           # the outage: objects pile up being retried ...
                time.sleep(random.uniform(0.5, 2.0))
                logs.append(d.log())
                d.crash()                   # ... and the daemon dies, again and again
                d.start()
                if cycle == CYCLES // 2 + 2:
                    server.start()
            time.sleep(2)
        finally:
            for p in producers.values():
                p.__exit__(None, None, None)
        logs.append(d.log())
        assert d.stop() == 0, d.log()
        logs.append(d.log())
        recovered = {outcome: sum(log.count(f'outcome="{outcome}"') for log in logs)
                     for outcome in ("done", "found", "rewrite")}
        for name, (prefix, read) in READERS.items():
            acked = producers[name].acked
            got = ids_in(server, bucket, prefix, read)
            lost = acked - set(got)
            duplicated = len(got) - len(set(got))
            print(f"\n{name}: {CYCLES} kill -9 cycles, {len(acked)} acknowledged, "
                  f"{len(set(got))} distinct delivered, {duplicated} duplicated, {len(lost)} lost")
            assert acked, f"{name}: nothing acknowledged"
            assert not lost, f"{name}: {len(lost)} acknowledged records lost, e.g. {sorted(lost)[:5]}"
            assert duplicated == 0, f"{name}: {duplicated} records in two objects"
        print(f"objects recovered from the journal over the restarts: {recovered}")
        assert sum(recovered.values()) > 0, "no restart found a journaled object"
    finally:
        server.stop()
