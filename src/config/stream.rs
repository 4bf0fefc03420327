//! A delivery stream's definition, in the shape of Firehose's `CreateDeliveryStream` request, and
//! its validation into typed values. The API and the config file share these types: the config
//! file spells the same fields in snake_case (see [`super::names`]).

use std::time::Duration;

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::buffer::Limits;
use crate::compress::CompressionFormat;
use crate::deliver::prefix::{PrefixKind, Template};

/// One validation failure: where (snake_case path segments) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: Vec<String>,
    pub message: String,
}

impl FieldError {
    pub fn new(path: &[&str], message: impl Into<String>) -> Self {
        FieldError {
            path: path.iter().map(|s| s.to_string()).collect(),
            message: message.into(),
        }
    }

    /// `extended_s3_destination_configuration.buffering_hints.size_in_mbs: …` (config style).
    pub fn config_path(&self) -> String {
        self.path.join(".")
    }

    /// `ExtendedS3DestinationConfiguration.BufferingHints.SizeInMBs` (API style).
    pub fn api_path(&self) -> String {
        self.path
            .iter()
            .map(|s| super::names::snake_to_api(s))
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// `CreateDeliveryStream`'s input. Fields hosepipe accepts but does not act on yet are kept as
/// JSON and refused by [`validate`] when they ask for something hosepipe cannot do.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CreateDeliveryStreamInput {
    pub delivery_stream_name: Option<String>,
    pub delivery_stream_type: Option<String>,
    pub direct_put_source_configuration: Option<Value>,
    pub kinesis_stream_source_configuration: Option<Value>,
    #[serde(rename = "MSKSourceConfiguration")]
    pub msk_source_configuration: Option<Value>,
    pub database_source_configuration: Option<Value>,
    pub delivery_stream_encryption_configuration_input: Option<StreamEncryptionInput>,
    /// The deprecated S3 destination; a subset of the extended one.
    pub s3_destination_configuration: Option<ExtendedS3DestinationConfiguration>,
    pub extended_s3_destination_configuration: Option<ExtendedS3DestinationConfiguration>,
    pub redshift_destination_configuration: Option<Value>,
    pub elasticsearch_destination_configuration:
        Option<super::opensearch::OpenSearchDestinationConfiguration>,
    pub amazonopensearchservice_destination_configuration:
        Option<super::opensearch::OpenSearchDestinationConfiguration>,
    pub amazon_open_search_serverless_destination_configuration: Option<Value>,
    pub splunk_destination_configuration: Option<super::splunk::SplunkDestinationConfiguration>,
    pub http_endpoint_destination_configuration: Option<Value>,
    pub snowflake_destination_configuration: Option<Value>,
    pub iceberg_destination_configuration: Option<Value>,
    pub tags: Option<Vec<Tag>>,
}

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

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct BufferingHints {
    #[serde(rename = "SizeInMBs")]
    pub size_in_mbs: Option<i64>,
    pub interval_in_seconds: Option<i64>,
}

/// `DeliveryStreamEncryptionConfigurationInput`: the stream's data at rest (its spool).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct StreamEncryptionInput {
    pub key_type: Option<String>,
    #[serde(rename = "KeyARN")]
    pub key_arn: Option<String>,
}

/// A validated at-rest encryption setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtRestKey {
    /// `AWS_OWNED_CMK`: the daemon's own master key (`[encryption] owned_key`).
    Owned,
    /// `CUSTOMER_MANAGED_CMK` with its `KeyARN` (a key the configured key service knows).
    Customer(String),
}

impl AtRestKey {
    pub fn key_type(&self) -> &'static str {
        match self {
            AtRestKey::Owned => "AWS_OWNED_CMK",
            AtRestKey::Customer(_) => "CUSTOMER_MANAGED_CMK",
        }
    }

    pub fn key_arn(&self) -> Option<&str> {
        match self {
            AtRestKey::Owned => None,
            AtRestKey::Customer(arn) => Some(arn),
        }
    }
}

/// Checks a `DeliveryStreamEncryptionConfigurationInput` (at create, or
/// StartDeliveryStreamEncryption's).
pub fn validate_at_rest(
    input: &StreamEncryptionInput,
    path: &str,
) -> Result<AtRestKey, FieldError> {
    let arn = input.key_arn.as_deref();
    match (input.key_type.as_deref(), arn) {
        (Some("AWS_OWNED_CMK"), None) => Ok(AtRestKey::Owned),
        (Some("AWS_OWNED_CMK"), Some(_)) => Err(FieldError::new(
            &[path, "key_arn"],
            "must not be given when KeyType is AWS_OWNED_CMK",
        )),
        (Some("CUSTOMER_MANAGED_CMK"), Some(arn)) if (1..=512).contains(&arn.len()) => {
            Ok(AtRestKey::Customer(arn.to_string()))
        }
        (Some("CUSTOMER_MANAGED_CMK"), _) => Err(FieldError::new(
            &[path, "key_arn"],
            "is required (1-512 characters) when KeyType is CUSTOMER_MANAGED_CMK",
        )),
        (None, _) => Err(FieldError::new(&[path, "key_type"], "is required")),
        (Some(other), _) => Err(FieldError::new(
            &[path, "key_type"],
            format!("{other:?} is not one of AWS_OWNED_CMK, CUSTOMER_MANAGED_CMK"),
        )),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Tag {
    pub key: String,
    pub value: Option<String>,
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

/// A validated destination.
#[derive(Debug, Clone)]
// One per stream, built once: the size of the S3 variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum DestinationSpec {
    S3(S3Spec),
    OpenSearch(Box<super::opensearch::OpenSearchSpec>),
    Splunk(Box<super::splunk::SplunkSpec>),
}

/// A destination block found in a create request.
enum Given<'a> {
    S3((&'a ExtendedS3DestinationConfiguration, &'static str, bool)),
    Search(
        (
            &'a super::opensearch::OpenSearchDestinationConfiguration,
            &'static str,
            bool,
        ),
    ),
    Splunk(&'a super::splunk::SplunkDestinationConfiguration),
}

/// A validated stream definition.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub name: String,
    pub stream_type: String,
    pub destination: DestinationSpec,
    /// `DeliveryStreamEncryptionConfigurationInput`: the spool is sealed at rest.
    pub at_rest: Option<AtRestKey>,
}

impl StreamSpec {
    pub fn limits(&self) -> Limits {
        match &self.destination {
            DestinationSpec::S3(s3) => s3.limits,
            DestinationSpec::OpenSearch(os) => os.limits,
            DestinationSpec::Splunk(sp) => sp.limits,
        }
    }

    /// Where the stream's S3 objects go: the S3 destination itself, or the backup bucket of
    /// the others (error output, and all records with `AllDocuments`).
    pub fn s3_output(&self) -> &S3Spec {
        match &self.destination {
            DestinationSpec::S3(s3) => s3,
            DestinationSpec::OpenSearch(os) => &os.backup,
            DestinationSpec::Splunk(sp) => &sp.backup,
        }
    }

    /// The destination's `ProcessingConfiguration`.
    pub fn processing(&self) -> Option<&super::processing::ProcessingSpec> {
        match &self.destination {
            DestinationSpec::S3(s3) => s3.processing.as_ref(),
            DestinationSpec::OpenSearch(os) => os.processing.as_ref(),
            DestinationSpec::Splunk(sp) => sp.processing.as_ref(),
        }
    }
}

/// Destination fields hosepipe does not deliver to yet, with their API names.
fn unsupported_destinations(input: &CreateDeliveryStreamInput) -> Vec<&'static str> {
    let mut out = Vec::new();
    let fields: [(&Option<Value>, &'static str); 5] = [
        (
            &input.redshift_destination_configuration,
            "redshift_destination_configuration",
        ),
        (
            &input.amazon_open_search_serverless_destination_configuration,
            "amazon_open_search_serverless_destination_configuration",
        ),
        (
            &input.http_endpoint_destination_configuration,
            "http_endpoint_destination_configuration",
        ),
        (
            &input.snowflake_destination_configuration,
            "snowflake_destination_configuration",
        ),
        (
            &input.iceberg_destination_configuration,
            "iceberg_destination_configuration",
        ),
    ];
    for (value, name) in fields {
        if value.is_some() {
            out.push(name);
        }
    }
    out
}

/// Stream names: 1–64 characters of `[a-zA-Z0-9_.-]`.
pub fn valid_stream_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Tag keys: 1–128 characters, not starting with `aws:`, of letters, digits, spaces and
/// `_.:/=+-@%`; values 0–256 characters.
pub fn validate_tags(tags: &[Tag], path: &[&str]) -> Result<(), FieldError> {
    if tags.len() > 50 {
        return Err(FieldError::new(path, "at most 50 tags are allowed"));
    }
    for tag in tags {
        let key_ok = (1..=128).contains(&tag.key.chars().count())
            && !tag.key.starts_with("aws:")
            && tag
                .key
                .chars()
                .all(|c| c.is_alphanumeric() || c == ' ' || "_.:/=+-@%".contains(c));
        if !key_ok {
            return Err(FieldError::new(
                path,
                format!(
                    "tag key {:?} must be 1-128 letters, digits, spaces or _.:/=+-@% and not start with aws:",
                    tag.key
                ),
            ));
        }
        if tag
            .value
            .as_deref()
            .is_some_and(|v| v.chars().count() > 256)
        {
            return Err(FieldError::new(
                path,
                format!("the value of tag {:?} is over 256 characters", tag.key),
            ));
        }
    }
    Ok(())
}

/// True when a processing/conversion/partitioning block is present and not disabled.
pub fn enabled(block: &Option<Value>) -> bool {
    match block {
        None | Some(Value::Null) => false,
        Some(v) => v.get("Enabled").and_then(Value::as_bool).unwrap_or(true),
    }
}

/// `BufferingHints` found under `path`: sizes in MB, intervals in seconds, each `(size,
/// interval)`; a value out of range is an error (and is clamped into it).
pub(crate) fn buffering_limits(
    hints: &Option<BufferingHints>,
    path: &str,
    default: (i64, i64),
    max: (i64, i64),
    errors: &mut Vec<FieldError>,
) -> Limits {
    let hints = hints.clone().unwrap_or_default();
    let size = hints.size_in_mbs.unwrap_or(default.0);
    let interval = hints.interval_in_seconds.unwrap_or(default.1);
    check_range(
        errors,
        &[path, "buffering_hints", "size_in_mbs"],
        size,
        1..=max.0,
    );
    check_range(
        errors,
        &[path, "buffering_hints", "interval_in_seconds"],
        interval,
        0..=max.1,
    );
    Limits {
        size_bytes: size.clamp(1, max.0) as u64 * 1024 * 1024,
        interval: Duration::from_secs(interval.clamp(0, max.1) as u64),
    }
}

pub(crate) fn check_range(
    errors: &mut Vec<FieldError>,
    path: &[&str],
    value: i64,
    range: std::ops::RangeInclusive<i64>,
) {
    if !range.contains(&value) {
        errors.push(FieldError::new(
            path,
            format!("{value} is outside {}..={}", range.start(), range.end()),
        ));
    }
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

/// Validates a whole stream definition. `name` comes from the request or the config key.
pub fn validate(
    name: &str,
    input: &CreateDeliveryStreamInput,
) -> Result<StreamSpec, Vec<FieldError>> {
    let mut errors = Vec::new();
    if !valid_stream_name(name) {
        errors.push(FieldError::new(
            &["delivery_stream_name"],
            format!("{name:?} must be 1-64 characters of [a-zA-Z0-9_.-]"),
        ));
    }
    let stream_type = input
        .delivery_stream_type
        .clone()
        .unwrap_or_else(|| "DirectPut".into());
    match stream_type.as_str() {
        "DirectPut" => {}
        "KinesisStreamAsSource" | "MSKAsSource" | "DatabaseAsSource" => errors.push(FieldError::new(
            &["delivery_stream_type"],
            format!("{stream_type} is not supported by hosepipe; use DirectPut"),
        )),
        other => errors.push(FieldError::new(
            &["delivery_stream_type"],
            format!("{other:?} is not one of DirectPut, KinesisStreamAsSource, MSKAsSource, DatabaseAsSource"),
        )),
    }
    let at_rest = match &input.delivery_stream_encryption_configuration_input {
        None => None,
        Some(v) => validate_at_rest(v, "delivery_stream_encryption_configuration_input")
            .map_err(|e| errors.push(e))
            .ok(),
    };
    if let Some(tags) = &input.tags {
        if tags.is_empty() {
            errors.push(FieldError::new(&["tags"], "must hold 1-50 tags when given"));
        }
        if let Err(e) = validate_tags(tags, &["tags"]) {
            errors.push(e);
        }
    }
    let unsupported = unsupported_destinations(input);
    for name in &unsupported {
        errors.push(FieldError::new(
            &[name],
            "this destination is not supported by this hosepipe version (S3, OpenSearch and Splunk are)",
        ));
    }
    let s3_blocks = [
        input
            .extended_s3_destination_configuration
            .as_ref()
            .map(|c| (c, "extended_s3_destination_configuration", false)),
        input
            .s3_destination_configuration
            .as_ref()
            .map(|c| (c, "s3_destination_configuration", true)),
    ];
    let search_blocks = [
        input
            .amazonopensearchservice_destination_configuration
            .as_ref()
            .map(|c| {
                (
                    c,
                    "amazonopensearchservice_destination_configuration",
                    false,
                )
            }),
        input
            .elasticsearch_destination_configuration
            .as_ref()
            .map(|c| (c, "elasticsearch_destination_configuration", true)),
    ];
    let given: Vec<_> = s3_blocks
        .into_iter()
        .flatten()
        .map(Given::S3)
        .chain(search_blocks.into_iter().flatten().map(Given::Search))
        .chain(
            input
                .splunk_destination_configuration
                .as_ref()
                .map(Given::Splunk),
        )
        .collect();
    let destination = match (given.as_slice(), unsupported.is_empty()) {
        ([Given::S3((raw, path, legacy))], true) => {
            validate_s3(raw, path, *legacy, &mut errors).map(DestinationSpec::S3)
        }
        ([Given::Search((raw, path, es))], true) => {
            super::opensearch::validate(raw, path, *es, &mut errors)
                .map(|spec| DestinationSpec::OpenSearch(Box::new(spec)))
        }
        ([Given::Splunk(raw)], true) => {
            super::splunk::validate(raw, "splunk_destination_configuration", &mut errors)
                .map(|spec| DestinationSpec::Splunk(Box::new(spec)))
        }
        ([], true) => {
            errors.push(FieldError::new(
                &["extended_s3_destination_configuration"],
                "exactly one destination configuration is required",
            ));
            None
        }
        ([], false) | ([_], false) => None,
        _ => {
            errors.push(FieldError::new(
                &["extended_s3_destination_configuration"],
                "exactly one destination configuration may be given",
            ));
            None
        }
    };
    match destination {
        Some(destination) if errors.is_empty() => Ok(StreamSpec {
            name: name.to_string(),
            stream_type,
            destination,
            at_rest,
        }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(json: serde_json::Value) -> CreateDeliveryStreamInput {
        serde_json::from_value(serde_json::json!({ "ExtendedS3DestinationConfiguration": json }))
            .unwrap()
    }

    #[test]
    fn stream_encryption_input_follows_firehose_rules() {
        let at_rest = |json: serde_json::Value| {
            let mut input =
                s3(serde_json::json!({"BucketARN": "arn:aws:s3:::bkt", "RoleARN": "r"}));
            input.delivery_stream_encryption_configuration_input =
                Some(serde_json::from_value(json).unwrap());
            validate("s", &input).map(|spec| spec.at_rest)
        };
        assert_eq!(
            at_rest(serde_json::json!({"KeyType": "AWS_OWNED_CMK"})).unwrap(),
            Some(AtRestKey::Owned)
        );
        assert_eq!(
            at_rest(serde_json::json!({"KeyType": "CUSTOMER_MANAGED_CMK", "KeyARN": "arn:k"}))
                .unwrap(),
            Some(AtRestKey::Customer("arn:k".into()))
        );
        for (bad, field) in [
            (
                serde_json::json!({"KeyType": "CUSTOMER_MANAGED_CMK"}),
                "KeyARN",
            ),
            (
                serde_json::json!({"KeyType": "AWS_OWNED_CMK", "KeyARN": "arn:k"}),
                "KeyARN",
            ),
            (serde_json::json!({"KeyARN": "arn:k"}), "KeyType"),
            (serde_json::json!({"KeyType": "OTHER"}), "KeyType"),
        ] {
            let errs = at_rest(bad).unwrap_err();
            assert_eq!(
                errs[0].api_path(),
                format!("DeliveryStreamEncryptionConfigurationInput.{field}")
            );
        }
    }

    #[test]
    fn defaults_follow_firehose() {
        let spec = validate(
            "s",
            &s3(serde_json::json!({"BucketARN": "arn:aws:s3:::bkt", "RoleARN": "r"})),
        )
        .unwrap();
        let DestinationSpec::S3(s3) = spec.destination else {
            panic!("an S3 destination")
        };
        assert_eq!(s3.bucket, "bkt");
        assert_eq!(s3.limits.size_bytes, 5 * 1024 * 1024);
        assert_eq!(s3.limits.interval, Duration::from_secs(300));
        assert_eq!(s3.compression, CompressionFormat::Uncompressed);
        assert_eq!(s3.extension, "");
    }

    #[test]
    fn ranges_are_enforced_with_their_paths() {
        let errs = validate(
            "s",
            &s3(serde_json::json!({"BucketARN": "arn:aws:s3:::bkt",
                "BufferingHints": {"SizeInMBs": 129, "IntervalInSeconds": 901}})),
        )
        .unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.api_path()).collect();
        assert!(
            paths.contains(
                &"ExtendedS3DestinationConfiguration.BufferingHints.SizeInMBs".to_string()
            )
        );
        assert!(errs.iter().any(|e| e.config_path()
            == "extended_s3_destination_configuration.buffering_hints.interval_in_seconds"
            && e.message == "901 is outside 0..=900"));
    }

    #[test]
    fn bad_inputs_are_refused() {
        let bad = [
            serde_json::json!({"BucketARN": "bucket"}),
            serde_json::json!({"BucketARN": "arn:aws:s3:::bkt", "CompressionFormat": "LZ4"}),
            serde_json::json!({"BucketARN": "arn:aws:s3:::bkt", "FileExtension": "gz"}),
            serde_json::json!({"BucketARN": "arn:aws:s3:::bkt", "CustomTimeZone": "Mars/Olympus"}),
            serde_json::json!({"BucketARN": "arn:aws:s3:::bkt", "Prefix": "!{timestamp:yyyy}/", }),
            serde_json::json!({"BucketARN": "arn:aws:s3:::bkt", "ProcessingConfiguration": {"Enabled": true, "Processors": [{"Type": "Lambda"}]}}),
        ];
        for b in bad {
            assert!(validate("s", &s3(b.clone())).is_err(), "{b}");
        }
        assert!(
            validate(
                "bad name!",
                &s3(serde_json::json!({"BucketARN": "arn:aws:s3:::bkt"}))
            )
            .is_err()
        );
        let none: CreateDeliveryStreamInput =
            serde_json::from_value(serde_json::json!({})).unwrap();
        assert!(validate("s", &none).is_err());
    }

    fn partitioned(extra: serde_json::Value) -> serde_json::Value {
        let mut base = serde_json::json!({
            "BucketARN": "arn:aws:s3:::bkt",
            "Prefix": "customer_id=!{partitionKeyFromQuery:customer_id}/",
            "ErrorOutputPrefix": "errors/!{firehose:error-output-type}/",
            "DynamicPartitioningConfiguration": {"Enabled": true, "RetryOptions": {"DurationInSeconds": 60}},
            "ProcessingConfiguration": {"Enabled": true, "Processors": [{
                "Type": "MetadataExtraction",
                "Parameters": [
                    {"ParameterName": "MetadataExtractionQuery", "ParameterValue": "{customer_id:.customer_id}"},
                    {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"}
                ]
            }]}
        });
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    }

    #[test]
    fn dynamic_partitioning_is_validated_with_its_rules() {
        let spec = validate("s", &s3(partitioned(serde_json::json!({})))).unwrap();
        let DestinationSpec::S3(s3spec) = spec.destination else {
            panic!("an S3 destination")
        };
        assert_eq!(
            s3spec.partitioning,
            Some(PartitioningSpec {
                retry: Duration::from_secs(60)
            })
        );
        assert_eq!(
            s3spec.processing.unwrap().metadata_query.as_deref(),
            Some("{customer_id:.customer_id}")
        );
        let refused = |extra: serde_json::Value, path: &str, needle: &str| {
            let errs = validate("s", &s3(partitioned(extra.clone()))).unwrap_err();
            assert!(
                errs.iter().any(|e| e.config_path()
                    == format!("extended_s3_destination_configuration.{path}")
                    && e.message.contains(needle)),
                "{extra}: {errs:?}"
            );
        };
        refused(
            serde_json::json!({"ErrorOutputPrefix": null}),
            "error_output_prefix",
            "required when dynamic partitioning",
        );
        refused(
            serde_json::json!({"ErrorOutputPrefix": "e/!{firehose:error-output-type}/!{partitionKeyFromQuery:customer_id}/"}),
            "error_output_prefix",
            "may not be used in ErrorOutputPrefix",
        );
        refused(
            serde_json::json!({"DynamicPartitioningConfiguration": {"Enabled": true, "RetryOptions": {"DurationInSeconds": 7201}}}),
            "dynamic_partitioning_configuration.retry_options.duration_in_seconds",
            "outside 0..=7200",
        );
        refused(
            serde_json::json!({"DynamicPartitioningConfiguration": {"Enabled": false}}),
            "prefix",
            "needs DynamicPartitioningConfiguration.Enabled",
        );
        refused(
            serde_json::json!({"Prefix": "d=!{partitionKeyFromLambda:day}/"}),
            "prefix",
            "needs a Lambda processor",
        );
        refused(
            serde_json::json!({"ProcessingConfiguration": {"Processors": [{"Type": "AppendDelimiterToRecord"}]}}),
            "prefix",
            "needs a MetadataExtraction processor",
        );
        refused(
            serde_json::json!({"ProcessingConfiguration": {"Processors": [{"Type": "MetadataExtraction",
                "Parameters": [{"ParameterName": "MetadataExtractionQuery", "ParameterValue": "{a: .a"}]}]}}),
            "processing_configuration.processors.0.parameters.0.parameter_value",
            "does not parse",
        );
        refused(
            serde_json::json!({"ProcessingConfiguration": {"Processors": [{"Type": "MetadataExtraction",
                "Parameters": [{"ParameterName": "MetadataExtractionQuery", "ParameterValue": "{a: .a}"},
                               {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.7"}]}]}}),
            "processing_configuration.processors.0.parameters.1.parameter_value",
            "not JQ-1.6",
        );
        refused(
            serde_json::json!({"Prefix": "p/", "DynamicPartitioningConfiguration": null}),
            "processing_configuration",
            "MetadataExtraction needs DynamicPartitioningConfiguration.Enabled",
        );
    }

    #[test]
    fn stream_names_and_tags() {
        assert!(valid_stream_name("a.b-c_1"));
        assert!(!valid_stream_name(""));
        assert!(!valid_stream_name(&"x".repeat(65)));
        let tag = |k: &str| Tag {
            key: k.into(),
            value: Some("v".into()),
        };
        assert!(validate_tags(&[tag("team"), tag("a b:c/d=e+f-g@h%")], &["tags"]).is_ok());
        assert!(validate_tags(&[tag("aws:x")], &["tags"]).is_err());
        assert!(validate_tags(&[tag("")], &["tags"]).is_err());
        assert!(validate_tags(&[tag("semi;colon")], &["tags"]).is_err());
    }
}
