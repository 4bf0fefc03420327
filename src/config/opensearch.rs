//! `AmazonopensearchserviceDestinationConfiguration` and `ElasticsearchDestinationConfiguration`:
//! validating them into an [`OpenSearchSpec`]. Pure.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::fields::{BufferingHints, FieldError, buffering_limits, strip_nulls};
use super::http;
use super::processing::ProcessingSpec;
use super::s3::{ExtendedS3DestinationConfiguration, S3Spec};
use crate::buffer::Limits;

/// The OpenSearch / Elasticsearch destination block, as the API spells it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct OpenSearchDestinationConfiguration {
    #[serde(rename = "RoleARN")]
    pub role_arn: Option<String>,
    #[serde(rename = "DomainARN")]
    pub domain_arn: Option<String>,
    pub cluster_endpoint: Option<String>,
    pub index_name: Option<String>,
    pub type_name: Option<String>,
    pub index_rotation_period: Option<String>,
    pub buffering_hints: Option<BufferingHints>,
    pub retry_options: Option<Value>,
    #[serde(rename = "S3BackupMode")]
    pub s3_backup_mode: Option<String>,
    #[serde(rename = "S3Configuration")]
    pub s3_configuration: Option<ExtendedS3DestinationConfiguration>,
    pub processing_configuration: Option<Value>,
    pub cloud_watch_logging_options: Option<Value>,
    pub vpc_configuration: Option<Value>,
    pub document_id_options: Option<Value>,
}

/// `IndexRotationPeriod`: the suffix each record's UTC arrival time gives the index name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexRotation {
    NoRotation,
    OneHour,
    OneDay,
    OneWeek,
    OneMonth,
}

impl IndexRotation {
    fn from_api(v: &str) -> Option<Self> {
        Some(match v {
            "NoRotation" => IndexRotation::NoRotation,
            "OneHour" => IndexRotation::OneHour,
            "OneDay" => IndexRotation::OneDay,
            "OneWeek" => IndexRotation::OneWeek,
            "OneMonth" => IndexRotation::OneMonth,
            _ => return None,
        })
    }

    pub fn as_api(self) -> &'static str {
        match self {
            IndexRotation::NoRotation => "NoRotation",
            IndexRotation::OneHour => "OneHour",
            IndexRotation::OneDay => "OneDay",
            IndexRotation::OneWeek => "OneWeek",
            IndexRotation::OneMonth => "OneMonth",
        }
    }
}

/// A validated OpenSearch / Elasticsearch destination.
#[derive(Debug, Clone)]
pub struct OpenSearchSpec {
    /// `ClusterEndpoint`, without a trailing `/`.
    pub endpoint: String,
    pub index: String,
    /// `TypeName` (Elasticsearch 6 only); `None` when empty.
    pub type_name: Option<String>,
    pub rotation: IndexRotation,
    pub limits: Limits,
    /// `RetryOptions.DurationInSeconds`: how long failed documents are retried.
    pub retry: Duration,
    /// `S3BackupMode` `AllDocuments`: every record also goes to the backup bucket.
    pub backup_all: bool,
    /// `S3Configuration`: where failed documents (and with `AllDocuments`, all) go.
    pub backup: S3Spec,
    /// `DocumentIdOptions` `FIREHOSE_DEFAULT` (the default): each document gets an id stable
    /// across retries; `NO_DOCUMENT_ID`: the cluster picks ids.
    pub document_ids: bool,
    pub processing: Option<ProcessingSpec>,
    /// Given as `ElasticsearchDestinationConfiguration` (else the OpenSearch block).
    pub elasticsearch: bool,
    pub raw: OpenSearchDestinationConfiguration,
}

/// Validates an OpenSearch block found at `path`.
pub fn validate(
    raw: &OpenSearchDestinationConfiguration,
    path: &str,
    elasticsearch: bool,
    errors: &mut Vec<FieldError>,
) -> Option<OpenSearchSpec> {
    let before = errors.len();
    let endpoint = match (raw.cluster_endpoint.as_deref(), raw.domain_arn.as_deref()) {
        (Some(_), None) => http::endpoint(&raw.cluster_endpoint, path, "cluster_endpoint", errors),
        (Some(_), Some(_)) => {
            errors.push(FieldError::new(
                &[path, "domain_arn"],
                "give DomainARN or ClusterEndpoint, not both",
            ));
            String::new()
        }
        (None, _) => {
            errors.push(FieldError::new(
                &[path, "cluster_endpoint"],
                "is required (hosepipe reaches the cluster by its endpoint URL; it does not look up a DomainARN)",
            ));
            String::new()
        }
    };
    let index = raw.index_name.clone().unwrap_or_default();
    if !(1..=80).contains(&index.chars().count()) {
        errors.push(FieldError::new(
            &[path, "index_name"],
            "is required (1-80 characters)",
        ));
    }
    let type_name = raw.type_name.clone().filter(|t| !t.is_empty());
    if type_name.as_ref().is_some_and(|t| t.chars().count() > 100) {
        errors.push(FieldError::new(
            &[path, "type_name"],
            "is longer than 100 characters",
        ));
    }
    let rotation = match raw.index_rotation_period.as_deref() {
        None => IndexRotation::OneDay,
        Some(v) => IndexRotation::from_api(v).unwrap_or_else(|| {
            errors.push(FieldError::new(
                &[path, "index_rotation_period"],
                format!("{v:?} is not one of NoRotation, OneHour, OneDay, OneWeek, OneMonth"),
            ));
            IndexRotation::OneDay
        }),
    };
    let limits = buffering_limits(&raw.buffering_hints, path, (5, 300), (100, 900), errors);
    let retry = http::retry_duration(&raw.retry_options, path, 300, errors);
    let backup_all = http::backup_all(
        raw.s3_backup_mode.as_deref(),
        path,
        ("FailedDocumentsOnly", "AllDocuments"),
        errors,
    );
    let document_ids = match raw
        .document_id_options
        .as_ref()
        .and_then(|d| d.get("DefaultDocumentIdFormat"))
        .and_then(Value::as_str)
    {
        None | Some("FIREHOSE_DEFAULT") => true,
        Some("NO_DOCUMENT_ID") => false,
        Some(other) => {
            errors.push(FieldError::new(
                &[path, "document_id_options", "default_document_id_format"],
                format!("{other:?} is not one of FIREHOSE_DEFAULT, NO_DOCUMENT_ID"),
            ));
            true
        }
    };
    if raw.vpc_configuration.as_ref().is_some_and(|v| !v.is_null()) {
        errors.push(FieldError::new(
            &[path, "vpc_configuration"],
            "is not supported: hosepipe reaches the cluster at ClusterEndpoint directly",
        ));
    }
    let processing = http::processing(&raw.processing_configuration, path, errors);
    let backup = http::backup_s3(&raw.s3_configuration, path, errors);
    if errors.len() > before {
        return None;
    }
    Some(OpenSearchSpec {
        endpoint,
        index,
        type_name,
        rotation,
        limits,
        retry,
        backup_all,
        backup: backup?,
        document_ids,
        processing,
        elasticsearch,
        raw: raw.clone(),
    })
}

impl OpenSearchSpec {
    /// DescribeDeliveryStream's field for it, with the defaults in force filled in.
    pub fn description(&self) -> (&'static str, Value) {
        let (spec, raw) = (self, &self.raw);
        let field = if self.elasticsearch {
            "ElasticsearchDestinationDescription"
        } else {
            "AmazonopensearchserviceDestinationDescription"
        };
        let body = strip_nulls(json!({
            "RoleARN": raw.role_arn,
            "ClusterEndpoint": raw.cluster_endpoint,
            "IndexName": spec.index,
            "TypeName": spec.type_name,
            "IndexRotationPeriod": spec.rotation.as_api(),
            "BufferingHints": {
                "SizeInMBs": spec.limits.size_bytes / (1024 * 1024),
                "IntervalInSeconds": spec.limits.interval.as_secs(),
            },
            "RetryOptions": { "DurationInSeconds": spec.retry.as_secs() },
            "S3BackupMode": if spec.backup_all { "AllDocuments" } else { "FailedDocumentsOnly" },
            "S3DestinationDescription": spec.backup.legacy_description(),
            "ProcessingConfiguration": raw.processing_configuration,
            "CloudWatchLoggingOptions": raw.cloud_watch_logging_options.clone()
                .unwrap_or_else(|| json!({"Enabled": false})),
            "DocumentIdOptions": {
                "DefaultDocumentIdFormat":
                    if spec.document_ids { "FIREHOSE_DEFAULT" } else { "NO_DOCUMENT_ID" },
            },
        }));
        (field, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::stream::{CreateDeliveryStreamInput, validate};

    #[test]
    fn the_api_rules_hold() {
        let errs = |conf: Value| {
            let input: CreateDeliveryStreamInput = serde_json::from_value(
                serde_json::json!({ "ElasticsearchDestinationConfiguration": conf }),
            )
            .unwrap();
            validate("s", &input)
                .err()
                .unwrap_or_default()
                .iter()
                .map(|e| e.api_path())
                .collect::<Vec<_>>()
        };
        let base = serde_json::json!({
            "ClusterEndpoint": "https://search:9200", "IndexName": "i",
            "S3Configuration": {"BucketARN": "arn:aws:s3:::bkt"},
        });
        assert!(errs(base.clone()).is_empty());
        let mut bad = base.clone();
        bad["BufferingHints"] = serde_json::json!({"SizeInMBs": 101});
        bad["RetryOptions"] = serde_json::json!({"DurationInSeconds": 7201});
        bad["IndexRotationPeriod"] = "OneYear".into();
        bad["S3BackupMode"] = "Some".into();
        bad["S3Configuration"] = serde_json::json!({"BucketARN": "nope"});
        assert_eq!(
            errs(bad),
            [
                "ElasticsearchDestinationConfiguration.IndexRotationPeriod",
                "ElasticsearchDestinationConfiguration.BufferingHints.SizeInMBs",
                "ElasticsearchDestinationConfiguration.RetryOptions.DurationInSeconds",
                "ElasticsearchDestinationConfiguration.S3BackupMode",
                "ElasticsearchDestinationConfiguration.S3Configuration.BucketARN",
            ]
        );
        let mut no_endpoint = base.clone();
        no_endpoint
            .as_object_mut()
            .unwrap()
            .remove("ClusterEndpoint");
        no_endpoint["DomainARN"] = "arn:aws:es:us-east-1:1:domain/d".into();
        assert_eq!(
            errs(no_endpoint),
            ["ElasticsearchDestinationConfiguration.ClusterEndpoint"]
        );
    }
}
