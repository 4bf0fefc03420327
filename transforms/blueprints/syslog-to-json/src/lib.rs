//! Blueprint `syslog-to-json` (Firehose's "Syslog to JSON"): parses RFC 3164 (BSD) and RFC 5424
//! syslog lines into JSON with the Kinesis Agent's field names — `timestamp`, `hostname`,
//! `program`, `processid`, `message` — plus `priority`, `facility` and `severity` when the line
//! has a `<PRI>`, and `msgid` and `structuredData` for RFC 5424. A `-` (RFC 5424's nil) becomes
//! `null`. Lines that do not parse are ProcessingFailed with the reason. Parameter
//! `AppendNewline` (default `true`) ends each object with `\n`.

use hosepipe_transform::{Outcome, Params, Record, Transform};
use serde_json::{Map, Value};

#[derive(Debug)]
pub struct SyslogToJson {
    append_newline: bool,
}

impl Transform for SyslogToJson {
    fn init(params: &Params) -> Result<Self, String> {
        Ok(SyslogToJson {
            append_newline: params.flag("AppendNewline", true)?,
        })
    }

    fn process<'a>(&mut self, record: Record<'a>) -> Outcome<'a> {
        hosepipe_transform::json::line_to_object(record, self.append_newline, parse)
    }
}

hosepipe_transform::export_transform!(SyslogToJson);

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn nil(value: &str) -> Value {
    if value == "-" {
        Value::Null
    } else {
        Value::String(value.to_string())
    }
}

/// Splits off the next space-delimited field.
fn field<'a>(rest: &mut &'a str, what: &str) -> Result<&'a str, String> {
    let s = rest.trim_start_matches(' ');
    let end = s.find(' ').unwrap_or(s.len());
    if end == 0 {
        return Err(format!("missing {what}"));
    }
    *rest = s[end..].strip_prefix(' ').unwrap_or(&s[end..]);
    Ok(&s[..end])
}

/// Parses one syslog line, RFC 5424 when a version follows the `<PRI>`, else RFC 3164.
pub fn parse(line: &str) -> Result<Map<String, Value>, String> {
    let mut fields = Map::new();
    let mut rest = line;
    if let Some(after) = line.strip_prefix('<') {
        let end = after
            .find('>')
            .ok_or("unterminated <PRI> (no closing '>')")?;
        let pri: u8 = after[..end]
            .parse()
            .ok()
            .filter(|p| *p <= 191)
            .ok_or_else(|| format!("PRI {:?} is not a number from 0 to 191", &after[..end]))?;
        fields.insert("priority".into(), pri.into());
        fields.insert("facility".into(), (pri / 8).into());
        fields.insert("severity".into(), (pri % 8).into());
        rest = &after[end + 1..];
        if let Some(v5424) = rest.strip_prefix("1 ") {
            return parse_5424(v5424, fields);
        }
    }
    parse_3164(rest, fields)
}

fn parse_5424(
    mut rest: &str,
    mut fields: Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    let timestamp = field(&mut rest, "timestamp")?;
    if timestamp != "-" && !(timestamp.len() >= 20 && timestamp.as_bytes()[4] == b'-') {
        return Err(format!("timestamp {timestamp:?} is not RFC 3339"));
    }
    fields.insert("timestamp".into(), nil(timestamp));
    fields.insert("hostname".into(), nil(field(&mut rest, "hostname")?));
    fields.insert("program".into(), nil(field(&mut rest, "app-name")?));
    fields.insert("processid".into(), nil(field(&mut rest, "procid")?));
    fields.insert("msgid".into(), nil(field(&mut rest, "msgid")?));
    let sd_end = if rest.starts_with('-') {
        1
    } else if rest.starts_with('[') {
        structured_data_end(rest)?
    } else {
        return Err("missing structured data ('-' or '[...]')".into());
    };
    fields.insert("structuredData".into(), nil(&rest[..sd_end]));
    let msg = &rest[sd_end..];
    let msg = msg.strip_prefix(' ').unwrap_or(msg);
    let msg = msg.strip_prefix('\u{feff}').unwrap_or(msg);
    fields.insert("message".into(), Value::String(msg.into()));
    Ok(fields)
}

/// Where the run of `[...]` elements at the start of `s` ends (`\]` does not close one).
fn structured_data_end(s: &str) -> Result<usize, String> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() && bytes[i] == b'[' {
        i += 1;
        loop {
            match bytes.get(i) {
                None => return Err("unterminated structured data element".into()),
                Some(b'\\') => i += 2,
                Some(b']') => {
                    i += 1;
                    break;
                }
                Some(_) => i += 1,
            }
        }
    }
    Ok(i)
}

fn parse_3164(rest: &str, mut fields: Map<String, Value>) -> Result<Map<String, Value>, String> {
    // "Mmm dd hh:mm:ss" with a space-padded day.
    if rest.len() < 16 || !MONTHS.contains(&&rest[..3]) || !rest.is_char_boundary(15) {
        return Err(
            "expected an RFC 3164 timestamp like \"Oct 11 22:14:15\" or an RFC 5424 version".into(),
        );
    }
    let (stamp, after) = rest.split_at(15);
    let b = stamp.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(|c| c.is_ascii_digit() || *c == b' ');
    if !(digits(4..6)
        && b[6] == b' '
        && digits(7..9)
        && b[9] == b':'
        && digits(10..12)
        && b[12] == b':'
        && digits(13..15))
    {
        return Err(format!("timestamp {stamp:?} is not \"Mmm dd hh:mm:ss\""));
    }
    fields.insert("timestamp".into(), Value::String(stamp.into()));
    let mut rest = after;
    fields.insert(
        "hostname".into(),
        Value::String(field(&mut rest, "hostname")?.into()),
    );
    // TAG: program[pid]: message — the tag is optional.
    let tag_end = rest.find(": ").filter(|&i| !rest[..i].contains(' '));
    let (program, pid, message) = match tag_end {
        Some(i) => {
            let tag = &rest[..i];
            match tag.split_once('[') {
                Some((prog, pid)) if pid.ends_with(']') => (
                    Value::String(prog.into()),
                    Value::String(pid[..pid.len() - 1].into()),
                    &rest[i + 2..],
                ),
                _ => (Value::String(tag.into()), Value::Null, &rest[i + 2..]),
            }
        }
        None => (Value::Null, Value::Null, rest),
    };
    fields.insert("program".into(), program);
    fields.insert("processid".into(), pid);
    fields.insert("message".into(), Value::String(message.into()));
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(line: &str) -> Outcome<'_> {
        SyslogToJson::init(&Params::default())
            .unwrap()
            .process(Record::new(line))
    }

    fn json_of(line: &str) -> Value {
        match run(line) {
            Outcome::Ok { data, .. } => serde_json::from_slice(&data).unwrap(),
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn rfc3164_with_and_without_pri() {
        assert_eq!(
            json_of("<34>Oct 11 22:14:15 mymachine su[230]: 'su root' failed for lonvick"),
            json!({"priority": 34, "facility": 4, "severity": 2, "timestamp": "Oct 11 22:14:15",
                   "hostname": "mymachine", "program": "su", "processid": "230",
                   "message": "'su root' failed for lonvick"})
        );
        let v = json_of("Feb  5 07:01:02 web-1 CRON: (root) CMD (run-parts /etc/cron.hourly)");
        assert_eq!(v["timestamp"], "Feb  5 07:01:02");
        assert_eq!(v["program"], "CRON");
        assert_eq!(v["processid"], Value::Null);
        assert!(v.get("priority").is_none());
    }

    #[test]
    fn rfc5424_with_structured_data() {
        let v = json_of(
            r#"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" eventSource="App\]lication"] An application event"#,
        );
        assert_eq!(v["severity"], 5);
        assert_eq!(v["facility"], 20);
        assert_eq!(v["timestamp"], "2003-10-11T22:14:15.003Z");
        assert_eq!(v["program"], "evntslog");
        assert_eq!(v["processid"], Value::Null);
        assert_eq!(v["msgid"], "ID47");
        assert_eq!(
            v["structuredData"],
            r#"[exampleSDID@32473 iut="3" eventSource="App\]lication"]"#
        );
        assert_eq!(v["message"], "An application event");
        let v = json_of("<34>1 2003-10-11T22:14:15.003Z host su - ID47 - 'su root' failed");
        assert_eq!(v["structuredData"], Value::Null);
        assert_eq!(v["message"], "'su root' failed");
    }

    #[test]
    fn malformed_lines_fail_with_a_reason() {
        for (line, reason) in [
            ("", "RFC 3164 timestamp"),
            ("<999>Oct 11 22:14:15 h x: y", "0 to 191"),
            ("<34 Oct", "unterminated"),
            ("Oct 11 22-14-15 host x: y", "is not"),
            ("<34>1 yesterday host app - - - m", "RFC 3339"),
            (
                "<34>1 2003-10-11T22:14:15.003Z host app - ID [x",
                "unterminated structured",
            ),
            (
                "<34>1 2003-10-11T22:14:15.003Z host app - ID nope",
                "structured data",
            ),
        ] {
            match run(line) {
                Outcome::Failed(m) => assert!(m.contains(reason), "{line}: {m}"),
                other => panic!("{line}: {other:?}"),
            }
        }
    }
}
