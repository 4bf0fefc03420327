//! `MetadataExtraction`'s jq query (`JsonParsingEngine` `JQ-1.6`), run with jaq.
//!
//! The query is compiled once per stream version; each record is parsed as JSON and run through
//! it. The result must be one object whose values are strings, numbers or booleans: they become
//! the record's `partitionKeyFromQuery` keys.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Native, Vars, data, unwrap_valr};
use jaq_json::Val;

/// Firehose allows at most this many keys in a query's object.
pub const MAX_KEYS: usize = 50;

type Filter = jaq_core::compile::Filter<Native<data::JustLut<Val>>>;

/// A compiled `MetadataExtractionQuery`. Send + Sync: one per stream version, shared by the
/// processing workers.
pub struct Query {
    text: String,
    filter: Filter,
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query").field("text", &self.text).finish()
    }
}

impl Query {
    /// Parses and compiles a query; the error says what is wrong with it, in jq's terms.
    pub fn compile(text: &str) -> Result<Query, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let program = File {
            code: text,
            path: (),
        };
        let modules = loader.load(&arena, program).map_err(|errors| {
            let mut out = Vec::new();
            for (_, error) in errors {
                match error {
                    jaq_core::load::Error::Io(items) => {
                        out.extend(items.into_iter().map(|(path, e)| format!("{path}: {e}")))
                    }
                    jaq_core::load::Error::Lex(items) => out.extend(
                        items
                            .into_iter()
                            .map(|(expected, at)| expected_at(expected.as_str(), text, at)),
                    ),
                    jaq_core::load::Error::Parse(items) => out.extend(
                        items
                            .into_iter()
                            .map(|(expected, at)| expected_at(expected.as_str(), text, at)),
                    ),
                }
            }
            format!("the jq query does not parse: {}", out.join("; "))
        })?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errors| {
                let names: Vec<String> = errors
                    .into_iter()
                    .flat_map(|(_, es)| es)
                    .map(|(name, kind)| format!("undefined {} {name}", kind.as_str()))
                    .collect();
                format!("the jq query does not compile: {}", names.join("; "))
            })?;
        Ok(Query {
            text: text.to_string(),
            filter,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Runs the query over one record: its `partitionKeyFromQuery` keys, sorted by name, or
    /// why there are none.
    pub fn extract(&self, record: &[u8]) -> Result<Vec<(String, String)>, String> {
        let input = jaq_json::read::parse_single(record)
            .map_err(|e| format!("the record is not JSON: {e}"))?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut out = self.filter.id.run((ctx, input)).map(unwrap_valr);
        let value = match out.next() {
            None => return Err("the jq query produced no value for this record".into()),
            Some(Err(e)) => return Err(format!("the jq query failed: {e}")),
            Some(Ok(v)) => v,
        };
        if out.next().is_some() {
            return Err("the jq query produced more than one value for this record".into());
        }
        let Val::Obj(map) = value else {
            return Err(format!(
                "the jq query produced {}, not an object of partition keys",
                short(&value)
            ));
        };
        if map.len() > MAX_KEYS {
            return Err(format!(
                "the jq query produced {} keys, over the limit of {MAX_KEYS}",
                map.len()
            ));
        }
        let mut keys = Vec::with_capacity(map.len());
        for (k, v) in map.iter() {
            let name = match k {
                Val::TStr(s) => String::from_utf8_lossy(s).into_owned(),
                other => other.to_string(),
            };
            let value = match v {
                Val::TStr(s) | Val::BStr(s) => String::from_utf8_lossy(s).into_owned(),
                Val::Num(_) | Val::Bool(_) => v.to_string(),
                Val::Null => {
                    return Err(format!(
                        "partition key {name:?} is null (the field is missing or null)"
                    ));
                }
                other => {
                    return Err(format!(
                        "partition key {name:?} is {}, not a string, number or boolean",
                        short(other)
                    ));
                }
            };
            keys.push((name, value));
        }
        keys.sort();
        Ok(keys)
    }
}

/// `expected X at column N`, where `at` is the rest of the text from the error on.
fn expected_at(expected: &str, text: &str, at: &str) -> String {
    let column = text.len().saturating_sub(at.len()) + 1;
    format!("expected {expected} at column {column}")
}

/// A value for an error message, cut to 60 characters.
fn short(v: &Val) -> String {
    let s = v.to_string();
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(q: &str, record: &str) -> Result<Vec<(String, String)>, String> {
        Query::compile(q).unwrap().extract(record.as_bytes())
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn firehose_style_queries_extract_keys() {
        assert_eq!(
            keys(
                "{customer_id:.customer_id, device:.device.type}",
                r#"{"customer_id":"1234567890","device":{"type":"mobile"}}"#
            ),
            Ok(pairs(&[
                ("customer_id", "1234567890"),
                ("device", "mobile")
            ]))
        );
        // Numbers and booleans print as jq prints them; pipes, interpolation and strftime work.
        assert_eq!(
            keys(
                r#"{id: .id, ok: .ok, year: .ts | strftime("%Y"), hour: (.ts | strftime("%H")), tag: "t-\(.id)"}"#,
                r#"{"id": 42, "ok": true, "ts": 1565380509}"#
            ),
            Ok(pairs(&[
                ("hour", "19"),
                ("id", "42"),
                ("ok", "true"),
                ("tag", "t-42"),
                ("year", "2019")
            ]))
        );
        assert_eq!(
            keys("{level: (.level | ascii_downcase)}", r#"{"level":"WARN"}"#),
            Ok(pairs(&[("level", "warn")]))
        );
    }

    #[test]
    fn records_without_usable_keys_say_why() {
        let q = "{customer_id:.customer_id}";
        for (record, needle) in [
            ("not json", "not JSON"),
            (r#"{"other":1}"#, "is null"),
            (
                r#"{"customer_id":{"a":1}}"#,
                "not a string, number or boolean",
            ),
            (r#"[1,2]"#, "failed"),
        ] {
            let err = keys(q, record).unwrap_err();
            assert!(err.contains(needle), "{record}: {err}");
        }
        assert!(
            keys(".a", r#"{"a":"x"}"#)
                .unwrap_err()
                .contains("not an object")
        );
        assert!(
            keys(".[]", r#"[{"a":"x"},{"a":"y"}]"#)
                .unwrap_err()
                .contains("more than one")
        );
        assert!(keys("empty", "{}").unwrap_err().contains("no value"));
    }

    #[test]
    fn bad_queries_are_refused_at_compile_time() {
        let e = Query::compile("{a: .a").unwrap_err();
        assert!(e.contains("does not parse"), "{e}");
        let e = Query::compile("{a: nosuchfn}").unwrap_err();
        assert!(e.contains("undefined filter nosuchfn"), "{e}");
    }

    #[test]
    fn the_query_is_shared_between_threads() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        let q = Query::compile("{a: .a}").unwrap();
        send_sync(&q);
        std::thread::scope(|s| {
            for i in 0..2 {
                let q = &q;
                s.spawn(move || {
                    let r = format!(r#"{{"a": {i}}}"#);
                    assert_eq!(q.extract(r.as_bytes()).unwrap()[0].1, i.to_string());
                });
            }
        });
    }
}
