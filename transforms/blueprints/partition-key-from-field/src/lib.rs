//! Blueprint `partition-key-from-field`: passes JSON-object records through unchanged and
//! returns dynamic-partitioning keys (`!{partitionKeyFromLambda:NAME}`) read from their fields.
//!
//! Parameter `Fields`: comma-separated `name=path` pairs, or bare paths (the key is then the
//! path's last segment); `a.b` reaches into nested objects. Strings are used as they are,
//! numbers and booleans as their JSON text. A record that is not a JSON object, or lacks one
//! of the fields (or has it as null, an array or an object), is ProcessingFailed naming it.

use hosepipe_transform::{Outcome, Params, Record, Transform};
use serde_json::Value;

#[derive(Debug)]
pub struct PartitionKeyFromField {
    /// (key name, JSON pointer, dotted path for messages)
    keys: Vec<(String, String, String)>,
}

impl Transform for PartitionKeyFromField {
    fn init(params: &Params) -> Result<Self, String> {
        let fields = params.list("Fields");
        if fields.is_empty() {
            return Err("parameter Fields is required (e.g. \"customer_id=customer.id\")".into());
        }
        let mut keys = Vec::new();
        for f in fields {
            let (name, path) = match f.split_once('=') {
                Some((n, p)) => (n.trim().to_string(), p.trim().to_string()),
                None => (f.rsplit('.').next().unwrap_or(&f).to_string(), f.clone()),
            };
            if name.is_empty() || path.is_empty() || path.split('.').any(str::is_empty) {
                return Err(format!("field {f:?} is not NAME=PATH or PATH"));
            }
            let pointer = format!(
                "/{}",
                path.replace('~', "~0").replace('/', "~1").replace('.', "/")
            );
            keys.push((name, pointer, path));
        }
        Ok(PartitionKeyFromField { keys })
    }

    fn process<'a>(&mut self, record: Record<'a>) -> Outcome<'a> {
        let value: Value = match serde_json::from_slice(record.data) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return Outcome::failed("record is not a JSON object"),
            Err(e) => return Outcome::failed(format!("record is not JSON: {e}")),
        };
        let mut outcome = Outcome::ok(record.data);
        for (name, pointer, path) in &self.keys {
            let text = match value.pointer(pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
                Some(_) => {
                    return Outcome::failed(format!(
                        "field {path} is not a string, number or boolean"
                    ));
                }
                None => return Outcome::failed(format!("field {path} is missing")),
            };
            outcome = outcome.with_partition_key(name.clone(), text);
        }
        outcome
    }
}

hosepipe_transform::export_transform!(PartitionKeyFromField);

#[cfg(test)]
mod tests {
    use super::*;

    fn t(fields: &str) -> PartitionKeyFromField {
        PartitionKeyFromField::init(&Params::new([("Fields", fields)])).unwrap()
    }

    #[test]
    fn keys_come_from_fields_and_data_is_unchanged() {
        let rec = r#"{"customer":{"id":42},"region":"eu","ok":true}"#;
        assert_eq!(
            t("customer_id=customer.id, region, ok").process(Record::new(rec)),
            Outcome::Ok {
                data: rec.as_bytes().into(),
                partition_keys: vec![
                    ("customer_id".into(), "42".into()),
                    ("region".into(), "eu".into()),
                    ("ok".into(), "true".into()),
                ]
            }
        );
    }

    #[test]
    fn missing_or_unusable_fields_fail_naming_them() {
        let mut k = t("customer.id");
        for (rec, reason) in [
            (r#"{"customer":{}}"#, "customer.id is missing"),
            (r#"{"customer":{"id":null}}"#, "not a string"),
            ("[1]", "not a JSON object"),
            ("nope", "not JSON"),
        ] {
            match k.process(Record::new(rec)) {
                Outcome::Failed(m) => assert!(m.contains(reason), "{m}"),
                other => panic!("{other:?}"),
            }
        }
        assert!(PartitionKeyFromField::init(&Params::default()).is_err());
        assert!(PartitionKeyFromField::init(&Params::new([("Fields", "=a")])).is_err());
    }
}
