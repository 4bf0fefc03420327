//! `SplunkDestinationConfiguration`: validating it into a [`SplunkSpec`]. Pure.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::fields::{BufferingHints, FieldError, check_range, strip_nulls};
use super::http::{self, Credential};
use super::processing::ProcessingSpec;
use super::s3::{ExtendedS3DestinationConfiguration, S3Spec};
use crate::buffer::Limits;

/// The Splunk destination block, as the API spells it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct SplunkDestinationConfiguration {
    #[serde(rename = "HECEndpoint")]
    pub hec_endpoint: Option<String>,
    #[serde(rename = "HECEndpointType")]
    pub hec_endpoint_type: Option<String>,
    #[serde(rename = "HECToken")]
    pub hec_token: Option<String>,
    #[serde(rename = "HECAcknowledgmentTimeoutInSeconds")]
    pub hec_acknowledgment_timeout_in_seconds: Option<i64>,
    pub retry_options: Option<Value>,
    #[serde(rename = "S3BackupMode")]
    pub s3_backup_mode: Option<String>,
    #[serde(rename = "S3Configuration")]
    pub s3_configuration: Option<ExtendedS3DestinationConfiguration>,
    pub processing_configuration: Option<Value>,
    pub cloud_watch_logging_options: Option<Value>,
    pub buffering_hints: Option<BufferingHints>,
    pub secrets_manager_configuration: Option<Value>,
}

/// `HECEndpointType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointType {
    /// `/services/collector/raw`: the records' bytes as sent.
    Raw,
    /// `/services/collector/event`: each record as an event's `event`.
    Event,
}

/// A validated Splunk destination.
#[derive(Debug, Clone)]
pub struct SplunkSpec {
    /// `HECEndpoint`, without a trailing `/`.
    pub endpoint: String,
    pub endpoint_type: EndpointType,
    /// `HECToken`, or the secret holding it as `hec_token`.
    pub token: Credential,
    /// `HECAcknowledgmentTimeoutInSeconds`: how long an indexer acknowledgement may take before
    /// the batch is sent again.
    pub ack_timeout: Duration,
    pub retry: Duration,
    /// `S3BackupMode` `AllEvents`.
    pub backup_all: bool,
    pub backup: S3Spec,
    pub limits: Limits,
    pub processing: Option<ProcessingSpec>,
    pub raw: SplunkDestinationConfiguration,
}

/// Validates a Splunk block found at `path`.
pub fn validate(
    raw: &SplunkDestinationConfiguration,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<SplunkSpec> {
    let before = errors.len();
    let endpoint = http::endpoint(&raw.hec_endpoint, path, "hec_endpoint", errors);
    let endpoint_type = match raw.hec_endpoint_type.as_deref() {
        Some("Raw") => EndpointType::Raw,
        Some("Event") => EndpointType::Event,
        other => {
            errors.push(FieldError::new(
                &[path, "hec_endpoint_type"],
                match other {
                    None => "is required (Raw or Event)".to_string(),
                    Some(v) => format!("{v:?} is not one of Raw, Event"),
                },
            ));
            EndpointType::Raw
        }
    };
    if raw.hec_token.as_ref().is_some_and(|t| t.len() > 2048) {
        errors.push(FieldError::new(
            &[path, "hec_token"],
            "must be at most 2048 characters",
        ));
    }
    let token = http::credential(
        raw.hec_token.as_deref().filter(|t| !t.is_empty()),
        &raw.secrets_manager_configuration,
        (&["hec_token"], "hec_token"),
        path,
        true,
        errors,
    );
    let ack = raw.hec_acknowledgment_timeout_in_seconds.unwrap_or(180);
    check_range(
        errors,
        &[path, "hec_acknowledgment_timeout_in_seconds"],
        ack,
        180..=600,
    );
    let common = http::Common {
        retry_options: &raw.retry_options,
        s3_backup_mode: raw.s3_backup_mode.as_deref(),
        buffering_hints: &raw.buffering_hints,
        processing_configuration: &raw.processing_configuration,
        s3_configuration: &raw.s3_configuration,
    }
    .validate(
        &http::CommonRules {
            retry_default: 3600,
            modes: ("FailedEventsOnly", "AllEvents"),
            buffering_default: (5, 60),
            buffering_max: (5, 60),
        },
        path,
        errors,
    );
    if errors.len() > before {
        return None;
    }
    Some(SplunkSpec {
        endpoint,
        endpoint_type,
        token: token?,
        ack_timeout: Duration::from_secs(ack.clamp(180, 600) as u64),
        retry: common.retry,
        backup_all: common.backup_all,
        backup: common.backup?,
        limits: common.limits,
        processing: common.processing,
        raw: raw.clone(),
    })
}

impl SplunkSpec {
    /// `SplunkDestinationDescription`, with the defaults in force filled in.
    pub fn description(&self) -> (&'static str, Value) {
        let (spec, raw) = (self, &self.raw);
        let body = strip_nulls(json!({
            "HECEndpoint": raw.hec_endpoint,
            "HECEndpointType": raw.hec_endpoint_type,
            "HECToken": raw.hec_token,
            "SecretsManagerConfiguration": raw.secrets_manager_configuration,
            "HECAcknowledgmentTimeoutInSeconds": spec.ack_timeout.as_secs(),
            "RetryOptions": { "DurationInSeconds": spec.retry.as_secs() },
            "S3BackupMode": if spec.backup_all { "AllEvents" } else { "FailedEventsOnly" },
            "S3DestinationDescription": spec.backup.legacy_description(),
            "ProcessingConfiguration": raw.processing_configuration,
            "CloudWatchLoggingOptions": raw.cloud_watch_logging_options.clone()
                .unwrap_or_else(|| json!({"Enabled": false})),
            "BufferingHints": {
                "SizeInMBs": spec.limits.size_bytes / (1024 * 1024),
                "IntervalInSeconds": spec.limits.interval.as_secs(),
            },
        }));
        ("SplunkDestinationDescription", body)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::stream::{CreateDeliveryStreamInput, validate};

    #[test]
    fn the_api_rules_hold() {
        let input: CreateDeliveryStreamInput = serde_json::from_value(serde_json::json!({
            "SplunkDestinationConfiguration": {
                "HECEndpoint": "splunk:8088", "HECAcknowledgmentTimeoutInSeconds": 100,
                "BufferingHints": {"SizeInMBs": 6, "IntervalInSeconds": 61},
                "RetryOptions": {"DurationInSeconds": -1}, "S3BackupMode": "Some",
            }
        }))
        .unwrap();
        let paths: Vec<String> = validate("s", &input)
            .unwrap_err()
            .iter()
            .map(|e| e.api_path())
            .collect();
        let at = |f: &str| format!("SplunkDestinationConfiguration.{f}");
        assert_eq!(
            paths,
            [
                "HECEndpoint",
                "HECEndpointType",
                "HECToken",
                "HECAcknowledgmentTimeoutInSeconds",
                "RetryOptions.DurationInSeconds",
                "S3BackupMode",
                "BufferingHints.SizeInMBs",
                "BufferingHints.IntervalInSeconds",
                "S3Configuration",
            ]
            .map(at)
        );
    }
}
