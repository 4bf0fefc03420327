//! The agent's config: the Kinesis Agent's settings, read from its own `agent.json` unchanged
//! (camelCase, dotted global names such as `firehose.endpoint`) or from TOML in snake_case
//! (`firehose_endpoint`, `[[flows]] file_pattern = …`). Every value is range-checked as the
//! Kinesis Agent documents it; an unknown setting is refused with its path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::convert::{Converter, LogFormat};
use crate::producer::{MAX_BATCH_BYTES, MAX_BATCH_RECORDS};

/// Kinesis Agent settings hosepipe reads but does not act on (CloudWatch, Kinesis Data
/// Streams endpoints, thread tuning): a warning, not an error, so an existing file loads.
const IGNORED: &[&str] = &[
    "cloudwatch.emitMetrics",
    "cloudwatch.endpoint",
    "kinesis.endpoint",
    "sts.endpoint",
    "maxSendingThreadsPerCore",
    "sendingThreadsMaxQueueSize",
    "connectionTimeoutMillis",
    "socketTimeoutMillis",
    "useTcpKeepAlive",
    "useHttpGzip",
    "log.emitMetrics",
    "maxTimeBetweenFileTrackerRefreshMillis",
    "waitOnFullPublishQueueMillis",
    "waitOnEmptyPublishQueueMillis",
    "partitionKeyOption",
];

#[derive(Deserialize, Default)]
#[serde(rename_all = "snake_case")]
struct RawConfig {
    #[serde(alias = "awsAccessKeyId")]
    aws_access_key_id: Option<String>,
    #[serde(alias = "awsSecretAccessKey")]
    aws_secret_access_key: Option<String>,
    #[serde(alias = "assumeRoleARN")]
    assume_role_arn: Option<String>,
    #[serde(alias = "firehose.endpoint")]
    firehose_endpoint: Option<String>,
    /// hosepipe's own: CA certificates (PEM) to trust besides the system's (else
    /// `AWS_CA_BUNDLE`), for an endpoint whose certificate a private CA signed.
    #[serde(alias = "caBundle")]
    ca_bundle: Option<PathBuf>,
    region: Option<String>,
    #[serde(alias = "checkpointFile")]
    checkpoint_file: Option<PathBuf>,
    #[serde(alias = "checkpointTimeToLiveDays")]
    checkpoint_time_to_live_days: Option<u64>,
    #[serde(alias = "shutdownTimeoutMillis")]
    shutdown_timeout_millis: Option<u64>,
    #[serde(alias = "log.statusReportingPeriodSeconds")]
    log_status_reporting_period_seconds: Option<u64>,
    /// hosepipe's own: where the Prometheus endpoint listens (off when absent).
    #[serde(alias = "metrics.listen")]
    metrics_listen: Option<String>,
    #[serde(default)]
    flows: Vec<RawFlow>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "snake_case")]
struct RawFlow {
    #[serde(alias = "filePattern")]
    file_pattern: Option<String>,
    #[serde(alias = "deliveryStream")]
    delivery_stream: Option<String>,
    #[serde(alias = "kinesisStream")]
    kinesis_stream: Option<String>,
    #[serde(alias = "initialPosition")]
    initial_position: Option<String>,
    #[serde(alias = "maxBufferAgeMillis")]
    max_buffer_age_millis: Option<u64>,
    #[serde(alias = "maxBufferSizeRecords")]
    max_buffer_size_records: Option<u64>,
    #[serde(alias = "maxBufferSizeBytes")]
    max_buffer_size_bytes: Option<u64>,
    #[serde(alias = "multiLineStartPattern")]
    multi_line_start_pattern: Option<String>,
    #[serde(alias = "skipHeaderLines")]
    skip_header_lines: Option<u64>,
    #[serde(alias = "truncatedRecordTerminator")]
    truncated_record_terminator: Option<String>,
    #[serde(alias = "fileFooterPattern")]
    file_footer_pattern: Option<String>,
    #[serde(alias = "minTimeBetweenFilePollsMillis")]
    min_time_between_file_polls_millis: Option<u64>,
    #[serde(alias = "retryInitialBackoffMillis")]
    retry_initial_backoff_millis: Option<u64>,
    #[serde(alias = "retryMaxBackoffMillis")]
    retry_max_backoff_millis: Option<u64>,
    #[serde(alias = "publishQueueCapacity")]
    publish_queue_capacity: Option<u64>,
    #[serde(alias = "aggregatedRecordSizeBytes")]
    aggregated_record_size_bytes: Option<u64>,
    #[serde(alias = "dataProcessingOptions", default)]
    data_processing_options: Vec<RawOption>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "snake_case")]
struct RawOption {
    #[serde(alias = "optionName")]
    option_name: Option<String>,
    #[serde(alias = "logFormat")]
    log_format: Option<String>,
    #[serde(alias = "matchPattern")]
    match_pattern: Option<String>,
    #[serde(alias = "customFieldNames")]
    custom_field_names: Option<Vec<String>>,
    delimiter: Option<String>,
    metadata: Option<Map<String, Value>>,
    /// The agent writes `"true"`/`"false"`; TOML may say `true`.
    timestamp: Option<Value>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// Where a flow starts reading a file it has no checkpoint for, on the agent's first run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialPosition {
    StartOfFile,
    EndOfFile,
}

/// One file pattern → one delivery stream.
#[derive(Debug, Clone)]
pub struct Flow {
    /// `filePattern → deliveryStream`, the checkpoint key and metric label.
    pub id: String,
    pub file_pattern: String,
    pub delivery_stream: String,
    pub initial_position: InitialPosition,
    pub max_buffer_age: Duration,
    pub max_buffer_records: usize,
    pub max_buffer_bytes: usize,
    pub multi_line_start: Option<Regex>,
    pub skip_header_lines: u64,
    pub truncated_record_terminator: Vec<u8>,
    pub file_footer: Option<Regex>,
    pub poll_interval: Duration,
    pub retry_initial_backoff: Duration,
    pub retry_max_backoff: Duration,
    pub publish_queue_capacity: usize,
    /// Pack consecutive records of a file into one Firehose record up to this size (0: off).
    pub aggregated_record_size: usize,
    pub converters: Vec<Converter>,
}

/// The whole agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub aws_keys: Option<(String, String)>,
    pub firehose_endpoint: Option<String>,
    /// CA certificates to trust besides the system's (`ca_bundle`).
    pub ca_bundle: Option<PathBuf>,
    pub region: Option<String>,
    pub checkpoint_file: PathBuf,
    pub checkpoint_ttl: Duration,
    pub shutdown_timeout: Duration,
    pub status_period: Duration,
    pub metrics_listen: Option<SocketAddr>,
    pub flows: Vec<Flow>,
    /// Settings read but not acted on, for a warning at start.
    pub ignored: Vec<String>,
}

/// Collects every problem, each with its path, before failing.
struct Checker {
    errors: Vec<String>,
    ignored: Vec<String>,
}

impl Checker {
    fn range(&mut self, path: &str, v: Option<u64>, min: u64, max: u64, default: u64) -> u64 {
        match v {
            None => default,
            Some(v) if (min..=max).contains(&v) => v,
            Some(v) => {
                self.errors
                    .push(format!("{path}: must be between {min} and {max}, got {v}"));
                default
            }
        }
    }

    fn regex(&mut self, path: &str, v: Option<&str>) -> Option<Regex> {
        let v = v?;
        match Regex::new(v) {
            Ok(r) => Some(r),
            Err(e) => {
                self.errors
                    .push(format!("{path}: not a regular expression: {e}"));
                None
            }
        }
    }

    fn others(&mut self, path: &str, other: BTreeMap<String, Value>) {
        for key in other.into_keys() {
            let camel = key.replace('_', "");
            if IGNORED.iter().any(|k| {
                k.eq_ignore_ascii_case(&key) || k.replace('.', "").eq_ignore_ascii_case(&camel)
            }) {
                self.ignored.push(format!("{path}{key}"));
            } else {
                self.errors.push(format!("{path}{key}: unknown setting"));
            }
        }
    }

    fn option(&mut self, path: &str, raw: RawOption) -> Option<Converter> {
        self.others(&format!("{path}."), raw.other);
        let name = raw.option_name.unwrap_or_default();
        match name.as_str() {
            "SINGLELINE" => Some(Converter::SingleLine),
            "CSVTOJSON" => {
                let Some(fields) = raw.custom_field_names.filter(|f| !f.is_empty()) else {
                    self.errors
                        .push(format!("{path}.customFieldNames: required for CSVTOJSON"));
                    return None;
                };
                let delimiter = raw.delimiter.unwrap_or_else(|| ",".into());
                // The agent's `\\t` spelling of a tab.
                let delimiter = if delimiter == "\\t" {
                    "\t".into()
                } else {
                    delimiter
                };
                if delimiter.len() != 1 {
                    self.errors.push(format!(
                        "{path}.delimiter: must be one character, got {delimiter:?}"
                    ));
                    return None;
                }
                Some(Converter::CsvToJson {
                    fields,
                    delimiter: delimiter.as_bytes()[0],
                })
            }
            "LOGTOJSON" => {
                let Some(format_name) = raw.log_format else {
                    self.errors
                        .push(format!("{path}.logFormat: required for LOGTOJSON"));
                    return None;
                };
                let Some(format) = LogFormat::parse(&format_name) else {
                    self.errors.push(format!(
                        "{path}.logFormat: {format_name:?} is not one of COMMONAPACHELOG, \
                         COMBINEDAPACHELOG, APACHEERRORLOG, SYSLOG, RFC3339SYSLOG"
                    ));
                    return None;
                };
                let (what, pattern) = match &raw.match_pattern {
                    Some(p) => (format!("matchPattern of {format_name}"), p.clone()),
                    None => (format_name.clone(), format.pattern()),
                };
                let regex = self.regex(&format!("{path}.matchPattern"), Some(&pattern))?;
                let groups = regex.captures_len() - 1;
                let fields = match raw.custom_field_names {
                    Some(f) => f,
                    None if raw.match_pattern.is_some() => {
                        self.errors.push(format!(
                            "{path}.customFieldNames: required with matchPattern"
                        ));
                        return None;
                    }
                    None => format.fields().iter().map(|s| s.to_string()).collect(),
                };
                if fields.len() != groups {
                    self.errors.push(format!(
                        "{path}.customFieldNames: {} names for {groups} groups in the pattern",
                        fields.len()
                    ));
                    return None;
                }
                Some(Converter::LogToJson {
                    what,
                    pattern: regex,
                    fields,
                })
            }
            "ADDMETADATA" => {
                let timestamp = match raw.timestamp {
                    None => false,
                    Some(Value::Bool(b)) => b,
                    Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
                    Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
                    Some(other) => {
                        self.errors.push(format!(
                            "{path}.timestamp: must be \"true\" or \"false\", got {other}"
                        ));
                        false
                    }
                };
                Some(Converter::add_metadata(
                    &raw.metadata.unwrap_or_default(),
                    timestamp,
                ))
            }
            "" => {
                self.errors.push(format!("{path}.optionName: required"));
                None
            }
            other => {
                self.errors.push(format!(
                    "{path}.optionName: {other:?} is not supported (SINGLELINE, CSVTOJSON, \
                     LOGTOJSON, ADDMETADATA)"
                ));
                None
            }
        }
    }

    fn flow(&mut self, i: usize, raw: RawFlow) -> Option<Flow> {
        let path = format!("flows[{i}]");
        if raw.kinesis_stream.is_some() && raw.delivery_stream.is_none() {
            // The Kinesis Agent docs' example has one flow of each kind: keep the config
            // loadable, skip the Kinesis Data Streams flow, and say so.
            self.ignored.push(format!(
                "{path} (kinesisStream: Kinesis Data Streams flows are skipped; hosepipe sends to \
                 delivery streams)"
            ));
            return None;
        }
        self.others(&format!("{path}."), raw.other);
        if raw.kinesis_stream.is_some() {
            self.errors.push(format!(
                "{path}: kinesisStream and deliveryStream both given; keep deliveryStream"
            ));
        }
        let file_pattern = raw.file_pattern.filter(|p| !p.is_empty());
        if file_pattern.is_none() {
            self.errors.push(format!("{path}.filePattern: required"));
        }
        let stream = raw.delivery_stream.filter(|s| !s.is_empty());
        if stream.is_none() {
            self.errors.push(format!("{path}.deliveryStream: required"));
        }
        if let Some(p) = &file_pattern
            && let Err(e) = glob::Pattern::new(p)
        {
            self.errors.push(format!("{path}.filePattern: {e}"));
        }
        let initial_position = match raw.initial_position.as_deref() {
            None | Some("END_OF_FILE") => InitialPosition::EndOfFile,
            Some("START_OF_FILE") => InitialPosition::StartOfFile,
            Some(other) => {
                self.errors.push(format!(
                    "{path}.initialPosition: must be START_OF_FILE or END_OF_FILE, got {other:?}"
                ));
                InitialPosition::EndOfFile
            }
        };
        let ms = Duration::from_millis;
        let max_buffer_age = ms(self.range(
            &format!("{path}.maxBufferAgeMillis"),
            raw.max_buffer_age_millis,
            1_000,
            900_000,
            60_000,
        ));
        let max_buffer_records = self.range(
            &format!("{path}.maxBufferSizeRecords"),
            raw.max_buffer_size_records,
            1,
            MAX_BATCH_RECORDS as u64,
            MAX_BATCH_RECORDS as u64,
        ) as usize;
        let max_buffer_bytes = self.range(
            &format!("{path}.maxBufferSizeBytes"),
            raw.max_buffer_size_bytes,
            1,
            MAX_BATCH_BYTES as u64,
            MAX_BATCH_BYTES as u64,
        ) as usize;
        let poll = self.range(
            &format!("{path}.minTimeBetweenFilePollsMillis"),
            raw.min_time_between_file_polls_millis,
            1,
            60_000,
            100,
        );
        let retry_initial = self.range(
            &format!("{path}.retryInitialBackoffMillis"),
            raw.retry_initial_backoff_millis,
            1,
            600_000,
            100,
        );
        let retry_max = self.range(
            &format!("{path}.retryMaxBackoffMillis"),
            raw.retry_max_backoff_millis,
            1,
            3_600_000,
            10_000,
        );
        let queue = self.range(
            &format!("{path}.publishQueueCapacity"),
            raw.publish_queue_capacity,
            1,
            10_000,
            100,
        ) as usize;
        let aggregated = self.range(
            &format!("{path}.aggregatedRecordSizeBytes"),
            raw.aggregated_record_size_bytes,
            0,
            crate::producer::MAX_RECORD_BYTES as u64,
            0,
        ) as usize;
        let multi_line_start = self.regex(
            &format!("{path}.multiLineStartPattern"),
            raw.multi_line_start_pattern.as_deref(),
        );
        let file_footer = self.regex(
            &format!("{path}.fileFooterPattern"),
            raw.file_footer_pattern.as_deref(),
        );
        let converters = raw
            .data_processing_options
            .into_iter()
            .enumerate()
            .filter_map(|(j, o)| self.option(&format!("{path}.dataProcessingOptions[{j}]"), o))
            .collect();
        let (file_pattern, stream) = (file_pattern?, stream?);
        Some(Flow {
            id: format!("{file_pattern} -> {stream}"),
            file_pattern,
            delivery_stream: stream,
            initial_position,
            max_buffer_age,
            max_buffer_records,
            max_buffer_bytes,
            multi_line_start,
            skip_header_lines: raw.skip_header_lines.unwrap_or(0),
            truncated_record_terminator: raw
                .truncated_record_terminator
                .unwrap_or_else(|| "\n".into())
                .into_bytes(),
            file_footer,
            poll_interval: ms(poll),
            retry_initial_backoff: ms(retry_initial),
            retry_max_backoff: ms(retry_max.max(retry_initial)),
            publish_queue_capacity: queue,
            aggregated_record_size: aggregated,
            converters,
        })
    }
}

impl AgentConfig {
    /// Reads `path`: JSON when it ends in `.json` (an `agent.json`), TOML otherwise.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let is_json = path.extension().is_some_and(|e| e == "json");
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, is_json, base).map_err(|e| {
            // A list of problems starts on its own line.
            let gap = if e.starts_with('\n') { "" } else { " " };
            format!("{}:{gap}{e}", path.display())
        })
    }

    /// Parses a config's text: agent.json's JSON, or TOML; relative paths are under `base`.
    /// A syntax error is one line; validation problems are one indented line each.
    pub fn parse(text: &str, is_json: bool, base: &Path) -> Result<Self, String> {
        let raw: RawConfig = if is_json {
            let de = &mut serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de)
                .map_err(|e| format!("{}: {}", e.path(), e.inner()))?
        } else {
            toml::from_str(text).map_err(|e| e.to_string())?
        };
        Self::from_raw(raw, base).map_err(|errors| format!("\n  {}", errors.join("\n  ")))
    }

    fn from_raw(raw: RawConfig, base: &Path) -> Result<Self, Vec<String>> {
        let mut c = Checker {
            errors: Vec::new(),
            ignored: Vec::new(),
        };
        c.others("", raw.other);
        if raw.assume_role_arn.is_some() {
            c.errors.push(
                "assumeRoleARN: not supported; give the role's keys through the environment or \
                 a profile instead"
                    .into(),
            );
        }
        let aws_keys = match (raw.aws_access_key_id, raw.aws_secret_access_key) {
            (Some(id), Some(secret)) => Some((id, secret)),
            (None, None) => None,
            _ => {
                c.errors
                    .push("awsAccessKeyId / awsSecretAccessKey: give both or neither".into());
                None
            }
        };
        let metrics_listen = raw.metrics_listen.and_then(|m| match m.parse() {
            Ok(a) => Some(a),
            Err(e) => {
                c.errors
                    .push(format!("metrics_listen: {m:?} is not an address:port: {e}"));
                None
            }
        });
        if raw.flows.is_empty() {
            c.errors.push("flows: at least one flow is needed".into());
        }
        let declared = raw.flows.len();
        let flows: Vec<Flow> = raw
            .flows
            .into_iter()
            .enumerate()
            .filter_map(|(i, f)| c.flow(i, f))
            .collect();
        if declared > 0 && flows.is_empty() && c.errors.is_empty() {
            c.errors.push(
                "flows: no flow has a deliveryStream (Kinesis Data Streams flows are skipped)"
                    .into(),
            );
        }
        let status_period = c.range(
            "log.statusReportingPeriodSeconds",
            raw.log_status_reporting_period_seconds,
            1,
            86_400,
            30,
        );
        let shutdown = c.range(
            "shutdownTimeoutMillis",
            raw.shutdown_timeout_millis,
            1,
            3_600_000,
            10_000,
        );
        let ttl_days = c.range(
            "checkpointTimeToLiveDays",
            raw.checkpoint_time_to_live_days,
            1,
            3650,
            7,
        );
        let mut seen = std::collections::HashSet::new();
        for f in &flows {
            if !seen.insert(&f.id) {
                c.errors.push(format!("flows: {} appears twice", f.id));
            }
        }
        if !c.errors.is_empty() {
            return Err(c.errors);
        }
        let checkpoint_file = raw
            .checkpoint_file
            .unwrap_or_else(|| base.join("hosepipe-agent.checkpoints"));
        Ok(AgentConfig {
            aws_keys,
            // The agent docs' example leaves it "": the default then applies.
            firehose_endpoint: raw.firehose_endpoint.filter(|e| !e.is_empty()),
            ca_bundle: raw.ca_bundle,
            region: raw.region,
            checkpoint_file,
            checkpoint_ttl: Duration::from_secs(ttl_days * 86_400),
            shutdown_timeout: Duration::from_millis(shutdown),
            status_period: Duration::from_secs(status_period),
            metrics_listen,
            flows,
            ignored: c.ignored,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Result<AgentConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.json");
        std::fs::write(&p, text).unwrap();
        AgentConfig::load(&p)
    }

    #[test]
    fn the_agent_docs_example_loads_unchanged() {
        let c = json(
            r#"{
              "cloudwatch.emitMetrics": true,
              "firehose.endpoint": "firehose.us-west-2.amazonaws.com",
              "awsAccessKeyId": "AKID", "awsSecretAccessKey": "SECRET",
              "flows": [
                { "filePattern": "/tmp/app.log*", "deliveryStream": "my-delivery-stream",
                  "initialPosition": "START_OF_FILE", "maxBufferAgeMillis": 5000,
                  "multiLineStartPattern": "^\\[", "skipHeaderLines": 1,
                  "dataProcessingOptions": [
                    { "optionName": "LOGTOJSON", "logFormat": "COMBINEDAPACHELOG" },
                    { "optionName": "ADDMETADATA", "timestamp": "true",
                      "metadata": { "key": "value", "foo": { "bar": "baz" } } } ] } ]
            }"#,
        )
        .unwrap();
        assert_eq!(c.ignored, vec!["cloudwatch.emitMetrics".to_string()]);
        let f = &c.flows[0];
        assert_eq!(f.delivery_stream, "my-delivery-stream");
        assert_eq!(f.initial_position, InitialPosition::StartOfFile);
        assert_eq!(f.max_buffer_age, Duration::from_secs(5));
        assert_eq!(f.max_buffer_records, 500);
        assert_eq!(f.converters.len(), 2);
        assert_eq!(c.aws_keys, Some(("AKID".into(), "SECRET".into())));
    }

    #[test]
    fn the_docs_two_flow_example_keeps_its_firehose_flow() {
        let c = json(
            r#"{ "cloudwatch.emitMetrics": true, "kinesis.endpoint": "", "firehose.endpoint": "",
                 "flows": [
                   { "filePattern": "/tmp/app.log*", "kinesisStream": "yourkinesisstream",
                     "partitionKeyOption": "RANDOM" },
                   { "filePattern": "/tmp/app.log*", "deliveryStream": "yourdeliverystream" } ] }"#,
        )
        .unwrap();
        assert_eq!(c.flows.len(), 1);
        assert_eq!(c.flows[0].delivery_stream, "yourdeliverystream");
        assert_eq!(c.firehose_endpoint, None);
        assert_eq!(c.ignored.len(), 3, "{:?}", c.ignored);
        assert!(c.ignored[2].starts_with("flows[0] (kinesisStream"));
        let e =
            json(r#"{ "flows": [ { "filePattern": "/x", "kinesisStream": "k" } ] }"#).unwrap_err();
        assert!(e.contains("no flow has a deliveryStream"), "{e}");
    }

    #[test]
    fn toml_in_snake_case() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        std::fs::write(
            &p,
            r#"
firehose_endpoint = "http://127.0.0.1:4573"
checkpoint_file = "/tmp/cp"
metrics_listen = "127.0.0.1:9465"

[[flows]]
file_pattern = "/var/log/*.csv"
delivery_stream = "csv"
max_buffer_size_records = 100

[[flows.data_processing_options]]
option_name = "CSVTOJSON"
custom_field_names = ["a", "b"]
delimiter = "\\t"
"#,
        )
        .unwrap();
        let c = AgentConfig::load(&p).unwrap();
        assert_eq!(c.flows[0].max_buffer_records, 100);
        assert_eq!(c.checkpoint_file, PathBuf::from("/tmp/cp"));
        assert!(matches!(
            c.flows[0].converters[0],
            Converter::CsvToJson {
                delimiter: b'\t',
                ..
            }
        ));
    }

    #[test]
    fn every_error_is_named() {
        let e = json(
            r#"{ "flow": [], "flows": [
                { "filePattern": "/x", "maxBufferSizeRecords": 600, "maxBufferAgeMillis": 10,
                  "dataProcessingOptions": [ { "optionName": "LOGTOJSON", "logFormat": "NGINX" },
                                             { "optionName": "CSVTOJSON" } ] } ] }"#,
        )
        .unwrap_err();
        for needle in [
            "flow: unknown setting",
            "flows[0].deliveryStream: required",
            "flows[0].maxBufferSizeRecords: must be between 1 and 500, got 600",
            "flows[0].maxBufferAgeMillis: must be between 1000 and 900000",
            "flows[0].dataProcessingOptions[0].logFormat: \"NGINX\"",
            "flows[0].dataProcessingOptions[1].customFieldNames: required",
        ] {
            assert!(e.contains(needle), "{needle} missing from {e}");
        }
    }

    #[test]
    fn custom_pattern_needs_matching_field_names() {
        let e = json(
            r#"{ "flows": [ { "filePattern": "/x", "deliveryStream": "s",
                  "dataProcessingOptions": [ { "optionName": "LOGTOJSON", "logFormat": "SYSLOG",
                    "matchPattern": "^(\\w+) (\\w+)$", "customFieldNames": ["one"] } ] } ] }"#,
        )
        .unwrap_err();
        assert!(e.contains("1 names for 2 groups"), "{e}");
    }
}
