//! A delivery stream's definition, in the shape of Firehose's `CreateDeliveryStream` request, and
//! its validation into typed values. The API and the config file share these types: the config
//! file spells the same fields in snake_case (see [`super::names`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use super::fields::{BufferingHints, FieldError, enabled};
pub use super::s3::{
    EncryptionSpec, ExtendedS3DestinationConfiguration, PartitioningSpec, S3Spec, validate_s3,
};
use crate::buffer::Limits;

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
    pub http_endpoint_destination_configuration:
        Option<super::http_endpoint::HttpEndpointDestinationConfiguration>,
    pub snowflake_destination_configuration: Option<Value>,
    pub iceberg_destination_configuration: Option<super::iceberg::IcebergDestinationConfiguration>,
    pub tags: Option<Vec<Tag>>,
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

/// A validated destination.
#[derive(Debug, Clone)]
// One per stream, built once: the size of the S3 variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum DestinationSpec {
    S3(S3Spec),
    OpenSearch(Box<super::opensearch::OpenSearchSpec>),
    Splunk(Box<super::splunk::SplunkSpec>),
    HttpEndpoint(Box<super::http_endpoint::HttpEndpointSpec>),
    Iceberg(Box<super::iceberg::IcebergSpec>),
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
    HttpEndpoint(&'a super::http_endpoint::HttpEndpointDestinationConfiguration),
    Iceberg(&'a super::iceberg::IcebergDestinationConfiguration),
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

impl DestinationSpec {
    /// Its name in metric names, logs and `/status`.
    pub fn kind(&self) -> &'static str {
        match self {
            DestinationSpec::S3(_) => "s3",
            DestinationSpec::OpenSearch(_) => "opensearch",
            DestinationSpec::Splunk(_) => "splunk",
            DestinationSpec::HttpEndpoint(_) => "http_endpoint",
            DestinationSpec::Iceberg(_) => "iceberg",
        }
    }

    /// Where it delivers, in a few words (`hosepipe status`): the bucket, the index, the
    /// endpoint, or the Iceberg catalog and tables.
    pub fn target(&self) -> String {
        match self {
            DestinationSpec::S3(s3) => format!("s3://{}", s3.bucket),
            DestinationSpec::OpenSearch(os) => format!("{} index {}", os.endpoint, os.index),
            DestinationSpec::Splunk(sp) => sp.endpoint.clone(),
            DestinationSpec::HttpEndpoint(h) => h.url.clone(),
            DestinationSpec::Iceberg(i) => {
                let catalog = i.catalog.as_deref().unwrap_or("default");
                let tables: Vec<String> = i
                    .tables
                    .iter()
                    .map(|t| format!("{}.{}", t.database, t.table))
                    .collect();
                match (tables.as_slice(), i.processing.is_some()) {
                    ([], _) => format!("iceberg {catalog}: tables by route"),
                    (_, true) if tables.len() > 1 => {
                        format!("iceberg {catalog}: {} by route", tables.join(", "))
                    }
                    _ => format!("iceberg {catalog}: {}", tables.join(", ")),
                }
            }
        }
    }

    /// Its fields of DescribeDeliveryStream's `Destinations` entry.
    pub fn description(&self) -> serde_json::Map<String, Value> {
        let mut out = serde_json::Map::new();
        match self {
            DestinationSpec::S3(s3) => {
                let extended = s3.description();
                out.insert(
                    "S3DestinationDescription".into(),
                    super::s3::legacy_description(&extended),
                );
                out.insert("ExtendedS3DestinationDescription".into(), extended);
            }
            DestinationSpec::OpenSearch(os) => {
                let (field, body) = os.description();
                out.insert(field.into(), body);
            }
            DestinationSpec::Splunk(sp) => {
                let (field, body) = sp.description();
                out.insert(field.into(), body);
            }
            DestinationSpec::HttpEndpoint(h) => {
                let (field, body) = h.description();
                out.insert(field.into(), body);
            }
            DestinationSpec::Iceberg(i) => {
                let (field, body) = i.description();
                out.insert(field.into(), body);
            }
        }
        out
    }
}

impl StreamSpec {
    pub fn limits(&self) -> Limits {
        match &self.destination {
            DestinationSpec::S3(s3) => s3.limits,
            DestinationSpec::OpenSearch(os) => os.limits,
            DestinationSpec::Splunk(sp) => sp.limits,
            DestinationSpec::HttpEndpoint(h) => h.limits,
            DestinationSpec::Iceberg(i) => i.limits,
        }
    }

    /// Where the stream's S3 objects go: the S3 destination itself, or the backup bucket of
    /// the others (error output, and all records with `AllDocuments`).
    pub fn s3_output(&self) -> &S3Spec {
        match &self.destination {
            DestinationSpec::S3(s3) => s3,
            DestinationSpec::OpenSearch(os) => &os.backup,
            DestinationSpec::Splunk(sp) => &sp.backup,
            DestinationSpec::HttpEndpoint(h) => &h.backup,
            DestinationSpec::Iceberg(i) => &i.backup,
        }
    }

    /// `AllDocuments` / `AllEvents`: every record also goes to the backup bucket.
    pub fn backs_up_all(&self) -> bool {
        match &self.destination {
            DestinationSpec::S3(_) => false,
            DestinationSpec::OpenSearch(os) => os.backup_all,
            DestinationSpec::Splunk(sp) => sp.backup_all,
            DestinationSpec::HttpEndpoint(h) => h.backup_all,
            DestinationSpec::Iceberg(i) => i.backup_all,
        }
    }

    /// Whether records are routed to tables by their metadata (Iceberg): the process stage
    /// gives each record its route as its partition.
    pub fn routes_records(&self) -> bool {
        matches!(self.destination, DestinationSpec::Iceberg(_))
    }

    /// The destination's `ProcessingConfiguration`.
    pub fn processing(&self) -> Option<&super::processing::ProcessingSpec> {
        match &self.destination {
            DestinationSpec::S3(s3) => s3.processing.as_ref(),
            DestinationSpec::OpenSearch(os) => os.processing.as_ref(),
            DestinationSpec::Splunk(sp) => sp.processing.as_ref(),
            DestinationSpec::HttpEndpoint(h) => h.processing.as_ref(),
            DestinationSpec::Iceberg(i) => i.processing.as_ref(),
        }
    }
}

/// Destination fields hosepipe does not deliver to yet, with their API names.
fn unsupported_destinations(input: &CreateDeliveryStreamInput) -> Vec<&'static str> {
    let mut out = Vec::new();
    let fields: [(&Option<Value>, &'static str); 3] = [
        (
            &input.redshift_destination_configuration,
            "redshift_destination_configuration",
        ),
        (
            &input.amazon_open_search_serverless_destination_configuration,
            "amazon_open_search_serverless_destination_configuration",
        ),
        (
            &input.snowflake_destination_configuration,
            "snowflake_destination_configuration",
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
            "this destination is not supported by this hosepipe version (S3, OpenSearch, Splunk and HTTP endpoints are)",
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
        .chain(
            input
                .http_endpoint_destination_configuration
                .as_ref()
                .map(Given::HttpEndpoint),
        )
        .chain(
            input
                .iceberg_destination_configuration
                .as_ref()
                .map(Given::Iceberg),
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
        ([Given::HttpEndpoint(raw)], true) => super::http_endpoint::validate(
            raw,
            "http_endpoint_destination_configuration",
            &mut errors,
        )
        .map(|spec| DestinationSpec::HttpEndpoint(Box::new(spec))),
        ([Given::Iceberg(raw)], true) => {
            super::iceberg::validate(raw, "iceberg_destination_configuration", &mut errors)
                .map(|spec| DestinationSpec::Iceberg(Box::new(spec)))
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
    use crate::compress::CompressionFormat;
    use std::time::Duration;

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
