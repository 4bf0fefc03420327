"""Runs a Firehose data-transformation Lambda handler, unchanged, as a hosepipe transform.

`hosepipe transform build handler.py` componentizes this module (componentize-py, the
`transformer` world of transforms/wit/transform.wit) with the user's modules beside it. Each
batch becomes the event Firehose would send the Lambda:

    {"invocationId", "deliveryStreamArn", "region",
     "records": [{"recordId", "approximateArrivalTimestamp", "data": <base64>}]}

and the handler's answer, `{"records": [{"recordId", "result", "data", "metadata":
{"partitionKeys", "otfMetadata"}}]}`, goes back to the daemon record by record:

- `Ok` delivers the decoded `data`; `Dropped` delivers nothing; `ProcessingFailed` sends the
  record to the error output.
- Every input's `recordId` must come back exactly once: a record the answer leaves out fails
  (`MissingRecordId`), one it answers twice fails (`DuplicatedRecordId`); ids the batch did not
  hold are ignored.
- A `result` other than the three, `data` that is not base64, or partition keys that are not
  strings fail that record, with the reason.
- An exception from the handler fails the whole batch with its type and message.
- `metadata.partitionKeys` become the record's partition keys; `otfMetadata` keys become
  `otfMetadata.<key>` (Iceberg routing).

The processor parameter `Handler` (`module.function`, Lambda's handler setting) picks the
handler when the component holds several; otherwise the one the build named. The other
parameters are the handler's `os.environ`, as a Lambda's environment variables would be.
"""
import base64
import binascii
import importlib
import os
import time
import uuid

import wit_world
from componentize_py_types import Err
from wit_world.imports.types import PartitionKey, Processed, Source, Status

# A component holds the modules imported while it is built, no others: the standard library a
# handler may import (or that imports more of itself lazily, as `datetime.strptime` does
# `_strptime`) is imported here, so `import` works in the sandbox as on Lambda.
STDLIB = """_strptime base64 binascii bisect calendar collections copy csv dataclasses datetime
decimal enum functools gzip hashlib heapq hmac html io ipaddress itertools json logging math
operator re statistics string struct textwrap time typing unicodedata urllib.parse
uuid zlib zoneinfo""".split()
for _name in STDLIB:
    try:
        importlib.import_module(_name)
    except ImportError:  # pragma: no cover - not in this CPython build
        pass

try:  # written by `hosepipe transform build`: the handler it was asked for
    from hosepipe_lambda_build import DEFAULT_HANDLER
except ImportError:  # pragma: no cover - a component built by hand
    DEFAULT_HANDLER = "lambda_function.lambda_handler"

RESULTS = {"Ok": Status.OK, "Dropped": Status.DROPPED, "ProcessingFailed": Status.PROCESSING_FAILED}


class LambdaContext:
    """The parts of Lambda's context object handlers use."""

    def __init__(self, function_name, timeout_ms):
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{function_name}"
        self.memory_limit_in_mb = 128
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "hosepipe"
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + timeout_ms / 1000

    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class WitWorld(wit_world.WitWorld):
    handler = None
    function_name = "hosepipe"
    stream_arn = "arn:aws:firehose:local:000000000000:deliverystream/hosepipe"
    region = "local"

    def init(self, parameters):
        params = {p.name: p.value for p in parameters}
        # The other parameters are the handler's environment, as a Lambda's variables would be.
        os.environ.update({k: v for k, v in params.items() if k != "Handler"})
        name = params.get("Handler", DEFAULT_HANDLER)
        module, _, function = name.rpartition(".")
        if not module:
            raise Err(f"Handler {name!r} is not module.function")
        try:
            handler = getattr(importlib.import_module(module), function)
        except Exception as e:  # noqa: BLE001 - any import failure is the parameters' fault
            raise Err(f"Handler {name!r}: {type(e).__name__}: {e}") from None
        if not callable(handler):
            raise Err(f"Handler {name!r} is not a function")
        WitWorld.handler = handler
        WitWorld.function_name = module

    def process(self, batch):
        ids = [str(i) for i in batch.ids]
        records, start = [], 0
        for rid, length, arrival in zip(ids, batch.lengths, batch.arrivals_ms):
            data = batch.data[start:start + length]
            start += length
            records.append({"recordId": rid, "approximateArrivalTimestamp": arrival,
                            "data": base64.b64encode(data).decode("ascii")})
        event = {"invocationId": str(uuid.uuid4()), "deliveryStreamArn": self.stream_arn,
                 "region": self.region, "records": records}
        try:
            answer = WitWorld.handler(event, LambdaContext(self.function_name, 300_000))
            outcomes = answers(ids, answer)
        except Exception as e:  # noqa: BLE001 - the handler's failure is the batch's
            why = f"the handler raised {type(e).__name__}: {e}"
            outcomes = {rid: (Status.PROCESSING_FAILED, why.encode(), []) for rid in ids}
        return processed(batch.ids, ids, outcomes)


def answers(ids, answer):
    """recordId → (status, bytes, partition keys) for each input, from the handler's answer."""
    if not isinstance(answer, dict) or not isinstance(answer.get("records"), list):
        raise ValueError("the answer is not {\"records\": [...]}")
    wanted = set(ids)
    out, twice = {}, set()
    for rec in answer["records"]:
        rid = rec.get("recordId") if isinstance(rec, dict) else None
        if rid not in wanted:
            continue
        if rid in out:
            twice.add(rid)
        out[rid] = one(rec)
    for rid in twice:
        out[rid] = (Status.PROCESSING_FAILED,
                    b"DuplicatedRecordId: the answer holds this recordId more than once", [])
    for rid in wanted - out.keys():
        out[rid] = (Status.PROCESSING_FAILED,
                    b"MissingRecordId: the answer holds no record with this recordId", [])
    return out


def one(rec):
    result = rec.get("result")
    if result not in RESULTS:
        return (Status.PROCESSING_FAILED,
                f"result {result!r} is not Ok, Dropped or ProcessingFailed".encode(), [])
    status = RESULTS[result]
    if status is Status.DROPPED:
        return (status, b"", [])
    if status is Status.PROCESSING_FAILED:
        return (status, b"the handler returned ProcessingFailed", [])
    try:
        data = base64.b64decode(rec.get("data", ""), validate=True)
    except (binascii.Error, TypeError, ValueError) as e:
        return (Status.PROCESSING_FAILED, f"data is not base64: {e}".encode(), [])
    metadata = rec.get("metadata") or {}
    keys = []
    for prefix, field in (("", "partitionKeys"), ("otfMetadata.", "otfMetadata")):
        for name, value in (metadata.get(field) or {}).items():
            if not isinstance(value, str):
                return (Status.PROCESSING_FAILED,
                        f"metadata.{field}.{name} is not a string".encode(), [])
            keys.append((prefix + name, value))
    return (status, data, keys)


def processed(raw_ids, ids, outcomes):
    data, statuses, offsets, lengths, partition_keys = bytearray(), [], [], [], []
    for i, rid in enumerate(ids):
        status, body, keys = outcomes[rid]
        statuses.append(status)
        offsets.append(len(data))
        lengths.append(len(body))
        data += body
        partition_keys += [PartitionKey(output=i, name=n, value=v) for n, v in keys]
    return Processed(data=bytes(data), ids=list(raw_ids), statuses=statuses,
                     sources=[Source.OUTPUT] * len(ids), offsets=offsets, lengths=lengths,
                     partition_keys=partition_keys)
