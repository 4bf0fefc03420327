//! The Kinesis Agent's `dataProcessingOptions`, applied in order to each record: SINGLELINE,
//! CSVTOJSON, LOGTOJSON and ADDMETADATA. Each takes a record (with its trailing newline, as the
//! tailer read it) and gives one ending in a newline.

use chrono::{SecondsFormat, Utc};
use regex::Regex;
use serde_json::{Map, Value};

/// Why a record could not be converted (it is then sent unchanged and counted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("not UTF-8")]
    NotUtf8,
    #[error("does not match the {0} pattern")]
    NoMatch(String),
    #[error("CSV: {0}")]
    Csv(String),
}

/// A log format LOGTOJSON knows: its pattern and field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    CommonApacheLog,
    CombinedApacheLog,
    ApacheErrorLog,
    Syslog,
    Rfc3339Syslog,
}

const QUOTED: &str = r#""((?:[^"\\]|\\.)*)""#;

impl LogFormat {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "COMMONAPACHELOG" => LogFormat::CommonApacheLog,
            "COMBINEDAPACHELOG" => LogFormat::CombinedApacheLog,
            "APACHEERRORLOG" => LogFormat::ApacheErrorLog,
            "SYSLOG" => LogFormat::Syslog,
            "RFC3339SYSLOG" => LogFormat::Rfc3339Syslog,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            LogFormat::CommonApacheLog => "COMMONAPACHELOG",
            LogFormat::CombinedApacheLog => "COMBINEDAPACHELOG",
            LogFormat::ApacheErrorLog => "APACHEERRORLOG",
            LogFormat::Syslog => "SYSLOG",
            LogFormat::Rfc3339Syslog => "RFC3339SYSLOG",
        }
    }

    /// The field names the Kinesis Agent gives each format.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            LogFormat::CommonApacheLog => &[
                "host", "ident", "authuser", "datetime", "request", "response", "bytes",
            ],
            LogFormat::CombinedApacheLog => &[
                "host", "ident", "authuser", "datetime", "request", "response", "bytes",
                "referrer", "agent",
            ],
            LogFormat::ApacheErrorLog => &[
                "timestamp",
                "module",
                "severity",
                "processid",
                "threadid",
                "client",
                "message",
            ],
            LogFormat::Syslog | LogFormat::Rfc3339Syslog => {
                &["timestamp", "hostname", "program", "processid", "message"]
            }
        }
    }

    pub fn pattern(self) -> String {
        let common = format!(r#"^(\S+) (\S+) (\S+) \[([^\]]+)\] {QUOTED} (\d{{3}}|-) (\d+|-)"#);
        let syslog_tail = r"(\S+) ([^\s\[:]+)(?:\[(\d+)\])?: ?(.*)$";
        match self {
            LogFormat::CommonApacheLog => format!("{common}$"),
            LogFormat::CombinedApacheLog => format!("{common} {QUOTED} {QUOTED}"),
            // [Fri Sep 09 10:42:29.902022 2011] [core:error] [pid 35708:tid 4328636416] [client 72.15.99.187] message
            // [Wed Oct 11 14:32:52 2000] [error] [client 127.0.0.1] message
            LogFormat::ApacheErrorLog => r"^\[([^\]]+)\] \[(?:([^\]:]+):)?([^\]]+)\](?: \[pid (\d+)(?::tid (\d+))?\])?(?: \[client ([^\]]+)\])? (.*)$".into(),
            LogFormat::Syslog => {
                format!(r"^(?:<\d+>)?([A-Z][a-z]{{2}} [ \d]\d \d{{2}}:\d{{2}}:\d{{2}}) {syslog_tail}")
            }
            LogFormat::Rfc3339Syslog => format!(
                r"^(?:<\d+>)?(\d{{4}}-\d{{2}}-\d{{2}}T\d{{2}}:\d{{2}}:\d{{2}}(?:\.\d+)?(?:Z|[+-]\d{{2}}:\d{{2}})) {syslog_tail}"
            ),
        }
    }
}

/// One processing option, ready to run.
#[derive(Debug, Clone)]
pub enum Converter {
    SingleLine,
    CsvToJson {
        fields: Vec<String>,
        delimiter: u8,
    },
    LogToJson {
        /// The format's name, or `matchPattern` for a custom one (for error messages).
        what: String,
        pattern: Regex,
        fields: Vec<String>,
    },
    AddMetadata {
        /// The configured object, serialised once.
        metadata: String,
        timestamp: bool,
    },
}

fn strip_newline(record: &[u8]) -> &[u8] {
    let r = record.strip_suffix(b"\n").unwrap_or(record);
    r.strip_suffix(b"\r").unwrap_or(r)
}

fn text(record: &[u8]) -> Result<&str, ConvertError> {
    std::str::from_utf8(strip_newline(record)).map_err(|_| ConvertError::NotUtf8)
}

/// A JSON object of `fields` → values, in the fields' order; `-` and absent values are null.
fn object<'a>(fields: &[String], values: impl Iterator<Item = Option<&'a str>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(b'{');
    let mut values = values;
    for (i, name) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, name).expect("JSON to memory");
        out.push(b':');
        match values.next().flatten() {
            Some(v) if v != "-" => serde_json::to_writer(&mut out, v).expect("JSON to memory"),
            _ => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b"}\n");
    out
}

impl Converter {
    pub fn apply(&self, record: &[u8]) -> Result<Vec<u8>, ConvertError> {
        match self {
            Converter::SingleLine => {
                let s = std::str::from_utf8(record).map_err(|_| ConvertError::NotUtf8)?;
                let mut out: String = s.lines().map(str::trim).collect();
                out.push('\n');
                Ok(out.into_bytes())
            }
            Converter::CsvToJson { fields, delimiter } => {
                let line = text(record)?;
                let mut reader = csv::ReaderBuilder::new()
                    .has_headers(false)
                    .flexible(true)
                    .delimiter(*delimiter)
                    .from_reader(line.as_bytes());
                let mut row = csv::StringRecord::new();
                reader
                    .read_record(&mut row)
                    .map_err(|e| ConvertError::Csv(e.to_string()))?;
                Ok(object(fields, (0..fields.len()).map(|i| row.get(i))))
            }
            Converter::LogToJson {
                what,
                pattern,
                fields,
            } => {
                let line = text(record)?;
                let caps = pattern
                    .captures(line)
                    .ok_or_else(|| ConvertError::NoMatch(what.clone()))?;
                Ok(object(
                    fields,
                    (1..=fields.len()).map(|i| caps.get(i).map(|m| m.as_str())),
                ))
            }
            Converter::AddMetadata {
                metadata,
                timestamp,
            } => {
                let line = text(record)?;
                let mut out = Vec::with_capacity(line.len() + metadata.len() + 64);
                out.extend_from_slice(b"{\"metadata\":");
                out.extend_from_slice(metadata.as_bytes());
                out.extend_from_slice(b",\"data\":");
                serde_json::to_writer(&mut out, line).expect("JSON to memory");
                if *timestamp {
                    out.extend_from_slice(b",\"ts\":");
                    let ts = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
                    serde_json::to_writer(&mut out, &ts).expect("JSON to memory");
                }
                out.extend_from_slice(b"}\n");
                Ok(out)
            }
        }
    }

    pub fn add_metadata(metadata: &Map<String, Value>, timestamp: bool) -> Self {
        Converter::AddMetadata {
            metadata: serde_json::to_string(metadata).expect("JSON to memory"),
            timestamp,
        }
    }
}

/// Runs the options in order (at least one); the first failure stops the chain.
pub fn apply_all(converters: &[Converter], record: &[u8]) -> Result<Vec<u8>, ConvertError> {
    let Some((first, rest)) = converters.split_first() else {
        return Ok(record.to_vec());
    };
    let mut out = first.apply(record)?;
    for c in rest {
        out = c.apply(&out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(format: LogFormat) -> Converter {
        Converter::LogToJson {
            what: format.name().into(),
            pattern: Regex::new(&format.pattern()).unwrap(),
            fields: format.fields().iter().map(|s| s.to_string()).collect(),
        }
    }

    fn json(out: Vec<u8>) -> Value {
        assert!(out.ends_with(b"\n"));
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn common_apache_log_as_in_the_agent_docs() {
        let out = log(LogFormat::CommonApacheLog).apply(
            b"64.242.88.10 - - [07/Mar/2004:16:10:02 -0800] \"GET /mailman/listinfo/hsdivision HTTP/1.1\" 200 6291\n",
        );
        assert_eq!(
            String::from_utf8(out.unwrap()).unwrap(),
            "{\"host\":\"64.242.88.10\",\"ident\":null,\"authuser\":null,\
             \"datetime\":\"07/Mar/2004:16:10:02 -0800\",\
             \"request\":\"GET /mailman/listinfo/hsdivision HTTP/1.1\",\
             \"response\":\"200\",\"bytes\":\"6291\"}\n"
        );
    }

    #[test]
    fn combined_apache_log_adds_referrer_and_agent() {
        let v = json(
            log(LogFormat::CombinedApacheLog)
                .apply(
                    b"192.168.1.20 - alice [10/Oct/2000:13:55:36 -0700] \"GET /a.gif HTTP/1.0\" 200 - \"http://x.example/\" \"Mozilla/4.08 [en] (Win98; I ;Nav)\"\n",
                )
                .unwrap(),
        );
        assert_eq!(v["authuser"], "alice");
        assert_eq!(v["bytes"], Value::Null);
        assert_eq!(v["referrer"], "http://x.example/");
        assert_eq!(v["agent"], "Mozilla/4.08 [en] (Win98; I ;Nav)");
        assert_eq!(
            log(LogFormat::CombinedApacheLog).apply(b"not a log line\n"),
            Err(ConvertError::NoMatch("COMBINEDAPACHELOG".into()))
        );
    }

    #[test]
    fn apache_error_log_new_and_old_styles() {
        let v = json(
            log(LogFormat::ApacheErrorLog)
                .apply(b"[Fri Sep 09 10:42:29.902022 2011] [core:error] [pid 35708:tid 4328636416] [client 72.15.99.187] File does not exist: /usr/local/apache2/htdocs/favicon.ico\n")
                .unwrap(),
        );
        assert_eq!(v["module"], "core");
        assert_eq!(v["severity"], "error");
        assert_eq!(v["processid"], "35708");
        assert_eq!(v["threadid"], "4328636416");
        assert_eq!(v["client"], "72.15.99.187");
        let v = json(
            log(LogFormat::ApacheErrorLog)
                .apply(b"[Wed Oct 11 14:32:52 2000] [error] [client 127.0.0.1] client denied by server configuration\n")
                .unwrap(),
        );
        assert_eq!(v["module"], Value::Null);
        assert_eq!(v["severity"], "error");
        assert_eq!(v["message"], "client denied by server configuration");
    }

    #[test]
    fn syslog_formats() {
        let v = json(
            log(LogFormat::Syslog)
                .apply(b"Mar  7 16:10:02 web1 sshd[4123]: Accepted publickey for bob\n")
                .unwrap(),
        );
        assert_eq!(v["timestamp"], "Mar  7 16:10:02");
        assert_eq!(v["hostname"], "web1");
        assert_eq!(v["program"], "sshd");
        assert_eq!(v["processid"], "4123");
        assert_eq!(v["message"], "Accepted publickey for bob");
        let v = json(
            log(LogFormat::Rfc3339Syslog)
                .apply(b"<34>2024-02-05T10:00:00.123+01:00 web1 cron: job done\n")
                .unwrap(),
        );
        assert_eq!(v["timestamp"], "2024-02-05T10:00:00.123+01:00");
        assert_eq!(v["processid"], Value::Null);
    }

    #[test]
    fn csv_to_json_with_quotes_and_missing_columns() {
        let c = Converter::CsvToJson {
            fields: vec!["a".into(), "b".into(), "c".into()],
            delimiter: b'|',
        };
        let v = json(c.apply(b"1|\"x|y\"\n").unwrap());
        assert_eq!(v, serde_json::json!({"a":"1","b":"x|y","c":null}));
    }

    #[test]
    fn single_line_then_add_metadata() {
        let meta: Map<String, Value> =
            serde_json::from_str(r#"{"host":"web1","tags":{"env":"prod"}}"#).unwrap();
        let chain = [Converter::SingleLine, Converter::add_metadata(&meta, true)];
        let out = apply_all(&chain, b"Exception in main\n   at Foo.bar\n   at Baz.qux\n").unwrap();
        let v = json(out);
        assert_eq!(v["data"], "Exception in mainat Foo.barat Baz.qux");
        assert_eq!(v["metadata"]["tags"]["env"], "prod");
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
    }
}
