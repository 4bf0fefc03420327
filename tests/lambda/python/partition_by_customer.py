# Dynamic partitioning keys from the record, as Firehose's Lambda partitioning example.
import base64
import json


def lambda_handler(event, context):
    out = []
    for r in event['records']:
        doc = json.loads(base64.b64decode(r['data']))
        out.append({'recordId': r['recordId'], 'result': 'Ok', 'data': r['data'],
                    'metadata': {'partitionKeys': {'customer': str(doc['customer']),
                                                   'year': doc['ts'][:4]}}})
    return {'records': out}
