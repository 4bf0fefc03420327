// A Firehose data-transformation Lambda handler in Node.js, to copy (see docs/transforms.md).
// It is an ordinary Lambda handler: the same file runs on AWS Lambda and, after
//     hosepipe transform build index.mjs
// in hosepipe's sandbox. This one uppercases each record, drops empty ones, and fails records
// that are not UTF-8; the processor parameter `Suffix` arrives as process.env.Suffix.
const utf8 = new TextDecoder('utf-8', { fatal: true });

export const handler = async (event, context) => {
    const suffix = process.env.Suffix ?? '';
    const records = event.records.map((record) => {
        const data = Buffer.from(record.data, 'base64');
        if (data.length === 0) {
            return { recordId: record.recordId, result: 'Dropped', data: record.data };
        }
        let text;
        try {
            text = utf8.decode(data);
        } catch {
            return { recordId: record.recordId, result: 'ProcessingFailed', data: record.data };
        }
        const out = Buffer.from(text.toUpperCase() + suffix, 'utf8');
        return { recordId: record.recordId, result: 'Ok', data: out.toString('base64') };
    });
    return { records };
};
