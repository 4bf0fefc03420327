//! Firehose's S3 prefix expression language (`Prefix` and `ErrorOutputPrefix`) and object naming.
//!
//! `!{timestamp:<Java DateTimeFormatter pattern>}`, `!{firehose:random-string}`,
//! `!{firehose:error-output-type}`, `!{partitionKeyFromQuery:k}`, `!{partitionKeyFromLambda:k}`.
//! Parsing validates; rendering does no I/O.

use chrono::{DateTime, Datelike, Offset, TimeZone, Timelike};
use chrono_tz::Tz;

use crate::partition::PartitionKeys;

/// The default time expression appended to a prefix that has none.
pub const DEFAULT_TIME_PATTERN: &str = "yyyy/MM/dd/HH/";

/// Evaluated prefixes may not be longer than this (Firehose's limit).
pub const MAX_EVALUATED_LEN: usize = 512;

/// Which of the two prefixes a template is: the rules differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixKind {
    Prefix,
    ErrorOutputPrefix,
}

/// The error output types Firehose writes failed data under (`!{firehose:error-output-type}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorOutputType {
    ProcessingFailed,
    FormatConversionFailed,
    OpenSearchFailed,
    SplunkFailed,
    HttpEndpointFailed,
    /// hosepipe's name for records an Iceberg table did not take.
    IcebergFailed,
    DecompressionFailed,
    /// hosepipe's own: records still undelivered after the retention age (Firehose would drop
    /// them; hosepipe writes them to the error output when it can, and otherwise keeps trying).
    RetentionExpired,
}

impl ErrorOutputType {
    const ALL: [ErrorOutputType; 8] = [
        ErrorOutputType::ProcessingFailed,
        ErrorOutputType::FormatConversionFailed,
        ErrorOutputType::OpenSearchFailed,
        ErrorOutputType::SplunkFailed,
        ErrorOutputType::HttpEndpointFailed,
        ErrorOutputType::IcebergFailed,
        ErrorOutputType::DecompressionFailed,
        ErrorOutputType::RetentionExpired,
    ];

    /// The types a stream delivering to a destination of `kind` (`s3`, `opensearch`, …) may
    /// write: those of every stream, and its destination's own.
    pub fn of_destination(kind: &str) -> Vec<ErrorOutputType> {
        let mut types = vec![
            ErrorOutputType::ProcessingFailed,
            ErrorOutputType::FormatConversionFailed,
            ErrorOutputType::DecompressionFailed,
            ErrorOutputType::RetentionExpired,
        ];
        types.extend(match kind {
            "opensearch" => Some(ErrorOutputType::OpenSearchFailed),
            "splunk" => Some(ErrorOutputType::SplunkFailed),
            "http_endpoint" => Some(ErrorOutputType::HttpEndpointFailed),
            "iceberg" => Some(ErrorOutputType::IcebergFailed),
            _ => None,
        });
        types
    }

    /// The type `as_str` names.
    pub fn parse(name: &str) -> Option<ErrorOutputType> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorOutputType::ProcessingFailed => "processing-failed",
            ErrorOutputType::FormatConversionFailed => "format-conversion-failed",
            ErrorOutputType::OpenSearchFailed => "AmazonOpenSearchService-failed",
            ErrorOutputType::SplunkFailed => "splunk-failed",
            ErrorOutputType::HttpEndpointFailed => "http-endpoint-failed",
            ErrorOutputType::IcebergFailed => "iceberg-failed",
            ErrorOutputType::DecompressionFailed => "decompression-failed",
            ErrorOutputType::RetentionExpired => "retention-expired",
        }
    }
}

/// One piece of a Java DateTimeFormatter pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TimeItem {
    Literal(String),
    /// A pattern letter and how many times it was repeated.
    Field(char, usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Timestamp(Vec<TimeItem>),
    RandomString,
    ErrorOutputType,
    PartitionKeyFromQuery(String),
    PartitionKeyFromLambda(String),
}

/// A parsed, validated prefix expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
}

/// What a prefix is evaluated against.
pub struct RenderContext<'a, T: TimeZone> {
    /// The arrival time of the oldest record in the object, in the stream's time zone.
    pub time: &'a DateTime<T>,
    pub error_output_type: Option<ErrorOutputType>,
    /// The object's partition (dynamic partitioning), if any.
    pub partition: Option<&'a PartitionKeys>,
}

/// Why a prefix could not be evaluated for one object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("partition key {0:?} has no value for this record")]
    MissingPartitionKey(String),
    #[error("the evaluated prefix is {0} characters, over the limit of 512")]
    TooLong(usize),
}

const LETTERS_SUPPORTED: &str = "yuMLdDHhkKmsSaEwYeZXx";

fn parse_time_pattern(pattern: &str) -> Result<Vec<TimeItem>, String> {
    let mut items = Vec::new();
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // 'text' is literal; '' is one quote.
            let mut lit = String::new();
            i += 1;
            if i < chars.len() && chars[i] == '\'' {
                items.push(TimeItem::Literal("'".into()));
                i += 1;
                continue;
            }
            loop {
                match chars.get(i) {
                    None => return Err(format!("unterminated quote in pattern {pattern:?}")),
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        lit.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(&ch) => {
                        lit.push(ch);
                        i += 1;
                    }
                }
            }
            items.push(TimeItem::Literal(lit));
        } else if c.is_ascii_alphabetic() {
            if !LETTERS_SUPPORTED.contains(c) {
                return Err(format!(
                    "pattern letter {c:?} in {pattern:?} is not supported (supported: {LETTERS_SUPPORTED}; quote literal text with ')"
                ));
            }
            let start = i;
            while i < chars.len() && chars[i] == c {
                i += 1;
            }
            let count = i - start;
            items.push(TimeItem::Field(c, count));
        } else if matches!(c, '[' | ']' | '{' | '}' | '#') {
            return Err(format!(
                "{c:?} is reserved in DateTimeFormatter patterns ({pattern:?}); quote it"
            ));
        } else {
            items.push(TimeItem::Literal(c.to_string()));
            i += 1;
        }
    }
    Ok(items)
}

fn pad(out: &mut String, value: i64, width: usize) {
    use std::fmt::Write;
    let _ = write!(out, "{value:0width$}");
}

fn render_time<T: TimeZone>(items: &[TimeItem], t: &DateTime<T>, out: &mut String) {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    for item in items {
        match item {
            TimeItem::Literal(s) => out.push_str(s),
            TimeItem::Field(c, n) => {
                let n = *n;
                match c {
                    'y' | 'u' => {
                        if n == 2 {
                            pad(out, i64::from(t.year()).rem_euclid(100), 2)
                        } else {
                            pad(out, i64::from(t.year()), n)
                        }
                    }
                    'Y' => {
                        let y = i64::from(t.iso_week().year());
                        if n == 2 {
                            pad(out, y.rem_euclid(100), 2)
                        } else {
                            pad(out, y, n)
                        }
                    }
                    'M' | 'L' => {
                        let m = t.month0() as usize;
                        match n {
                            1 | 2 => pad(out, m as i64 + 1, n),
                            3 => out.push_str(&MONTHS[m][..3]),
                            _ => out.push_str(MONTHS[m]),
                        }
                    }
                    'd' => pad(out, i64::from(t.day()), n),
                    'D' => pad(out, i64::from(t.ordinal()), n),
                    'H' => pad(out, i64::from(t.hour()), n),
                    'k' => pad(out, i64::from(if t.hour() == 0 { 24 } else { t.hour() }), n),
                    'K' => pad(out, i64::from(t.hour() % 12), n),
                    'h' => {
                        let h = t.hour() % 12;
                        pad(out, i64::from(if h == 0 { 12 } else { h }), n)
                    }
                    'm' => pad(out, i64::from(t.minute()), n),
                    's' => pad(out, i64::from(t.second()), n),
                    'S' => {
                        let nanos = format!("{:09}", t.nanosecond() % 1_000_000_000);
                        let digits = n.min(9);
                        out.push_str(&nanos[..digits]);
                        for _ in 9..n {
                            out.push('0');
                        }
                    }
                    'a' => out.push_str(if t.hour() < 12 { "AM" } else { "PM" }),
                    'E' => {
                        let d = t.weekday().num_days_from_monday() as usize;
                        if n >= 4 {
                            out.push_str(DAYS[d])
                        } else {
                            out.push_str(&DAYS[d][..3])
                        }
                    }
                    'e' => pad(out, i64::from(t.weekday().number_from_monday()), n),
                    'w' => pad(out, i64::from(t.iso_week().week()), n),
                    'Z' | 'X' | 'x' => {
                        let secs = t.offset().fix().local_minus_utc();
                        if *c == 'X' && secs == 0 {
                            out.push('Z');
                        } else {
                            let sign = if secs < 0 { '-' } else { '+' };
                            let (h, m) = (secs.abs() / 3600, secs.abs() % 3600 / 60);
                            out.push(sign);
                            pad(out, i64::from(h), 2);
                            if n >= 2 || m != 0 || *c == 'Z' {
                                if n >= 3 && *c != 'Z' {
                                    out.push(':');
                                }
                                pad(out, i64::from(m), 2);
                            }
                        }
                    }
                    other => unreachable!("pattern letter {other} passed validation"),
                }
            }
        }
    }
}

impl Template {
    /// Parses and validates a prefix expression of the given kind (without the default-time rule;
    /// see [`Template::for_prefix`]).
    pub fn parse(text: &str, kind: PrefixKind) -> Result<Template, String> {
        let mut segments = Vec::new();
        let mut rest = text;
        let mut literal = String::new();
        while let Some(pos) = rest.find("!{") {
            literal.push_str(&rest[..pos]);
            let after = &rest[pos + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("unterminated expression at {:?}", &rest[pos..]))?;
            let expr = &after[..end];
            let (ns, value) = expr.split_once(':').ok_or_else(|| {
                format!("expression !{{{expr}}} needs the form !{{namespace:value}}")
            })?;
            let segment = match (ns, value) {
                ("timestamp", pattern) => {
                    if pattern.is_empty() {
                        return Err("!{timestamp:} needs a DateTimeFormatter pattern".into());
                    }
                    Segment::Timestamp(parse_time_pattern(pattern)?)
                }
                ("firehose", "random-string") => Segment::RandomString,
                ("firehose", "error-output-type") => {
                    if kind == PrefixKind::Prefix {
                        return Err(
                            "!{firehose:error-output-type} may only be used in ErrorOutputPrefix"
                                .into(),
                        );
                    }
                    Segment::ErrorOutputType
                }
                ("firehose", other) => {
                    return Err(format!(
                        "!{{firehose:{other}}} is not a known expression (random-string, error-output-type)"
                    ));
                }
                ("partitionKeyFromQuery" | "partitionKeyFromLambda", key) => {
                    if kind == PrefixKind::ErrorOutputPrefix {
                        return Err(format!(
                            "!{{{ns}:{key}}}: partition keys may not be used in ErrorOutputPrefix"
                        ));
                    }
                    if key.is_empty() {
                        return Err(format!("!{{{ns}:}} needs a key name"));
                    }
                    if ns == "partitionKeyFromQuery" {
                        Segment::PartitionKeyFromQuery(key.to_string())
                    } else {
                        Segment::PartitionKeyFromLambda(key.to_string())
                    }
                }
                (other, _) => {
                    return Err(format!(
                        "unknown namespace {other:?} in !{{{expr}}} (timestamp, firehose, partitionKeyFromQuery, partitionKeyFromLambda)"
                    ));
                }
            };
            if !literal.is_empty() {
                segments.push(Segment::Literal(std::mem::take(&mut literal)));
            }
            segments.push(segment);
            rest = &after[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Template { segments })
    }

    /// The `Prefix` as Firehose applies it: without a timestamp expression, the default
    /// `!{timestamp:yyyy/MM/dd/HH/}` is appended.
    pub fn for_prefix(text: &str) -> Result<Template, String> {
        let mut t = Template::parse(text, PrefixKind::Prefix)?;
        if !t.has_timestamp() {
            t.segments.push(Segment::Timestamp(
                parse_time_pattern(DEFAULT_TIME_PATTERN).expect("default pattern is valid"),
            ));
        }
        Ok(t)
    }

    /// The `ErrorOutputPrefix`, or the default derived from `Prefix` when it is absent:
    /// `<prefix><error-output-type>/yyyy/MM/dd/HH/`. `prefix` is the user's text.
    pub fn for_error_prefix(error_prefix: Option<&str>, prefix: &str) -> Result<Template, String> {
        match error_prefix.filter(|p| !p.is_empty()) {
            Some(text) => {
                let mut t = Template::parse(text, PrefixKind::ErrorOutputPrefix)?;
                if !t.segments.contains(&Segment::ErrorOutputType) {
                    return Err(
                        "ErrorOutputPrefix must contain !{firehose:error-output-type}".into(),
                    );
                }
                if !t.has_timestamp() {
                    t.segments.push(Segment::Timestamp(
                        parse_time_pattern(DEFAULT_TIME_PATTERN).expect("default pattern is valid"),
                    ));
                }
                Ok(t)
            }
            None => {
                let user = Template::parse(prefix, PrefixKind::Prefix)?;
                if user.has_expressions() {
                    return Err(
                        "ErrorOutputPrefix is required when Prefix contains expressions".into(),
                    );
                }
                Template::parse(
                    &format!(
                        "{prefix}!{{firehose:error-output-type}}/!{{timestamp:{DEFAULT_TIME_PATTERN}}}"
                    ),
                    PrefixKind::ErrorOutputPrefix,
                )
            }
        }
    }

    fn has_timestamp(&self) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Timestamp(_)))
    }

    /// The partition keys the template uses: (`partitionKeyFromQuery` names,
    /// `partitionKeyFromLambda` names), each sorted and without repeats.
    pub fn partition_keys(&self) -> (Vec<String>, Vec<String>) {
        let (mut query, mut lambda) = (Vec::new(), Vec::new());
        for s in &self.segments {
            match s {
                Segment::PartitionKeyFromQuery(k) => query.push(k.clone()),
                Segment::PartitionKeyFromLambda(k) => lambda.push(k.clone()),
                _ => {}
            }
        }
        for v in [&mut query, &mut lambda] {
            v.sort();
            v.dedup();
        }
        (query, lambda)
    }

    /// True when the text has any `!{…}` expression.
    pub fn has_expressions(&self) -> bool {
        self.segments
            .iter()
            .any(|s| !matches!(s, Segment::Literal(_)))
    }

    /// Evaluates the template for one object.
    pub fn render<T: TimeZone>(&self, ctx: &RenderContext<'_, T>) -> Result<String, RenderError> {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(s) => out.push_str(s),
                Segment::Timestamp(items) => render_time(items, ctx.time, &mut out),
                Segment::RandomString => out.push_str(&random_string()),
                Segment::ErrorOutputType => out.push_str(
                    ctx.error_output_type
                        .map(ErrorOutputType::as_str)
                        .unwrap_or("unknown-error"),
                ),
                Segment::PartitionKeyFromQuery(k) => out.push_str(
                    ctx.partition
                        .and_then(|p| p.query(k))
                        .ok_or_else(|| RenderError::MissingPartitionKey(k.clone()))?,
                ),
                Segment::PartitionKeyFromLambda(k) => out.push_str(
                    ctx.partition
                        .and_then(|p| p.lambda(k))
                        .ok_or_else(|| RenderError::MissingPartitionKey(k.clone()))?,
                ),
            }
        }
        if out.chars().count() > MAX_EVALUATED_LEN {
            return Err(RenderError::TooLong(out.chars().count()));
        }
        Ok(out)
    }
}

/// 11 random characters, in the shape Firehose uses (`046b6c7f-0b`).
fn random_string() -> String {
    uuid::Uuid::new_v4().to_string()[..11].to_string()
}

/// The object name Firehose gives: `<prefix><stream>-<version>-YYYY-MM-DD-HH-MM-SS-<uuid><ext>`.
pub fn object_key(
    prefix: &str,
    stream: &str,
    version: u64,
    time: &DateTime<Tz>,
    extension: &str,
) -> String {
    format!(
        "{prefix}{stream}-{version}-{}-{}{extension}",
        time.format("%Y-%m-%d-%H-%M-%S"),
        uuid::Uuid::new_v4()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn at(s: &str) -> DateTime<Tz> {
        DateTime::parse_from_rfc3339(s)
            .unwrap()
            .with_timezone(&Tz::UTC)
    }

    fn render(t: &Template, time: &DateTime<Tz>, eot: Option<ErrorOutputType>) -> String {
        t.render(&RenderContext {
            time,
            error_output_type: eot,
            partition: None,
        })
        .unwrap()
    }

    #[test]
    fn default_time_is_appended_without_a_timestamp() {
        let t = Template::for_prefix("").unwrap();
        assert_eq!(
            render(&t, &at("2018-08-27T10:30:00Z"), None),
            "2018/08/27/10/"
        );
        let t = Template::for_prefix("myFirehosePrefix/").unwrap();
        assert_eq!(
            render(&t, &at("2018-08-27T10:30:00Z"), None),
            "myFirehosePrefix/2018/08/27/10/"
        );
    }

    #[test]
    fn error_prefix_defaults_from_a_plain_prefix() {
        let t = Template::for_error_prefix(None, "myFirehosePrefix/").unwrap();
        assert_eq!(
            render(
                &t,
                &at("2018-08-27T10:30:00Z"),
                Some(ErrorOutputType::ProcessingFailed)
            ),
            "myFirehosePrefix/processing-failed/2018/08/27/10/"
        );
        let t = Template::for_error_prefix(
            Some("myFirehoseFailures/!{firehose:error-output-type}/"),
            "",
        )
        .unwrap();
        assert!(
            render(
                &t,
                &at("2018-08-27T10:30:00Z"),
                Some(ErrorOutputType::ProcessingFailed)
            )
            .starts_with("myFirehoseFailures/processing-failed/2018/08/27/10/")
        );
    }

    #[test]
    fn the_rules_refuse_what_firehose_refuses() {
        assert!(Template::for_error_prefix(None, "!{timestamp:yyyy/MM/dd}").is_err());
        assert!(Template::for_error_prefix(Some("errors/"), "").is_err());
        assert!(Template::parse("a/!{firehose:error-output-type}", PrefixKind::Prefix).is_err());
        assert!(
            Template::parse("!{partitionKeyFromQuery:id}", PrefixKind::ErrorOutputPrefix).is_err()
        );
        assert!(Template::parse("a/!{timestamp:yyyy", PrefixKind::Prefix).is_err());
        assert!(Template::parse("!{nope:x}", PrefixKind::Prefix).is_err());
        assert!(Template::parse("!{firehose:nope}", PrefixKind::Prefix).is_err());
        assert!(Template::parse("!{timestamp:yyyy-qq}", PrefixKind::Prefix).is_err());
        assert!(Template::parse("!{timestamp:[yyyy]}", PrefixKind::Prefix).is_err());
    }

    #[test]
    fn java_patterns_render_like_java() {
        let t = Template::parse(
            "!{timestamp:yyyy-MM-dd'T'HH:mm:ss.SSS}/!{timestamp:yy/M/d/D/DDD/EEE/MMM/a/hh}/'x'''",
            PrefixKind::Prefix,
        )
        .unwrap();
        assert_eq!(
            render(&t, &at("2018-02-03T04:05:06.789Z"), None),
            "2018-02-03T04:05:06.789/18/2/3/34/034/Sat/Feb/AM/04/'x'''"
        );
        let t =
            Template::parse("!{timestamp:'year='yyyy/'month='MM/}", PrefixKind::Prefix).unwrap();
        assert_eq!(
            render(&t, &at("2018-02-03T04:05:06Z"), None),
            "year=2018/month=02/"
        );
    }

    #[test]
    fn custom_time_zone_shifts_the_prefix() {
        let tz: Tz = "Asia/Tokyo".parse().unwrap();
        let t = Template::for_prefix("").unwrap();
        let time = at("2018-08-27T20:30:00Z").with_timezone(&tz);
        assert_eq!(render_tz(&t, &time), "2018/08/28/05/");
    }

    fn render_tz(t: &Template, time: &DateTime<Tz>) -> String {
        render(t, time, None)
    }

    #[test]
    fn random_strings_are_fresh_per_occurrence() {
        let t = Template::parse(
            "!{firehose:random-string}/!{firehose:random-string}",
            PrefixKind::Prefix,
        )
        .unwrap();
        let s = render(&t, &Utc::now().with_timezone(&Tz::UTC), None);
        let (a, b) = s.split_once('/').unwrap();
        assert_eq!(a.len(), 11);
        assert_ne!(a, b);
    }

    #[test]
    fn object_keys_follow_the_naming_rule() {
        let key = object_key("p/", "clicks", 3, &at("2024-01-02T03:04:05Z"), ".gz");
        let rest = key.strip_prefix("p/clicks-3-2024-01-02-03-04-05-").unwrap();
        let uuid = rest.strip_suffix(".gz").unwrap();
        assert!(uuid::Uuid::parse_str(uuid).is_ok());
    }

    #[test]
    fn missing_partition_key_is_an_error() {
        let t = Template::parse("!{partitionKeyFromQuery:id}/", PrefixKind::Prefix).unwrap();
        let err = t
            .render(&RenderContext {
                time: &Utc::now(),
                error_output_type: None,
                partition: None,
            })
            .unwrap_err();
        assert_eq!(err, RenderError::MissingPartitionKey("id".into()));
    }

    #[test]
    fn query_and_lambda_keys_are_separate_namespaces() {
        let t = Template::parse(
            "q=!{partitionKeyFromQuery:id}/l=!{partitionKeyFromLambda:id}/",
            PrefixKind::Prefix,
        )
        .unwrap();
        assert_eq!(
            t.partition_keys(),
            (vec!["id".to_string()], vec!["id".to_string()])
        );
        let keys = PartitionKeys {
            query: vec![("id".into(), "7".into())],
            lambda: vec![("id".into(), "x".into())],
        };
        let render = |p: &PartitionKeys| {
            t.render(&RenderContext {
                time: &Utc::now(),
                error_output_type: None,
                partition: Some(p),
            })
        };
        assert_eq!(render(&keys).unwrap(), "q=7/l=x/");
        let only_query = PartitionKeys {
            lambda: vec![],
            ..keys
        };
        assert_eq!(
            render(&only_query).unwrap_err(),
            RenderError::MissingPartitionKey("id".into())
        );
    }
}
