//! Blueprint `apache-log-to-json` (Firehose's "Apache Log to JSON"): parses an Apache access-log
//! line in the common (`%h %l %u %t "%r" %>s %b`) or combined (adds `"%{Referer}i"
//! "%{User-agent}i"`) format into a JSON object with the Kinesis Agent's field names: `host`,
//! `ident`, `authuser`, `datetime`, `request`, `response`, `bytes`, and for combined lines
//! `referrer` and `agent`. A `-` becomes `null`. Lines that do not parse are ProcessingFailed
//! with the reason. Parameter `AppendNewline` (default `true`) ends each object with `\n`.

use hosepipe_transform::{Outcome, Params, Record, Transform};
use serde_json::{Map, Value};

#[derive(Debug)]
pub struct ApacheLogToJson {
    append_newline: bool,
}

impl Transform for ApacheLogToJson {
    fn init(params: &Params) -> Result<Self, String> {
        Ok(ApacheLogToJson {
            append_newline: params.flag("AppendNewline", true)?,
        })
    }

    fn process<'a>(&mut self, record: Record<'a>) -> Outcome<'a> {
        hosepipe_transform::json::line_to_object(record, self.append_newline, parse)
    }
}

hosepipe_transform::export_transform!(ApacheLogToJson);

/// A cursor over one log line.
struct Cursor<'a> {
    rest: &'a str,
    column: usize,
}

impl<'a> Cursor<'a> {
    fn skip_spaces(&mut self) {
        let trimmed = self.rest.trim_start_matches(' ');
        self.column += self.rest.len() - trimmed.len();
        self.rest = trimmed;
    }

    fn advance(&mut self, n: usize) -> &'a str {
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        self.column += n;
        head
    }

    /// A space-delimited token.
    fn token(&mut self, what: &str) -> Result<&'a str, String> {
        self.skip_spaces();
        let end = self.rest.find(' ').unwrap_or(self.rest.len());
        if end == 0 {
            return Err(format!("missing {what} at column {}", self.column + 1));
        }
        Ok(self.advance(end))
    }

    /// Text between `open` and `close`; inside quotes, `\"` does not end it.
    fn delimited(&mut self, open: char, close: char, what: &str) -> Result<String, String> {
        self.skip_spaces();
        if !self.rest.starts_with(open) {
            return Err(format!(
                "expected {what} starting with {open:?} at column {}",
                self.column + 1
            ));
        }
        self.advance(1);
        let mut out = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == close {
                self.advance(i + 1);
                return Ok(out);
            }
            if c == '\\'
                && close == '"'
                && let Some((_, next)) = chars.next()
            {
                out.push(next);
                continue;
            }
            out.push(c);
        }
        Err(format!("unterminated {what} (no closing {close:?})"))
    }
}

fn nullable(value: &str) -> Value {
    if value == "-" {
        Value::Null
    } else {
        Value::String(value.to_string())
    }
}

/// Parses a common or combined log line.
pub fn parse(line: &str) -> Result<Map<String, Value>, String> {
    let mut c = Cursor {
        rest: line,
        column: 0,
    };
    let mut fields = Map::new();
    for name in ["host", "ident", "authuser"] {
        fields.insert(name.into(), nullable(c.token(name)?));
    }
    fields.insert(
        "datetime".into(),
        Value::String(c.delimited('[', ']', "datetime")?),
    );
    let request = c.delimited('"', '"', "request")?;
    fields.insert("request".into(), nullable(&request));
    let response = c.token("response")?;
    if !(response.len() == 3 && response.bytes().all(|b| b.is_ascii_digit())) {
        return Err(format!("response {response:?} is not a 3-digit status"));
    }
    fields.insert("response".into(), Value::String(response.into()));
    let bytes = c.token("bytes")?;
    if bytes != "-" && !bytes.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bytes {bytes:?} is not a number or -"));
    }
    fields.insert("bytes".into(), nullable(bytes));
    c.skip_spaces();
    if !c.rest.is_empty() {
        let referrer = c.delimited('"', '"', "referrer")?;
        let agent = c.delimited('"', '"', "agent")?;
        fields.insert("referrer".into(), nullable(&referrer));
        fields.insert("agent".into(), nullable(&agent));
        c.skip_spaces();
        if !c.rest.is_empty() {
            return Err(format!("unexpected text at column {}", c.column + 1));
        }
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(line: &str) -> Outcome<'_> {
        ApacheLogToJson::init(&Params::default())
            .unwrap()
            .process(Record::new(line))
    }

    fn json_of(outcome: Outcome) -> Value {
        let Outcome::Ok { data, .. } = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(data.last(), Some(&b'\n'));
        serde_json::from_slice(&data).unwrap()
    }

    #[test]
    fn common_format() {
        let v = json_of(run(
            r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326"#,
        ));
        assert_eq!(
            v,
            json!({"host": "127.0.0.1", "ident": null, "authuser": "frank",
                   "datetime": "10/Oct/2000:13:55:36 -0700",
                   "request": "GET /apache_pb.gif HTTP/1.0", "response": "200", "bytes": "2326"})
        );
    }

    #[test]
    fn combined_format_with_escaped_quotes() {
        let v = json_of(run(
            r#"10.0.0.2 - - [28/Jul/2006:10:27:10 -0300] "GET /a?q=\"x\" HTTP/1.1" 304 - "http://example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)""#,
        ));
        assert_eq!(v["request"], r#"GET /a?q="x" HTTP/1.1"#);
        assert_eq!(v["bytes"], Value::Null);
        assert_eq!(v["referrer"], "http://example.com/start.html");
        assert_eq!(v["agent"], "Mozilla/4.08 [en] (Win98; I ;Nav)");
    }

    #[test]
    fn malformed_lines_fail_with_a_reason() {
        for (line, reason) in [
            ("", "missing host"),
            ("1.2.3.4 - -", "datetime"),
            ("1.2.3.4 - - [x] \"GET /\" 20 1", "3-digit"),
            ("1.2.3.4 - - [x] \"GET / 200 1", "unterminated request"),
            (
                "1.2.3.4 - - [x] \"GET /\" 200 1 \"r\" \"a\" extra",
                "unexpected text",
            ),
        ] {
            match run(line) {
                Outcome::Failed(m) => assert!(m.contains(reason), "{line}: {m}"),
                other => panic!("{line}: {other:?}"),
            }
        }
        assert!(matches!(
            ApacheLogToJson::init(&Params::default())
                .unwrap()
                .process(Record::new(&[0xc3])),
            Outcome::Failed(_)
        ));
    }
}
