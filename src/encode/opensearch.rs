//! OpenSearch / Elasticsearch: records as `_bulk` items (index names by rotation, retry-stable
//! `_id`s, one-line sources), the `_bulk` body, and the failed-document fields of the error
//! output. Pure.

use bytes::Bytes;
use serde_json::Value;

use crate::buffer::Record;
use crate::config::opensearch::{IndexRotation, OpenSearchSpec};

/// One record as a bulk item.
#[derive(Debug)]
pub struct Doc {
    pub record: Record,
    pub index: String,
    /// `_id` (`None` with `NO_DOCUMENT_ID`).
    pub id: Option<String>,
    /// The JSON object, one line.
    pub source: Bytes,
}

/// A document that did not make it, and why.
#[derive(Debug)]
pub struct FailedDoc {
    pub doc: Doc,
    pub attempts: u32,
    /// The cluster's HTTP status for the item (or the request), or hosepipe's code when there
    /// was none (`OS.MalformedDocument`, `OS.ConnectionFailed`).
    pub code: String,
    pub message: String,
}

/// The item code for a record that is not a JSON object.
pub const MALFORMED: &str = "OS.MalformedDocument";
/// Turns records into bulk items: each must be one JSON object (a trailing newline is
/// dropped; a document spread over lines is put on one). `id_base` makes ids unique to the
/// stream; an id is the record's spool seq and content checksum, so it is the same on every
/// attempt and after a restart.
pub fn prepare(
    spec: &OpenSearchSpec,
    records: Vec<Record>,
    id_base: &str,
) -> (Vec<Doc>, Vec<FailedDoc>) {
    let mut docs = Vec::with_capacity(records.len());
    let mut failed = Vec::new();
    let mut seen: std::collections::HashMap<(u64, u32), u32> = std::collections::HashMap::new();
    // Every rotation's name is the same within a UTC hour: name each hour once.
    let mut named: Option<(i64, String)> = None;
    let mut index_of = |arrival_ms: i64| -> String {
        let hour = arrival_ms.div_euclid(3_600_000);
        match &named {
            Some((h, name)) if *h == hour => name.clone(),
            _ => {
                let name = index_name(&spec.index, spec.rotation, arrival_ms);
                named = Some((hour, name.clone()));
                name
            }
        }
    };
    for r in records {
        let trimmed = r.data.trim_ascii();
        let is_object = trimmed.first() == Some(&b'{')
            && serde_json::from_slice::<serde::de::IgnoredAny>(trimmed).is_ok();
        let source = match is_object {
            true => {
                if trimmed.contains(&b'\n') {
                    // Put it on one line; the bulk format is line-delimited.
                    let v: Value = serde_json::from_slice(trimmed).expect("valid JSON reparses");
                    Bytes::from(serde_json::to_vec(&v).expect("JSON serialises"))
                } else {
                    r.data.slice_ref(trimmed)
                }
            }
            false => {
                failed.push(FailedDoc {
                    doc: Doc {
                        index: index_of(r.arrival_ms),
                        record: r,
                        id: None,
                        source: Bytes::new(),
                    },
                    attempts: 0,
                    code: MALFORMED.into(),
                    message: "the record is not a JSON object".into(),
                });
                continue;
            }
        };
        let id = spec.document_ids.then(|| {
            let crc = crc32c::crc32c(&r.data);
            let n = seen.entry((r.seq, crc)).or_insert(0);
            *n += 1;
            match *n {
                1 => format!("{id_base}-{}-{crc:08x}", r.seq),
                k => format!("{id_base}-{}-{crc:08x}-{}", r.seq, k - 1),
            }
        });
        docs.push(Doc {
            index: index_of(r.arrival_ms),
            id,
            source,
            record: r,
        });
    }
    (docs, failed)
}

/// The NDJSON body of a `_bulk` request for `docs` (`index` actions).
pub fn bulk_body<'a>(docs: impl Iterator<Item = &'a Doc>, type_name: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    for d in docs {
        let mut action = serde_json::json!({ "_index": d.index });
        if let Some(id) = &d.id {
            action["_id"] = id.clone().into();
        }
        if let Some(t) = type_name {
            action["_type"] = t.into();
        }
        serde_json::to_writer(&mut out, &serde_json::json!({ "index": action }))
            .expect("JSON into memory");
        out.push(b'\n');
        out.extend_from_slice(&d.source);
        out.push(b'\n');
    }
    out
}

/// Firehose's failed-document fields for the error output.
pub fn failed_fields(f: &FailedDoc, type_name: Option<&str>) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert(
        "esDocumentId".into(),
        f.doc.id.clone().map(Value::from).unwrap_or(Value::Null),
    );
    m.insert("esIndexName".into(), f.doc.index.clone().into());
    m.insert(
        "esTypeName".into(),
        type_name.map(Value::from).unwrap_or(Value::Null),
    );
    m
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
    use crate::config::stream::{CreateDeliveryStreamInput, DestinationSpec, validate};

    fn spec(extra: Value) -> OpenSearchSpec {
        let mut conf = serde_json::json!({
            "ClusterEndpoint": "http://127.0.0.1:9200/", "IndexName": "logs",
            "S3Configuration": {"BucketARN": "arn:aws:s3:::bkt", "RoleARN": "r"},
        });
        conf.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let input: CreateDeliveryStreamInput = serde_json::from_value(
            serde_json::json!({ "AmazonopensearchserviceDestinationConfiguration": conf }),
        )
        .unwrap();
        match validate("s", &input).unwrap().destination {
            DestinationSpec::OpenSearch(os) => *os,
            other => panic!("{other:?}"),
        }
    }

    fn rec(seq: u64, data: &str) -> Record {
        Record {
            seq,
            ..Record::new(Bytes::from(data.to_string()), 1_456_405_200_000)
        }
    }

    #[test]
    fn records_become_items_with_stable_ids_and_rotated_indexes() {
        let s = spec(serde_json::json!({}));
        assert_eq!(s.endpoint, "http://127.0.0.1:9200");
        let records = || {
            vec![
                rec(7, "{\"a\":1}\n"),
                rec(7, "{\"a\":1}"),
                rec(8, "{\n \"b\": 2\n}"),
                rec(9, "[1]"),
                rec(10, "not json"),
            ]
        };
        let (docs, failed) = prepare(&s, records(), "base");
        assert_eq!(docs.len(), 3);
        assert_eq!(failed.len(), 2);
        assert!(failed.iter().all(|f| f.code == MALFORMED));
        assert_eq!(docs[0].index, "logs-2016-02-25");
        assert_eq!(&docs[0].source[..], b"{\"a\":1}");
        assert_eq!(&docs[2].source[..], b"{\"b\":2}");
        // The same data under the same seq (de-aggregated duplicates) still get distinct ids.
        assert_ne!(docs[0].id, docs[1].id);
        let (again, _) = prepare(&s, records(), "base");
        assert_eq!(
            docs.iter().map(|d| &d.id).collect::<Vec<_>>(),
            again.iter().map(|d| &d.id).collect::<Vec<_>>()
        );
        let body = String::from_utf8(bulk_body(docs.iter(), Some("_doc"))).unwrap();
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines.len(), 6);
        let action: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(action["index"]["_index"], "logs-2016-02-25");
        assert_eq!(action["index"]["_type"], "_doc");
        assert_eq!(action["index"]["_id"], docs[0].id.clone().unwrap());
        let no_ids = spec(serde_json::json!({
            "DocumentIdOptions": {"DefaultDocumentIdFormat": "NO_DOCUMENT_ID"}
        }));
        assert!(
            prepare(&no_ids, records(), "base")
                .0
                .iter()
                .all(|d| d.id.is_none())
        );
    }

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
