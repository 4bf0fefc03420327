# A filter: DEBUG log events are Dropped, the rest pass gzip-compressed, base64 and back, and
# gain the function's name and an environment variable.
import base64
import gzip
import json
import os


def lambda_handler(event, context):
    assert context.get_remaining_time_in_millis() > 0
    records = []
    for r in event['records']:
        doc = json.loads(base64.b64decode(r['data']))
        if doc.get('level') == 'DEBUG':
            records.append({'recordId': r['recordId'], 'result': 'Dropped', 'data': r['data']})
        else:
            doc['seen_by'] = context.function_name
            doc['tier'] = os.environ.get('TIER', 'none')
            body = gzip.decompress(gzip.compress(json.dumps(doc).encode()))
            records.append({'recordId': r['recordId'], 'result': 'Ok',
                            'data': base64.b64encode(body + b'\n').decode()})
    return {'records': records}
