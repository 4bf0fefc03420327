// Apache combined log lines to JSON with a regular expression, as the Firehose Apache-log
// blueprint does.
const LINE = /^(\S+) (\S+) (\S+) \[([^\]]+)\] "([^"]*)" (\d{3}) (\S+) "([^"]*)" "([^"]*)"$/;
const MONTHS = { Jan: 0, Feb: 1, Mar: 2, Apr: 3, May: 4, Jun: 5, Jul: 6, Aug: 7, Sep: 8, Oct: 9, Nov: 10, Dec: 11 };

// "10/Oct/2000:13:55:36 -0700" → "2000-10-10T13:55:36-07:00", as Python's isoformat() writes it.
function isoformat(when) {
    const m = /^(\d{2})\/(\w{3})\/(\d{4}):(\d{2}):(\d{2}):(\d{2}) ([+-]\d{2})(\d{2})$/.exec(when);
    if (!m || !(m[2] in MONTHS)) throw new RangeError(`bad time ${when}`);
    const [, d, mon, y, hh, mm, ss, tzh, tzm] = m;
    const month = String(MONTHS[mon] + 1).padStart(2, '0');
    return `${y}-${month}-${d}T${hh}:${mm}:${ss}${tzh}:${tzm}`;
}

export const handler = async (event) => {
    const records = event.records.map((record) => {
        const line = Buffer.from(record.data, 'base64').toString('utf8').trim();
        const m = LINE.exec(line);
        if (!m) {
            return { recordId: record.recordId, result: 'ProcessingFailed', data: record.data };
        }
        const [, host, , , when, request, status, size, referrer, agent] = m;
        const doc = {
            host, datetime: isoformat(when), request, response: Number(status),
            bytes: size === '-' ? null : Number(size),
            referrer: referrer === '-' ? null : referrer, agent,
        };
        const data = Buffer.from(JSON.stringify(doc) + '\n').toString('base64');
        return { recordId: record.recordId, result: 'Ok', data };
    });
    return { records };
};
