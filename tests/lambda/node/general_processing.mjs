// AWS's "General Firehose Processing" blueprint for Node.js, as Lambda users have it.
console.log('Loading function');

export const handler = async (event, context) => {
    /* Process the list of records and transform them */
    const output = event.records.map((record) => {
        const payload = Buffer.from(record.data, 'base64').toString('utf8');
        console.log(record.recordId);

        // Do custom processing on the payload here

        return {
            recordId: record.recordId,
            result: 'Ok',
            data: Buffer.from(payload, 'utf8').toString('base64'),
        };
    });
    console.log(`Processing completed.  Successful records ${output.length}.`);
    return { records: output };
};
