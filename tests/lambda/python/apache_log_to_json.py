# Apache combined log lines to JSON with `re`, as the Firehose Apache-log blueprint does.
import base64
import json
import re
from datetime import datetime

LINE = re.compile(r'^(\S+) (\S+) (\S+) \[([^\]]+)\] "([^"]*)" (\d{3}) (\S+) "([^"]*)" "([^"]*)"$')


def lambda_handler(event, context):
    output = []
    for record in event['records']:
        line = base64.b64decode(record['data']).decode('utf-8').strip()
        m = LINE.match(line)
        if not m:
            output.append({'recordId': record['recordId'], 'result': 'ProcessingFailed',
                           'data': record['data']})
            continue
        host, ident, user, when, request, status, size, referrer, agent = m.groups()
        at = datetime.strptime(when, '%d/%b/%Y:%H:%M:%S %z')
        doc = {'host': host, 'datetime': at.isoformat(), 'request': request,
               'response': int(status), 'bytes': None if size == '-' else int(size),
               'referrer': None if referrer == '-' else referrer, 'agent': agent}
        data = (json.dumps(doc) + '\n').encode('utf-8')
        output.append({'recordId': record['recordId'], 'result': 'Ok',
                       'data': base64.b64encode(data).decode('utf-8')})
    return {'records': output}
