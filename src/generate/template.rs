//! Record templates in the Kinesis Data Generator's style: text with `{{…}}` placeholders that
//! call faker.js-named functions (`{{random.number(100)}}`,
//! `{{random.arrayElement(["a","b"])}}`, `{{date.now("YYYY-MM-DD")}}`, `{{internet.ip}}`,
//! `{{lorem.sentence}}` …), arguments written as JSON. A template is compiled once (an unknown
//! function, bad arguments or an unclosed `{{` is an error with its line and column) and then
//! rendered per record; the fake values come from the `fake` crate.

use chrono::format::{Item, StrftimeItems};
use chrono::{Local, Utc};
use fake::Fake;
use fake::faker::{address, company, currency, internet, job, lorem, name, phone_number};
use rand::Rng;
use serde_json::Value;

/// A template error, at a 1-based line and column of the template text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct TemplateError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// A fake value.
type FakeFn = fn() -> String;

/// The zero-argument fakers, by their faker.js names.
const FAKERS: &[(&str, FakeFn)] = &[
    ("internet.ip", || internet::en::IPv4().fake()),
    ("internet.ipv6", || internet::en::IPv6().fake()),
    ("internet.userName", || internet::en::Username().fake()),
    ("internet.email", || internet::en::FreeEmail().fake()),
    ("internet.domainSuffix", || {
        internet::en::DomainSuffix().fake()
    }),
    ("internet.userAgent", || internet::en::UserAgent().fake()),
    ("internet.mac", || internet::en::MACAddress().fake()),
    ("internet.password", || internet::en::Password(8..16).fake()),
    ("name.firstName", || name::en::FirstName().fake()),
    ("name.lastName", || name::en::LastName().fake()),
    ("name.findName", || name::en::Name().fake()),
    ("name.fullName", || name::en::Name().fake()),
    ("name.jobTitle", || job::en::Title().fake()),
    ("address.city", || address::en::CityName().fake()),
    ("address.country", || address::en::CountryName().fake()),
    ("address.countryCode", || address::en::CountryCode().fake()),
    ("address.state", || address::en::StateName().fake()),
    ("address.streetName", || address::en::StreetName().fake()),
    ("address.zipCode", || address::en::ZipCode().fake()),
    ("address.latitude", || address::en::Latitude().fake()),
    ("address.longitude", || address::en::Longitude().fake()),
    ("company.companyName", || company::en::CompanyName().fake()),
    ("company.catchPhrase", || company::en::CatchPhrase().fake()),
    ("company.industry", || company::en::Industry().fake()),
    ("phone.phoneNumber", || {
        phone_number::en::PhoneNumber().fake()
    }),
    ("finance.currencyCode", || {
        currency::en::CurrencyCode().fake()
    }),
    ("lorem.word", || lorem::en::Word().fake()),
    ("random.word", || lorem::en::Word().fake()),
];

/// Functions with arguments (or none), besides the fakers.
const FUNCTIONS: &[&str] = &[
    "random.number",
    "random.arrayElement",
    "random.weightedArrayElement",
    "random.uuid",
    "random.boolean",
    "random.alphaNumeric",
    "random.words",
    "lorem.words",
    "lorem.sentence",
    "lorem.sentences",
    "lorem.paragraph",
    "date.now",
    "date.utc",
    "date.epoch",
    "finance.amount",
];

#[derive(Debug, Clone)]
enum DateFormat {
    Items(Vec<Item<'static>>),
    EpochMillis,
    Rfc3339,
}

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Fake(FakeFn),
    Number { min: i64, max: i64 },
    Decimal { min: f64, max: f64, places: usize },
    Element(Vec<String>),
    Weighted(Vec<(String, f64)>, f64),
    Uuid,
    Boolean,
    AlphaNumeric(usize),
    Words(usize),
    Sentence(usize),
    Sentences(usize),
    Paragraph,
    Date { utc: bool, format: DateFormat },
}

/// A compiled template.
#[derive(Debug, Clone)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// The moment.js format tokens the Kinesis Data Generator's `date.now(…)` takes, as chrono's.
fn moment_to_strftime(fmt: &str) -> Result<DateFormat, String> {
    match fmt {
        "x" => return Ok(DateFormat::EpochMillis),
        "" => return Ok(DateFormat::Rfc3339),
        _ => {}
    }
    const TOKENS: &[(&str, &str)] = &[
        ("YYYY", "%Y"),
        ("YY", "%y"),
        ("MMMM", "%B"),
        ("MMM", "%b"),
        ("MM", "%m"),
        ("M", "%-m"),
        ("dddd", "%A"),
        ("ddd", "%a"),
        ("DDDD", "%j"),
        ("DD", "%d"),
        ("D", "%-d"),
        ("HH", "%H"),
        ("H", "%-H"),
        ("hh", "%I"),
        ("h", "%-I"),
        ("mm", "%M"),
        ("m", "%-M"),
        ("ss", "%S"),
        ("s", "%-S"),
        ("SSS", "%3f"),
        ("A", "%p"),
        ("a", "%P"),
        ("ZZ", "%z"),
        ("Z", "%:z"),
        ("X", "%s"),
    ];
    let mut out = String::new();
    let mut rest = fmt;
    'outer: while let Some(c) = rest.chars().next() {
        if c == '[' {
            let end = rest.find(']').ok_or("an unclosed [ in the date format")?;
            out.push_str(&rest[1..end].replace('%', "%%"));
            rest = &rest[end + 1..];
            continue;
        }
        for (token, spec) in TOKENS {
            if let Some(after) = rest.strip_prefix(token) {
                out.push_str(spec);
                rest = after;
                continue 'outer;
            }
        }
        if c == '%' {
            out.push_str("%%");
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    let items: Vec<Item<'static>> = StrftimeItems::new(&out)
        .parse_to_owned()
        .map_err(|e| format!("date format {fmt:?}: {e}"))?;
    Ok(DateFormat::Items(items))
}

fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

/// The end (exclusive) of the balanced `( … )` that starts at `open`, skipping JSON strings.
fn closing_paren(text: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text[open..].char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return (c == ')').then_some(open + i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn count_arg(args: &[Value], default: usize) -> Result<usize, String> {
    match args.first() {
        None => Ok(default),
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n <= 100_000) => {
            Ok(n.as_u64().unwrap_or(0) as usize)
        }
        Some(other) => Err(format!("expected a count, got {other}")),
    }
}

fn compile_call(name: &str, args: &[Value]) -> Result<Piece, String> {
    if let Some((_, f)) = FAKERS.iter().find(|(n, _)| *n == name) {
        if !args.is_empty() {
            return Err(format!("{name} takes no arguments"));
        }
        return Ok(Piece::Fake(*f));
    }
    let f64_of = |v: Option<&Value>, d: f64| v.and_then(Value::as_f64).unwrap_or(d);
    Ok(match name {
        "random.number" | "finance.amount" => {
            let (min, max, precision) = match args {
                [] => (0.0, 99_999.0, 1.0),
                [Value::Number(max)] => (0.0, max.as_f64().unwrap_or(0.0), 1.0),
                [Value::Object(o)] => (
                    f64_of(o.get("min"), 0.0),
                    f64_of(o.get("max"), 99_999.0),
                    f64_of(o.get("precision"), 1.0),
                ),
                [min, max, rest @ ..] if min.is_number() && max.is_number() => {
                    let places = rest.first().and_then(Value::as_u64).unwrap_or(0);
                    (
                        f64_of(Some(min), 0.0),
                        f64_of(Some(max), 0.0),
                        10f64.powi(-(places as i32)),
                    )
                }
                _ => return Err(format!("{name} takes a maximum or {{\"min\",\"max\"}}")),
            };
            if min > max {
                return Err(format!("{name}: min {min} is above max {max}"));
            }
            if precision >= 1.0 && name == "random.number" {
                Piece::Number {
                    min: min.ceil() as i64,
                    max: max.floor() as i64,
                }
            } else {
                let places = (-precision.log10()).round().max(0.0) as usize;
                Piece::Decimal { min, max, places }
            }
        }
        "random.arrayElement" => match args {
            [Value::Array(items)] if !items.is_empty() => {
                Piece::Element(items.iter().map(plain).collect())
            }
            _ => return Err(format!("{name} takes a non-empty array")),
        },
        "random.weightedArrayElement" => {
            // KDG: {"weights":[0.9,0.1],"data":["200","500"]}
            let Some(Value::Object(o)) = args.first() else {
                return Err(format!("{name} takes {{\"weights\":[…],\"data\":[…]}}"));
            };
            let (Some(Value::Array(w)), Some(Value::Array(d))) = (o.get("weights"), o.get("data"))
            else {
                return Err(format!("{name} takes {{\"weights\":[…],\"data\":[…]}}"));
            };
            if w.len() != d.len() || d.is_empty() || w.iter().any(|w| !w.is_number()) {
                return Err(format!(
                    "{name}: as many numeric weights as data, at least one"
                ));
            }
            let pairs: Vec<(String, f64)> = d
                .iter()
                .map(plain)
                .zip(w.iter().map(|w| w.as_f64().unwrap_or(0.0)))
                .collect();
            let total = pairs.iter().map(|(_, w)| w).sum();
            Piece::Weighted(pairs, total)
        }
        "random.uuid" => Piece::Uuid,
        "random.boolean" => Piece::Boolean,
        "random.alphaNumeric" => Piece::AlphaNumeric(count_arg(args, 1)?),
        "random.words" | "lorem.words" => Piece::Words(count_arg(args, 3)?),
        "lorem.sentence" => Piece::Sentence(count_arg(args, 0)?),
        "lorem.sentences" => Piece::Sentences(count_arg(args, 3)?),
        "lorem.paragraph" => Piece::Paragraph,
        "date.now" | "date.utc" => {
            let format = match args {
                [] => DateFormat::Rfc3339,
                [Value::String(f)] => moment_to_strftime(f)?,
                _ => return Err(format!("{name} takes a format string")),
            };
            Piece::Date {
                utc: name == "date.utc",
                format,
            }
        }
        "date.epoch" => Piece::Date {
            utc: true,
            format: DateFormat::Items(
                StrftimeItems::new("%s")
                    .parse_to_owned()
                    .map_err(|e| e.to_string())?,
            ),
        },
        _ => {
            let mut known: Vec<&str> = FAKERS.iter().map(|(n, _)| *n).collect();
            known.extend(FUNCTIONS);
            known.sort();
            return Err(format!(
                "unknown function {name:?} (known: {})",
                known.join(", ")
            ));
        }
    })
}

impl Template {
    pub fn compile(text: &str) -> Result<Self, TemplateError> {
        let err = |offset: usize, message: String| {
            let (line, column) = position(text, offset);
            TemplateError {
                line,
                column,
                message,
            }
        };
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut i = 0;
        while i < text.len() {
            let Some(rel) = text[i..].find("{{") else {
                literal.push_str(&text[i..]);
                break;
            };
            literal.push_str(&text[i..i + rel]);
            let open = i + rel;
            let mut j = open + 2;
            j += text[j..].len() - text[j..].trim_start().len();
            let name_len = text[j..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
                .unwrap_or(text.len() - j);
            let name = &text[j..j + name_len];
            if name.is_empty() {
                return Err(err(j, "expected a function name after {{".into()));
            }
            let name_at = j;
            j += name_len;
            let mut args = Vec::new();
            if text[j..].starts_with('(') {
                let close = closing_paren(text, j)
                    .ok_or_else(|| err(j, format!("unbalanced ( after {name}")))?;
                let inner = &text[j + 1..close - 1];
                if !inner.trim().is_empty() {
                    let parsed: Value =
                        serde_json::from_str(&format!("[{inner}]")).map_err(|e| {
                            err(j + 1, format!("arguments of {name} are not JSON: {e}"))
                        })?;
                    args = parsed.as_array().cloned().unwrap_or_default();
                }
                j = close;
            }
            j += text[j..].len() - text[j..].trim_start().len();
            if !text[j..].starts_with("}}") {
                return Err(err(j, format!("expected }}}} to close {{{{{name}")));
            }
            let piece = compile_call(name, &args).map_err(|m| err(name_at, m))?;
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(piece);
            i = j + 2;
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template { pieces })
    }

    /// One record.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let mut rng = rand::rng();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Fake(f) => out.push_str(&f()),
                Piece::Number { min, max } => {
                    let _ = write!(out, "{}", rng.random_range(*min..=*max));
                }
                Piece::Decimal { min, max, places } => {
                    let v = if max > min {
                        rng.random_range(*min..=*max)
                    } else {
                        *min
                    };
                    let _ = write!(out, "{v:.places$}");
                }
                Piece::Element(items) => out.push_str(&items[rng.random_range(0..items.len())]),
                Piece::Weighted(pairs, total) => {
                    let mut pick = rng.random_range(0.0..(*total).max(f64::MIN_POSITIVE));
                    let chosen = pairs
                        .iter()
                        .find(|(_, w)| {
                            pick -= w;
                            pick < 0.0
                        })
                        .unwrap_or(&pairs[pairs.len() - 1]);
                    out.push_str(&chosen.0);
                }
                Piece::Uuid => {
                    let _ = write!(out, "{}", uuid::Uuid::new_v4());
                }
                Piece::Boolean => out.push_str(if rng.random() { "true" } else { "false" }),
                Piece::AlphaNumeric(n) => {
                    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
                    for _ in 0..*n {
                        out.push(CHARS[rng.random_range(0..CHARS.len())] as char);
                    }
                }
                Piece::Words(n) => {
                    let words: Vec<String> = lorem::en::Words(*n..*n + 1).fake();
                    out.push_str(&words.join(" "));
                }
                Piece::Sentence(n) => {
                    let n = if *n == 0 { rng.random_range(3..10) } else { *n };
                    out.push_str(&lorem::en::Sentence(n..n + 1).fake::<String>());
                }
                Piece::Sentences(n) => {
                    let s: Vec<String> = lorem::en::Sentences(*n..*n + 1).fake();
                    out.push_str(&s.join(" "));
                }
                Piece::Paragraph => out.push_str(&lorem::en::Paragraph(3..6).fake::<String>()),
                Piece::Date { utc, format } => match format {
                    DateFormat::EpochMillis => {
                        let _ = write!(out, "{}", Utc::now().timestamp_millis());
                    }
                    DateFormat::Rfc3339 if *utc => out
                        .push_str(&Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                    DateFormat::Rfc3339 => out.push_str(
                        &Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false),
                    ),
                    DateFormat::Items(items) if *utc => {
                        let _ = write!(out, "{}", Utc::now().format_with_items(items.iter()));
                    }
                    DateFormat::Items(items) => {
                        let _ = write!(out, "{}", Local::now().format_with_items(items.iter()));
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str) -> String {
        let mut s = String::new();
        Template::compile(t).unwrap().render(&mut s);
        s
    }

    #[test]
    fn renders_kdg_placeholders() {
        let out = render(
            r#"{"id":"{{random.uuid}}","n":{{random.number(100)}},"m":{{random.number({"min":5,"max":5})}},"c":"{{random.arrayElement(["a","b"])}}","ip":"{{internet.ip}}","s":"{{lorem.sentence}}","w":"{{random.weightedArrayElement({"weights":[1,0],"data":["yes","no"]})}}"}"#,
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["id"].as_str().unwrap().len(), 36);
        assert!(v["n"].as_i64().unwrap() <= 100);
        assert_eq!(v["m"], 5);
        assert!(["a", "b"].contains(&v["c"].as_str().unwrap()));
        assert!(
            v["ip"]
                .as_str()
                .unwrap()
                .parse::<std::net::Ipv4Addr>()
                .is_ok()
        );
        assert!(!v["s"].as_str().unwrap().is_empty());
        assert_eq!(v["w"], "yes");
    }

    #[test]
    fn dates_in_moment_formats() {
        let out = render(r#"{{date.utc("YYYY-MM-DD[T]HH:mm:ss")}}|{{date.now("x")}}"#);
        let (a, b) = out.split_once('|').unwrap();
        assert!(
            chrono::NaiveDateTime::parse_from_str(a, "%Y-%m-%dT%H:%M:%S").is_ok(),
            "{a}"
        );
        assert!(b.parse::<i64>().unwrap() > 1_600_000_000_000);
        let apache = render(r#"{{date.now("DD/MMM/YYYY:HH:mm:ss ZZ")}}"#);
        assert!(
            chrono::DateTime::parse_from_str(&apache, "%d/%b/%Y:%H:%M:%S %z").is_ok(),
            "{apache}"
        );
    }

    #[test]
    fn errors_say_where() {
        let e = Template::compile("{\n  \"a\": {{random.nmber(3)}}\n}").unwrap_err();
        assert_eq!((e.line, e.column), (2, 10));
        assert!(
            e.message.contains("unknown function \"random.nmber\""),
            "{e}"
        );
        let e = Template::compile("x {{internet.ip").unwrap_err();
        assert_eq!((e.line, e.column), (1, 16));
        let e = Template::compile("{{random.arrayElement([1,2)}}").unwrap_err();
        assert!(e.message.contains("unbalanced"), "{e}");
        let e = Template::compile("{{random.number(\"x\")}}").unwrap_err();
        assert_eq!((e.line, e.column), (1, 3));
    }

    #[test]
    fn every_faker_gives_a_value() {
        for (name, _) in FAKERS {
            let out = render(&format!("{{{{{name}}}}}"));
            assert!(!out.is_empty(), "{name} rendered nothing");
        }
    }

    #[test]
    fn text_without_placeholders_is_kept() {
        assert_eq!(
            render("plain {not a placeholder}\n"),
            "plain {not a placeholder}\n"
        );
    }
}
