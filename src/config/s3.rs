//! The S3 destination (`ExtendedS3DestinationConfiguration`): its API shape and its validation
//! into an [`S3Spec`]. The S3 types are shared by the other destinations' backup and error
//! output settings.

use std::time::Duration;

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::fields::{
    BufferingHints, FieldError, buffering_limits, check_range, enabled, strip_nulls,
};
use crate::buffer::Limits;
use crate::compress::CompressionFormat;
use crate::encode::prefix::{PrefixKind, Template};

/// `ExtendedS3DestinationConfiguration` (also used for its `Update` and the deprecated
/// `S3DestinationConfiguration`, whose fields are a subset).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ExtendedS3DestinationConfiguration {
    #[serde(rename = "RoleARN")]
    pub role_arn: Option<String>,
    #[serde(rename = "BucketARN")]
    pub bucket_arn: Option<String>,
    pub prefix: Option<String>,
    pub error_output_prefix: Option<String>,
    pub buffering_hints: Option<BufferingHints>,
    pub compression_format: Option<String>,
    pub encryption_configuration: Option<Value>,
    pub cloud_watch_logging_options: Option<Value>,
    pub processing_configuration: Option<Value>,
    pub s3_backup_mode: Option<String>,
    pub s3_backup_configuration: Option<Value>,
    pub s3_backup_update: Option<Value>,
    pub data_format_conversion_configuration: Option<Value>,
    pub dynamic_partitioning_configuration: Option<Value>,
    pub file_extension: Option<String>,
    pub custom_time_zone: Option<String>,
}

/// A validated S3 destination.
#[derive(Debug, Clone)]
pub struct S3Spec {
    pub bucket: String,
    pub prefix: Template,
    pub error_prefix: Template,
    pub limits: Limits,
    pub compression: CompressionFormat,
    pub extension: String,
    pub time_zone: Tz,
    /// `ProcessingConfiguration`, when enabled.
    pub processing: Option<super::processing::ProcessingSpec>,
    /// `DataFormatConversionConfiguration`, when enabled.
    pub conversion: Option<super::conversion::ConversionSpec>,
    /// `DynamicPartitioningConfiguration`, when enabled.
    pub partitioning: Option<PartitioningSpec>,
    /// `EncryptionConfiguration.KMSEncryptionConfig`: every object is envelope-encrypted.
    pub encryption: Option<EncryptionSpec>,
    /// The configuration as given, for DescribeDeliveryStream and UpdateDestination merges.
    pub raw: ExtendedS3DestinationConfiguration,
    /// Created through the deprecated `S3DestinationConfiguration`.
    pub legacy: bool,
}

/// Client-side envelope encryption of a stream's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionSpec {
    /// `AWSKMSKeyARN`: the master key, as the configured key service names it.
    pub key_id: String,
}

/// Dynamic partitioning's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitioningSpec {
    /// `RetryOptions.DurationInSeconds` (default 300): how long an object that S3 keeps failing
    /// is retried before its records are also offered to the error output.
    pub retry: Duration,
}

/// Validates `DynamicPartitioningConfiguration` against the rest of the S3 block.
fn validate_partitioning(
    raw: &ExtendedS3DestinationConfiguration,
    path: &str,
    prefix: Option<&Template>,
    processing: Option<&super::processing::ProcessingSpec>,
    errors: &mut Vec<FieldError>,
) -> Option<PartitioningSpec> {
    let block = &raw.dynamic_partitioning_configuration;
    let here = [path, "dynamic_partitioning_configuration"];
    let (query_keys, lambda_keys) = prefix.map(Template::partition_keys).unwrap_or_default();
    if !enabled(block) {
        let used = query_keys.iter().chain(&lambda_keys).next();
        if let Some(key) = used {
            errors.push(FieldError::new(
                &[path, "prefix"],
                format!("uses partition key {key:?}, which needs DynamicPartitioningConfiguration.Enabled"),
            ));
        }
        if processing.is_some_and(|p| p.metadata_query.is_some()) {
            errors.push(FieldError::new(
                &[path, "processing_configuration"],
                "MetadataExtraction needs DynamicPartitioningConfiguration.Enabled",
            ));
        }
        return None;
    }
    let block = block.as_ref().expect("enabled implies present");
    match block.get("Enabled") {
        None | Some(Value::Bool(_)) => {}
        Some(other) => errors.push(FieldError::new(
            &[&here[..], &["enabled"]].concat(),
            format!("{other} is not true or false"),
        )),
    }
    let retry = match block
        .get("RetryOptions")
        .and_then(|r| r.get("DurationInSeconds"))
    {
        None | Some(Value::Null) => 300,
        Some(v) => match v.as_i64() {
            Some(secs) => {
                check_range(
                    errors,
                    &[&here[..], &["retry_options", "duration_in_seconds"]].concat(),
                    secs,
                    0..=7200,
                );
                secs.max(0)
            }
            None => {
                errors.push(FieldError::new(
                    &[&here[..], &["retry_options", "duration_in_seconds"]].concat(),
                    format!("{v} is not a number of seconds"),
                ));
                300
            }
        },
    };
    if raw.error_output_prefix.as_deref().unwrap_or("").is_empty() {
        errors.push(FieldError::new(
            &[path, "error_output_prefix"],
            "is required when dynamic partitioning is enabled",
        ));
    }
    let has_query = processing.is_some_and(|p| p.metadata_query.is_some());
    let has_lambda = processing.is_some_and(|p| p.lambda.is_some());
    if let Some(key) = query_keys.first().filter(|_| !has_query) {
        errors.push(FieldError::new(
            &[path, "prefix"],
            format!("!{{partitionKeyFromQuery:{key}}} needs a MetadataExtraction processor"),
        ));
    }
    if let Some(key) = lambda_keys.first().filter(|_| !has_lambda) {
        errors.push(FieldError::new(
            &[path, "prefix"],
            format!("!{{partitionKeyFromLambda:{key}}} needs a Lambda processor"),
        ));
    }
    Some(PartitioningSpec {
        retry: Duration::from_secs(retry as u64),
    })
}

/// Validates an S3 destination block found at `path`.
pub fn validate_s3(
    raw: &ExtendedS3DestinationConfiguration,
    path: &str,
    legacy: bool,
    errors: &mut Vec<FieldError>,
) -> Option<S3Spec> {
    let before = errors.len();
    let bucket = match raw.bucket_arn.as_deref() {
        None => {
            errors.push(FieldError::new(&[path, "bucket_arn"], "is required"));
            String::new()
        }
        Some(arn) => match arn.strip_prefix("arn:") {
            Some(rest)
                if rest.split(':').nth(1) == Some("s3")
                    && rest.splitn(5, ':').count() == 5
                    && hosepipe_sinks::valid_bucket_name(
                        rest.splitn(5, ':').nth(4).unwrap_or(""),
                    ) =>
            {
                rest.splitn(5, ':').nth(4).unwrap_or_default().to_string()
            }
            _ => {
                errors.push(FieldError::new(
                    &[path, "bucket_arn"],
                    format!("{arn:?} is not an S3 bucket ARN (arn:aws:s3:::bucket-name, with a valid bucket name)"),
                ));
                String::new()
            }
        },
    };
    let converting = raw
        .data_format_conversion_configuration
        .as_ref()
        .is_some_and(|v| !v.is_null() && v.get("Enabled") != Some(&Value::Bool(false)));
    // Firehose's default buffer becomes 128 MB with format conversion.
    let limits = buffering_limits(
        &raw.buffering_hints,
        path,
        (if converting { 128 } else { 5 }, 300),
        (128, 900),
        errors,
    );
    let given_size = raw.buffering_hints.as_ref().and_then(|h| h.size_in_mbs);
    let compression = match raw.compression_format.as_deref() {
        None => CompressionFormat::Uncompressed,
        Some(v) => CompressionFormat::from_api(v).unwrap_or_else(|| {
            errors.push(FieldError::new(
                &[path, "compression_format"],
                format!("{v:?} is not one of {}", CompressionFormat::API_VALUES),
            ));
            CompressionFormat::Uncompressed
        }),
    };
    let prefix_text = raw.prefix.clone().unwrap_or_default();
    if prefix_text.chars().count() > 1024 {
        errors.push(FieldError::new(
            &[path, "prefix"],
            "is longer than 1024 characters",
        ));
    }
    // With dynamic partitioning the prefix is used as written: the partition keys name the
    // object's place, and no default time prefix is appended.
    let prefix = if enabled(&raw.dynamic_partitioning_configuration) {
        Template::parse(&prefix_text, PrefixKind::Prefix)
    } else {
        Template::for_prefix(&prefix_text)
    }
    .map_err(|m| errors.push(FieldError::new(&[path, "prefix"], m)))
    .ok();
    let error_prefix = Template::for_error_prefix(raw.error_output_prefix.as_deref(), &prefix_text)
        .map_err(|m| errors.push(FieldError::new(&[path, "error_output_prefix"], m)))
        .ok();
    let extension = match raw.file_extension.as_deref() {
        None | Some("") if converting => ".parquet".to_string(),
        None | Some("") => compression.extension().to_string(),
        Some(ext) => {
            let ok = ext.len() <= 128
                && ext.starts_with('.')
                && ext.len() > 1
                && ext[1..].chars().all(|c| {
                    c.is_ascii_digit() || c.is_ascii_lowercase() || "!-_.*'()".contains(c)
                });
            if !ok {
                errors.push(FieldError::new(
                    &[path, "file_extension"],
                    format!(
                        "{ext:?} must match ^$|\\.[0-9a-z!\\-_.*'()]+ and be at most 128 characters"
                    ),
                ));
            }
            ext.to_string()
        }
    };
    let time_zone = match raw.custom_time_zone.as_deref() {
        None | Some("") => Tz::UTC,
        Some(name) => name.parse::<Tz>().unwrap_or_else(|_| {
            errors.push(FieldError::new(
                &[path, "custom_time_zone"],
                format!("{name:?} is not a time zone name (e.g. UTC, Asia/Tokyo)"),
            ));
            Tz::UTC
        }),
    };
    let processing = super::processing::validate(
        &raw.processing_configuration,
        &[path, "processing_configuration"],
        errors,
    );
    let conversion = super::conversion::validate(
        &raw.data_format_conversion_configuration,
        &[path, "data_format_conversion_configuration"],
        errors,
    );
    if conversion.is_some() {
        if compression != CompressionFormat::Uncompressed {
            errors.push(FieldError::new(
                &[path, "compression_format"],
                "must be UNCOMPRESSED with data format conversion (set the Parquet codec in ParquetSerDe.Compression)",
            ));
        }
        if let Some(size) = given_size
            && size < 64
        {
            errors.push(FieldError::new(
                &[path, "buffering_hints", "size_in_mbs"],
                format!("{size} is below 64, the minimum with data format conversion"),
            ));
        }
    }
    let partitioning =
        validate_partitioning(raw, path, prefix.as_ref(), processing.as_ref(), errors);
    let encryption = match raw
        .encryption_configuration
        .as_ref()
        .filter(|v| !v.is_null())
    {
        None => None,
        Some(enc) => match (
            enc.get("KMSEncryptionConfig"),
            enc.get("NoEncryptionConfig"),
        ) {
            (Some(_), Some(_)) => {
                errors.push(FieldError::new(
                    &[path, "encryption_configuration"],
                    "give KMSEncryptionConfig or NoEncryptionConfig, not both",
                ));
                None
            }
            (Some(kms), None) => match kms.get("AWSKMSKeyARN").and_then(Value::as_str) {
                Some(key) if (1..=512).contains(&key.len()) => Some(EncryptionSpec {
                    key_id: key.to_string(),
                }),
                _ => {
                    errors.push(FieldError::new(
                        &[path, "encryption_configuration", "kms_encryption_config", "aws_kms_key_arn"],
                        "is required: the master key (a key ARN, an alias, or a local keyring key name)",
                    ));
                    None
                }
            },
            (None, Some(v)) if v.as_str() == Some("NoEncryption") => None,
            (None, Some(v)) => {
                errors.push(FieldError::new(
                    &[path, "encryption_configuration", "no_encryption_config"],
                    format!("{v} is not NoEncryption"),
                ));
                None
            }
            (None, None) => None,
        },
    };
    match raw.s3_backup_mode.as_deref() {
        None | Some("Disabled") => {}
        Some("Enabled") => errors.push(FieldError::new(
            &[path, "s3_backup_mode"],
            "source record backup is not supported by this hosepipe version",
        )),
        Some(other) => errors.push(FieldError::new(
            &[path, "s3_backup_mode"],
            format!("{other:?} is not one of Disabled, Enabled"),
        )),
    }
    if errors.len() > before {
        return None;
    }
    Some(S3Spec {
        bucket,
        prefix: prefix?,
        error_prefix: error_prefix?,
        limits,
        compression,
        extension,
        time_zone,
        processing,
        conversion,
        partitioning,
        encryption,
        raw: raw.clone(),
        legacy,
    })
}
impl S3Spec {
    /// `ExtendedS3DestinationDescription` with the defaults in force filled in.
    pub fn description(&self) -> Value {
        let (spec, raw) = (self, &self.raw);
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

    /// The deprecated `S3DestinationDescription` (the fields its shape has), as the backup
    /// bucket of other destinations is described too.
    pub fn legacy_description(&self) -> Value {
        legacy_description(&self.description())
    }
}

/// The deprecated `S3DestinationDescription`: the fields its shape has.
pub fn legacy_description(extended: &Value) -> Value {
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
