// Answers the first record under another id, leaves the second out, answers the rest.
export const handler = async (event) => {
    const records = [];
    event.records.forEach((r, i) => {
        if (i === 0) records.push({ recordId: 'not-' + r.recordId, result: 'Ok', data: r.data });
        else if (i > 1) records.push({ recordId: r.recordId, result: 'Ok', data: r.data });
    });
    return { records };
};
