//! DescribeDeliveryStream's answer: a stream's definition in force, in Firehose's shape, with
//! the defaults it runs with filled in.

use serde_json::{Value, json};

use crate::config::stream::{self, DestinationSpec};
use crate::registry::{AtRest, DESTINATION_ID, StreamView};

/// `{"DeliveryStreamDescription": …}`.
pub fn description(view: &StreamView) -> Value {
    let spec = &view.current.spec;
    let destination = match &spec.destination {
        DestinationSpec::S3(s3) => {
            let extended = s3_description(s3);
            json!({
                "DestinationId": DESTINATION_ID,
                "S3DestinationDescription": legacy_s3_description(&extended),
                "ExtendedS3DestinationDescription": extended,
            })
        }
        DestinationSpec::OpenSearch(os) => {
            let field = if os.elasticsearch {
                "ElasticsearchDestinationDescription"
            } else {
                "AmazonopensearchserviceDestinationDescription"
            };
            json!({ "DestinationId": DESTINATION_ID, field: opensearch_description(os) })
        }
        DestinationSpec::Splunk(sp) => json!({
            "DestinationId": DESTINATION_ID,
            "SplunkDestinationDescription": splunk_description(sp),
        }),
    };
    json!({
        "DeliveryStreamDescription": {
            "DeliveryStreamName": view.name,
            "DeliveryStreamARN": view.arn,
            "DeliveryStreamStatus": "ACTIVE",
            "DeliveryStreamEncryptionConfiguration": at_rest_description(&view.at_rest),
            "DeliveryStreamType": spec.stream_type,
            "VersionId": view.version.to_string(),
            "CreateTimestamp": view.created,
            "LastUpdateTimestamp": view.updated,
            "Destinations": [destination],
            "HasMoreDestinations": false,
        }
    })
}

/// `DeliveryStreamEncryptionConfiguration`.
fn at_rest_description(at_rest: &AtRest) -> Value {
    let mut out = json!({ "Status": at_rest.status });
    if let Some(key) = &at_rest.key {
        out["KeyType"] = json!(key.key_type());
        if let Some(arn) = key.key_arn() {
            out["KeyARN"] = json!(arn);
        }
    }
    if let Some((kind, details)) = &at_rest.failure {
        out["FailureDescription"] = json!({ "Type": kind, "Details": details });
    }
    out
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

/// `ExtendedS3DestinationDescription` with the defaults in force filled in.
fn s3_description(spec: &stream::S3Spec) -> Value {
    let raw = &spec.raw;
    strip_nulls(json!({
        "RoleARN": raw.role_arn,
        "BucketARN": raw.bucket_arn,
        "Prefix": raw.prefix,
        "ErrorOutputPrefix": raw.error_output_prefix,
        "BufferingHints": {
            "SizeInMBs": spec.limits.size_bytes / (1024 * 1024),
            "IntervalInSeconds": spec.limits.interval.as_secs(),
        },
        "CompressionFormat": spec.compression.as_api(),
        "EncryptionConfiguration": raw.encryption_configuration.clone()
            .unwrap_or_else(|| json!({"NoEncryptionConfig": "NoEncryption"})),
        "CloudWatchLoggingOptions": raw.cloud_watch_logging_options.clone()
            .unwrap_or_else(|| json!({"Enabled": false})),
        "ProcessingConfiguration": raw.processing_configuration,
        "S3BackupMode": raw.s3_backup_mode.clone().unwrap_or_else(|| "Disabled".into()),
        "DataFormatConversionConfiguration": raw.data_format_conversion_configuration,
        "DynamicPartitioningConfiguration": raw.dynamic_partitioning_configuration,
        "FileExtension": raw.file_extension,
        "CustomTimeZone": raw.custom_time_zone,
    }))
}

/// The deprecated `S3DestinationDescription`: the fields its shape has.
fn legacy_s3_description(extended: &Value) -> Value {
    let mut legacy = serde_json::Map::new();
    for field in [
        "RoleARN",
        "BucketARN",
        "Prefix",
        "ErrorOutputPrefix",
        "BufferingHints",
        "CompressionFormat",
        "EncryptionConfiguration",
        "CloudWatchLoggingOptions",
    ] {
        if let Some(v) = extended.get(field) {
            legacy.insert(field.to_string(), v.clone());
        }
    }
    Value::Object(legacy)
}

/// `AmazonopensearchserviceDestinationDescription` with the defaults in force filled in.
fn opensearch_description(spec: &crate::config::opensearch::OpenSearchSpec) -> Value {
    let raw = &spec.raw;
    strip_nulls(json!({
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
        "S3DestinationDescription": legacy_s3_description(&s3_description(&spec.backup)),
        "ProcessingConfiguration": raw.processing_configuration,
        "CloudWatchLoggingOptions": raw.cloud_watch_logging_options.clone()
            .unwrap_or_else(|| json!({"Enabled": false})),
        "DocumentIdOptions": {
            "DefaultDocumentIdFormat":
                if spec.document_ids { "FIREHOSE_DEFAULT" } else { "NO_DOCUMENT_ID" },
        },
    }))
}

/// `SplunkDestinationDescription` with the defaults in force filled in.
fn splunk_description(spec: &crate::config::splunk::SplunkSpec) -> Value {
    let raw = &spec.raw;
    strip_nulls(json!({
        "HECEndpoint": raw.hec_endpoint,
        "HECEndpointType": raw.hec_endpoint_type,
        "HECToken": raw.hec_token,
        "HECAcknowledgmentTimeoutInSeconds": spec.ack_timeout.as_secs(),
        "RetryOptions": { "DurationInSeconds": spec.retry.as_secs() },
        "S3BackupMode": if spec.backup_all { "AllEvents" } else { "FailedEventsOnly" },
        "S3DestinationDescription": legacy_s3_description(&s3_description(&spec.backup)),
        "ProcessingConfiguration": raw.processing_configuration,
        "CloudWatchLoggingOptions": raw.cloud_watch_logging_options.clone()
            .unwrap_or_else(|| json!({"Enabled": false})),
        "BufferingHints": {
            "SizeInMBs": spec.limits.size_bytes / (1024 * 1024),
            "IntervalInSeconds": spec.limits.interval.as_secs(),
        },
    }))
}
