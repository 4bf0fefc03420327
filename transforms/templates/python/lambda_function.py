# A Firehose data-transformation Lambda handler in Python, to copy (see docs/transforms.md).
# It is an ordinary Lambda handler: the same file runs on AWS Lambda and, after
#     hosepipe transform build lambda_function.py
# in hosepipe's sandbox. This one uppercases each record, drops empty ones, and fails records
# that are not UTF-8; the processor parameter `Suffix` arrives as os.environ['Suffix'].
import base64
import os


def lambda_handler(event, context):
    suffix = os.environ.get('Suffix', '')
    output = []
    for record in event['records']:
        data = base64.b64decode(record['data'])
        if not data:
            output.append({'recordId': record['recordId'], 'result': 'Dropped',
                           'data': record['data']})
            continue
        try:
            text = data.decode('utf-8')
        except UnicodeDecodeError:
            output.append({'recordId': record['recordId'], 'result': 'ProcessingFailed',
                           'data': record['data']})
            continue
        out = (text.upper() + suffix).encode('utf-8')
        output.append({'recordId': record['recordId'], 'result': 'Ok',
                       'data': base64.b64encode(out).decode('ascii')})
    return {'records': output}
