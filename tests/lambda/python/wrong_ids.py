# Answers the first record under another id, leaves the second out, answers the rest.
def lambda_handler(event, context):
    out = []
    for i, r in enumerate(event['records']):
        if i == 0:
            out.append({'recordId': 'not-' + r['recordId'], 'result': 'Ok', 'data': r['data']})
        elif i == 1:
            continue
        else:
            out.append({'recordId': r['recordId'], 'result': 'Ok', 'data': r['data']})
    return {'records': out}
