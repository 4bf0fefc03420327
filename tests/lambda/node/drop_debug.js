// A filter in CommonJS with Lambda's callback: DEBUG log events are Dropped, the rest gain a
// field naming the function.
'use strict';

exports.handler = (event, context, callback) => {
    if (!(context.getRemainingTimeInMillis() > 0)) throw new Error('no time left');
    const records = event.records.map((r) => {
        const doc = JSON.parse(Buffer.from(r.data, 'base64').toString());
        if (doc.level === 'DEBUG') return { recordId: r.recordId, result: 'Dropped', data: r.data };
        doc.seen_by = context.functionName;
        doc.tier = process.env.TIER || 'none';
        return { recordId: r.recordId, result: 'Ok', data: Buffer.from(JSON.stringify(doc) + '\n').toString('base64') };
    });
    callback(null, { records });
};
