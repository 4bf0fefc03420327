//! Blueprint `cloudwatch-logs-processor` (Firehose's "CloudWatch Logs Processor"): each record
//! is a gzipped CloudWatch Logs subscription envelope `{messageType, owner, logGroup,
//! logStream, subscriptionFilters, logEvents: [{id, timestamp, message}]}`. `DATA_MESSAGE`
//! records become their log events' messages, each followed by `\n`, concatenated; the
//! `CONTROL_MESSAGE`s CloudWatch sends to check the destination are Dropped. A record that is
//! not gzip or not such an envelope is ProcessingFailed with the reason.

use std::io::Read;

use hosepipe_transform::{Outcome, Params, Record, Transform};
use serde_json::Value;

#[derive(Debug)]
pub struct CloudWatchLogsProcessor;

impl Transform for CloudWatchLogsProcessor {
    fn init(_: &Params) -> Result<Self, String> {
        Ok(CloudWatchLogsProcessor)
    }

    fn process<'a>(&mut self, record: Record<'a>) -> Outcome<'a> {
        let mut json = Vec::new();
        if let Err(e) = flate2::read::GzDecoder::new(record.data).read_to_end(&mut json) {
            return Outcome::failed(format!("not gzip: {e}"));
        }
        match log_messages(&json) {
            Ok(None) => Outcome::Dropped,
            Ok(Some(messages)) => {
                let mut out = Vec::new();
                for m in messages {
                    out.extend_from_slice(m.as_bytes());
                    out.push(b'\n');
                }
                Outcome::ok(out)
            }
            Err(e) => Outcome::failed(e),
        }
    }
}

/// The messages of a (decompressed) CloudWatch Logs subscription envelope: `None` for a
/// `CONTROL_MESSAGE`, the `logEvents[].message`s for a `DATA_MESSAGE`. Also what the daemon's
/// native `CloudWatchLogProcessing` processor uses.
pub fn log_messages(json: &[u8]) -> Result<Option<Vec<String>>, String> {
    let envelope: Value =
        serde_json::from_slice(json).map_err(|e| format!("not a CloudWatch Logs envelope: {e}"))?;
    match envelope["messageType"].as_str() {
        Some("CONTROL_MESSAGE") => return Ok(None),
        Some("DATA_MESSAGE") => {}
        Some(other) => return Err(format!("unknown messageType {other:?}")),
        None => return Err("envelope has no messageType".into()),
    }
    let Some(events) = envelope["logEvents"].as_array() else {
        return Err("DATA_MESSAGE has no logEvents array".into());
    };
    events
        .iter()
        .enumerate()
        .map(|(i, event)| {
            event["message"]
                .as_str()
                .map(String::from)
                .ok_or_else(|| format!("logEvents[{i}] has no message"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

hosepipe_transform::export_transform!(CloudWatchLogsProcessor);

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn run(data: Vec<u8>) -> Outcome<'static> {
        match CloudWatchLogsProcessor.process(Record::new(&data)) {
            Outcome::Ok {
                data,
                partition_keys,
            } => Outcome::Ok {
                data: data.into_owned().into(),
                partition_keys,
            },
            Outcome::Dropped => Outcome::Dropped,
            Outcome::Failed(m) => Outcome::Failed(m),
        }
    }

    #[test]
    fn data_messages_become_their_events() {
        let env = serde_json::json!({
            "messageType": "DATA_MESSAGE", "owner": "123456789012", "logGroup": "/app",
            "logStream": "s", "subscriptionFilters": ["f"],
            "logEvents": [{"id": "1", "timestamp": 1, "message": "first"},
                          {"id": "2", "timestamp": 2, "message": "{\"a\":1}"}]
        });
        assert_eq!(
            run(gzip(env.to_string().as_bytes())),
            Outcome::ok("first\n{\"a\":1}\n")
        );
    }

    #[test]
    fn control_messages_are_dropped_and_junk_fails() {
        let control = r#"{"messageType":"CONTROL_MESSAGE","logEvents":[]}"#;
        assert_eq!(run(gzip(control.as_bytes())), Outcome::Dropped);
        for (data, reason) in [
            (b"plain text".to_vec(), "not gzip"),
            (gzip(b"[1,2"), "not a CloudWatch"),
            (gzip(br#"{"messageType":"OTHER"}"#), "unknown messageType"),
            (gzip(br#"{"messageType":"DATA_MESSAGE"}"#), "no logEvents"),
            (
                gzip(br#"{"messageType":"DATA_MESSAGE","logEvents":[{}]}"#),
                "logEvents[0]",
            ),
        ] {
            match run(data) {
                Outcome::Failed(m) => assert!(m.contains(reason), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }
}
