//! `hosepipe transform test`: runs a transform — a component file, a function in the
//! config's `[transforms] dir`, or a built-in blueprint — over records from a file, the way a
//! stream's `Lambda` processor would (the same catalog, sandbox limits and retries), and says
//! what became of each record.
//!
//! The records file is either a Firehose Lambda test event (the JSON the Lambda console
//! offers: `{"records": [{"recordId", "approximateArrivalTimestamp", "data": <base64>}]}`) or
//! text, one record per line (without its line end; empty lines are skipped).

use std::path::PathBuf;

use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};

use super::catalog::{Catalog, CatalogSettings};
use super::{Fate, Processing};
use crate::buffer::{Limits, Record};
use crate::config::processing::{LambdaSpec, ProcessingSpec};

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// The transform: a component file (`NAME.wasm`), a function name in the config's
    /// `[transforms] dir`, or a built-in blueprint (`general-processing`, …).
    pub transform: String,
    /// Records: a Firehose Lambda test event (JSON), or one record per line.
    #[arg(long)]
    pub records: PathBuf,
    /// A processor parameter for the transform's `init` (repeatable), as in the stream's
    /// `ProcessingConfiguration`: `--param Handler=index.handler`.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parameter)]
    pub params: Vec<(String, String)>,
    /// The daemon's config: its `[transforms]` directory, deadline and memory cap apply.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Deadline of one call, in milliseconds (default: the config's, else 10000).
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Memory cap of the instance, in MiB (default: the config's, else 128).
    #[arg(long)]
    pub memory_mb: Option<u64>,
    /// `NumberOfRetries`: calls of a batch that failed as a whole are retried this many times.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Print the answer as a Lambda would return it (JSON), with each failure's errorCode
    /// and errorMessage.
    #[arg(long)]
    pub json: bool,
}

fn parameter(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

/// One input record: the id it is shown with, its bytes, its arrival time.
#[derive(Debug, PartialEq)]
pub struct Input {
    pub id: String,
    pub data: Vec<u8>,
    pub arrival_ms: i64,
}

/// Reads a records file: a Lambda test event, or one record per line.
pub fn read_records(text: &[u8], now_ms: i64) -> Result<Vec<Input>, String> {
    let event = serde_json::from_slice::<Value>(text)
        .ok()
        .filter(|v| v.get("records").is_some_and(Value::is_array));
    let Some(event) = event else {
        let lines = text.split(|b| *b == b'\n');
        return Ok(lines
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.is_empty())
            .enumerate()
            .map(|(i, l)| Input {
                id: (i + 1).to_string(),
                data: l.to_vec(),
                arrival_ms: now_ms,
            })
            .collect());
    };
    let records = event["records"].as_array().expect("checked above");
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let id = match &r["recordId"] {
                Value::String(s) => s.clone(),
                Value::Null => (i + 1).to_string(),
                other => other.to_string(),
            };
            let data = r["data"]
                .as_str()
                .ok_or_else(|| format!("records[{i}].data: missing (base64 text)"))?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| format!("records[{i}].data: not base64: {e}"))?;
            let arrival_ms = r["approximateArrivalTimestamp"].as_i64().unwrap_or(now_ms);
            Ok(Input {
                id,
                data,
                arrival_ms,
            })
        })
        .collect()
}

/// What became of one record, as the test prints it.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Ok {
        data: Bytes,
        partition_keys: Vec<(String, String)>,
    },
    Dropped,
    ProcessingFailed {
        code: String,
        message: String,
    },
}

/// Runs the transform over the records: one answer per record, in order.
pub fn run(
    args: &TestArgs,
    mut settings: CatalogSettings,
    inputs: &[Input],
) -> Result<Vec<Answer>, String> {
    let function = match args.transform.strip_suffix(".wasm") {
        Some(_) => {
            let path = std::path::absolute(&args.transform).map_err(|e| e.to_string())?;
            if !path.is_file() {
                return Err(format!("{}: no such file", path.display()));
            }
            settings.dir = path.parent().map(PathBuf::from);
            path.file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .ok_or_else(|| format!("{}: no file name", path.display()))?
        }
        None => args.transform.clone(),
    };
    if let Some(ms) = args.timeout_ms {
        settings.limits.timeout = std::time::Duration::from_millis(ms);
    }
    if let Some(mb) = args.memory_mb {
        settings.limits.memory_bytes = (mb as usize) << 20;
    }
    let spec = ProcessingSpec {
        decompression: false,
        cloudwatch_extraction: false,
        deaggregation: None,
        lambda: Some(LambdaSpec {
            arn: format!("arn:aws:lambda:local:000000000000:function:{function}"),
            function,
            retries: args.retries,
            parameters: args.params.clone(),
        }),
        append_delimiter: None,
        metadata_query: None,
        limits: Limits {
            size_bytes: 1 << 20,
            interval: std::time::Duration::ZERO,
        },
    };
    let processing: std::sync::Arc<Processing> = Catalog::new(settings).build(&spec)?;
    let records: Vec<Record> = inputs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut record = Record::new(Bytes::from(r.data.clone()), r.arrival_ms);
            record.seq = i as u64 + 1;
            record
        })
        .collect();
    Ok(processing
        .run(&records)
        .into_iter()
        .map(|fate| match fate {
            // The chain is the Lambda step alone: a record emits nothing (dropped) or one.
            Fate::Emit(out) => match out.into_iter().next() {
                None => Answer::Dropped,
                Some(e) => Answer::Ok {
                    data: e.data,
                    partition_keys: e.partition_keys,
                },
            },
            Fate::Failed { failure, .. } => Answer::ProcessingFailed {
                code: failure.code,
                message: failure.message,
            },
        })
        .collect())
}

/// The answers as a Lambda returns them (`{"records": [...]}`), failures with their reason.
pub fn lambda_answer(inputs: &[Input], answers: &[Answer]) -> Value {
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let records: Vec<Value> = inputs
        .iter()
        .zip(answers)
        .map(|(input, answer)| match answer {
            Answer::Ok {
                data,
                partition_keys,
            } => {
                let mut keys = serde_json::Map::new();
                let mut otf = serde_json::Map::new();
                for (k, v) in partition_keys {
                    match k.strip_prefix("otfMetadata.") {
                        Some(k) => otf.insert(k.to_string(), json!(v)),
                        None => keys.insert(k.clone(), json!(v)),
                    };
                }
                let mut metadata = serde_json::Map::new();
                if !keys.is_empty() {
                    metadata.insert("partitionKeys".into(), Value::Object(keys));
                }
                if !otf.is_empty() {
                    metadata.insert("otfMetadata".into(), Value::Object(otf));
                }
                let mut rec = json!({"recordId": input.id, "result": "Ok", "data": b64(data)});
                if !metadata.is_empty() {
                    rec["metadata"] = Value::Object(metadata);
                }
                rec
            }
            Answer::Dropped => json!({"recordId": input.id, "result": "Dropped", "data": ""}),
            Answer::ProcessingFailed { code, message } => json!({
                "recordId": input.id, "result": "ProcessingFailed", "data": b64(&input.data),
                "errorCode": code, "errorMessage": message,
            }),
        })
        .collect();
    json!({ "records": records })
}

/// The answers as a table: record id, result, and the data (as a JSON string when it is
/// text, else base64) or the failure; then a count of each result.
pub fn table(inputs: &[Input], answers: &[Answer]) -> String {
    let shown = |d: &[u8]| match std::str::from_utf8(d) {
        Ok(s) => Value::String(s.to_string()).to_string(),
        Err(_) => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(d)
        ),
    };
    let width = inputs.iter().map(|i| i.id.len()).max().unwrap_or(0).max(6);
    let mut out = format!("{:width$}  {:16}  data\n", "record", "result");
    let (mut ok, mut dropped, mut failed) = (0, 0, 0);
    for (input, answer) in inputs.iter().zip(answers) {
        let (result, rest) = match answer {
            Answer::Ok {
                data,
                partition_keys,
            } => {
                ok += 1;
                let mut rest = shown(data);
                if !partition_keys.is_empty() {
                    let keys: Vec<String> = partition_keys
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    rest.push_str(&format!("  partitionKeys: {}", keys.join(", ")));
                }
                ("Ok", rest)
            }
            Answer::Dropped => {
                dropped += 1;
                ("Dropped", String::new())
            }
            Answer::ProcessingFailed { code, message } => {
                failed += 1;
                ("ProcessingFailed", format!("{code}: {message}"))
            }
        };
        out.push_str(&format!("{:width$}  {result:16}  {rest}\n", input.id));
    }
    let n = inputs.len();
    let plural = if n == 1 { "" } else { "s" };
    out.push_str(&format!(
        "{n} record{plural}: {ok} Ok, {dropped} Dropped, {failed} ProcessingFailed\n"
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_or_a_lambda_test_event() {
        let lines = read_records(b"first\r\n\nsecond\n", 7).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            (lines[1].id.as_str(), &lines[1].data[..]),
            ("2", &b"second"[..])
        );
        assert_eq!(lines[0].arrival_ms, 7);
        let event = br#"{"invocationId": "x", "records": [
            {"recordId": "4954", "approximateArrivalTimestamp": 1495072949453,
             "data": "SGVsbG8gV29ybGQ="}]}"#;
        let records = read_records(event, 7).unwrap();
        assert_eq!(
            records,
            [Input {
                id: "4954".into(),
                data: b"Hello World".to_vec(),
                arrival_ms: 1495072949453
            }]
        );
        let bad = read_records(br#"{"records": [{"recordId": "1", "data": "%%"}]}"#, 0);
        assert!(bad.unwrap_err().contains("records[0].data: not base64"));
        // JSON lines that are not an event are records.
        assert_eq!(read_records(b"{\"a\": 1}\n", 0).unwrap().len(), 1);
    }

    #[test]
    fn a_builtin_blueprint_answers_as_a_stream_would() {
        let args = TestArgs {
            transform: "json-field-filter".into(),
            records: PathBuf::new(),
            params: vec![("Keep".into(), "a".into())],
            config: None,
            timeout_ms: None,
            memory_mb: None,
            retries: 0,
            json: true,
        };
        let inputs = read_records(b"{\"a\": 1, \"b\": 2}\nnot json\n", 0).unwrap();
        let answers = run(&args, CatalogSettings::default(), &inputs).unwrap();
        assert!(matches!(answers[0], Answer::Ok { .. }), "{answers:?}");
        assert!(
            matches!(answers[1], Answer::ProcessingFailed { .. }),
            "{answers:?}"
        );
        let answer = lambda_answer(&inputs, &answers);
        assert_eq!(answer["records"][1]["result"], "ProcessingFailed");
        let text = table(&inputs, &answers);
        assert!(
            text.ends_with("2 records: 1 Ok, 0 Dropped, 1 ProcessingFailed\n"),
            "{text}"
        );
        let unknown = TestArgs {
            transform: "no-such-transform".into(),
            ..args
        };
        assert!(run(&unknown, CatalogSettings::default(), &inputs).is_err());
    }
}
