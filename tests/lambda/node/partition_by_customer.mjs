// Dynamic partitioning keys from the record, as Firehose's Lambda partitioning example.
export async function handler(event) {
    return {
        records: event.records.map((r) => {
            const doc = JSON.parse(Buffer.from(r.data, 'base64').toString('utf8'));
            return {
                recordId: r.recordId, result: 'Ok', data: r.data,
                metadata: { partitionKeys: { customer: String(doc.customer), year: doc.ts.slice(0, 4) } },
            };
        }),
    };
}
