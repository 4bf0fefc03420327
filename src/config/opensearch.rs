//! `AmazonopensearchserviceDestinationConfiguration` and `ElasticsearchDestinationConfiguration`:
//! validating them into an [`OpenSearchSpec`]. Pure.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::fields::{BufferingHints, FieldError, buffering_limits};
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

/// The index a record arriving at `arrival_ms` (UTC) goes to.
pub fn index_name(index: &str, rotation: IndexRotation, arrival_ms: i64) -> String {
    use chrono::{TimeZone, Utc};
    let t = Utc
        .timestamp_millis_opt(arrival_ms)
        .single()
        .unwrap_or_else(Utc::now);
    match rotation {
        IndexRotation::NoRotation => index.to_string(),
        IndexRotation::OneHour => format!("{index}-{}", t.format("%Y-%m-%d-%H")),
        IndexRotation::OneDay => format!("{index}-{}", t.format("%Y-%m-%d")),
        IndexRotation::OneMonth => format!("{index}-{}", t.format("%Y-%m")),
        IndexRotation::OneWeek => {
            let (year, week) = us_week(t.date_naive());
            format!("{index}-{year}-w{week:02}")
        }
    }
}

/// The week of `date` with weeks starting on Sunday; week 1 is the first week with at least
/// four days in the year (days before it belong to the previous year's last week).
///
/// Firehose's documents conflict here: the note says "the first week that contains a Saturday
/// in this year", while its own example puts 2016-02-25 in week 08, which only a week 1 that
/// holds most of its days in the year gives. hosepipe follows the example.
pub fn us_week(date: chrono::NaiveDate) -> (i32, u32) {
    use chrono::{Datelike, NaiveDate};
    let week_one_start = |year: i32| {
        let jan1 = NaiveDate::from_ymd_opt(year, 1, 1).expect("January 1st exists");
        let dow = jan1.weekday().num_days_from_sunday() as i64;
        // The Sunday on or before January 1st starts week 1 if at least four of its days are
        // in the year (January 1st is Sunday to Wednesday); else the next Sunday does.
        let sunday = jan1 - chrono::Duration::days(dow);
        if dow <= 3 {
            sunday
        } else {
            sunday + chrono::Duration::days(7)
        }
    };
    let mut year = date.year();
    if date < week_one_start(year) {
        year -= 1;
    } else if date >= week_one_start(year + 1) {
        year += 1;
    }
    let days = (date - week_one_start(year)).num_days();
    (year, (days / 7 + 1) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_follow_the_rotation_table() {
        // 2016-02-25T13:00:00Z, Firehose's example.
        let t = 1_456_405_200_000;
        let name = |r| index_name("myindex", r, t);
        assert_eq!(name(IndexRotation::NoRotation), "myindex");
        assert_eq!(name(IndexRotation::OneHour), "myindex-2016-02-25-13");
        assert_eq!(name(IndexRotation::OneDay), "myindex-2016-02-25");
        assert_eq!(name(IndexRotation::OneWeek), "myindex-2016-w08");
        assert_eq!(name(IndexRotation::OneMonth), "myindex-2016-02");
    }

    #[test]
    fn weeks_start_on_sunday_and_belong_to_the_year_holding_most_of_their_days() {
        let d = |y, m, day| chrono::NaiveDate::from_ymd_opt(y, m, day).unwrap();
        // 2016-01-01 is a Friday: Jan 1-2 belong to 2015's last week; Sunday Jan 3 starts w01.
        assert_eq!(us_week(d(2016, 1, 2)), (2015, 52));
        assert_eq!(us_week(d(2016, 1, 3)), (2016, 1));
        assert_eq!(us_week(d(2016, 1, 9)), (2016, 1));
        assert_eq!(us_week(d(2016, 1, 10)), (2016, 2));
        // 2020-01-01 is a Wednesday: its week (from Sunday 2019-12-29) is 2020's w01.
        assert_eq!(us_week(d(2019, 12, 29)), (2020, 1));
        assert_eq!(us_week(d(2020, 8, 12)), (2020, 33));
    }
}
