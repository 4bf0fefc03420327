//! Blueprint `json-field-filter`: keeps, drops or masks fields of JSON-object records.
//!
//! Parameters (comma-separated field paths; `a.b` reaches into nested objects):
//! - `Keep`: when given, only these fields are kept;
//! - `Drop`: these fields are removed;
//! - `Mask`: these fields' values are replaced by `MaskWith` (default `"****"`);
//! - `AppendNewline` (default `true`): end each object with `\n`.
//!
//! A record that is not a JSON object is ProcessingFailed. Absent fields are ignored.

use hosepipe_transform::{Outcome, Params, Record, Transform};
use serde_json::{Map, Value};

#[derive(Debug)]
pub struct JsonFieldFilter {
    keep: Vec<Vec<String>>,
    drop: Vec<Vec<String>>,
    mask: Vec<Vec<String>>,
    mask_with: String,
    append_newline: bool,
}

fn paths(params: &Params, name: &str) -> Vec<Vec<String>> {
    params
        .list(name)
        .into_iter()
        .map(|p| p.split('.').map(String::from).collect())
        .collect()
}

impl Transform for JsonFieldFilter {
    fn init(params: &Params) -> Result<Self, String> {
        let t = JsonFieldFilter {
            keep: paths(params, "Keep"),
            drop: paths(params, "Drop"),
            mask: paths(params, "Mask"),
            mask_with: params.get("MaskWith").unwrap_or("****").to_string(),
            append_newline: params.flag("AppendNewline", true)?,
        };
        if t.keep.is_empty() && t.drop.is_empty() && t.mask.is_empty() {
            return Err("give at least one of Keep, Drop or Mask".into());
        }
        if let Some(bad) = [&t.keep, &t.drop, &t.mask]
            .into_iter()
            .flatten()
            .find(|p| p.iter().any(String::is_empty))
        {
            return Err(format!(
                "field path {:?} has an empty segment",
                bad.join(".")
            ));
        }
        for (name, value) in params.iter() {
            if !["Keep", "Drop", "Mask", "MaskWith", "AppendNewline"].contains(&name) {
                return Err(format!("unknown parameter {name} (= {value:?})"));
            }
        }
        Ok(t)
    }

    fn process<'a>(&mut self, record: Record<'a>) -> Outcome<'a> {
        let mut object: Map<String, Value> = match serde_json::from_slice(record.data) {
            Ok(Value::Object(o)) => o,
            Ok(other) => {
                return Outcome::failed(format!(
                    "record is JSON but not an object: {}",
                    kind(&other)
                ));
            }
            Err(e) => return Outcome::failed(format!("record is not JSON: {e}")),
        };
        if !self.keep.is_empty() {
            let mut kept = Map::new();
            for path in &self.keep {
                if let Some(v) = take(&mut object, path) {
                    put(&mut kept, path, v);
                }
            }
            object = kept;
        }
        for path in &self.drop {
            take(&mut object, path);
        }
        for path in &self.mask {
            if take(&mut object, path).is_some() {
                put(&mut object, path, Value::String(self.mask_with.clone()));
            }
        }
        hosepipe_transform::json::outcome(&Value::Object(object), self.append_newline)
    }
}

hosepipe_transform::export_transform!(JsonFieldFilter);

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Removes and returns the value at `path`.
fn take(object: &mut Map<String, Value>, path: &[String]) -> Option<Value> {
    let (last, parents) = path.split_last()?;
    let mut cur = object;
    for p in parents {
        cur = cur.get_mut(p)?.as_object_mut()?;
    }
    cur.remove(last)
}

/// Sets the value at `path`, creating parent objects.
fn put(object: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = object;
    for p in parents {
        let slot = cur
            .entry(p.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        cur = slot.as_object_mut().expect("just made an object");
    }
    cur.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run<'a>(params: &[(&str, &str)], data: &'a str) -> Outcome<'a> {
        JsonFieldFilter::init(&Params::new(params.iter().copied()))
            .unwrap()
            .process(Record::new(data))
    }

    fn json_of(o: Outcome<'_>) -> Value {
        let Outcome::Ok { data, .. } = o else {
            panic!("{o:?}")
        };
        serde_json::from_slice(&data).unwrap()
    }

    #[test]
    fn keep_drop_and_mask_nested_fields() {
        let rec = r#"{"user":{"id":7,"email":"a@b.c"},"path":"/x","secret":"s"}"#;
        assert_eq!(
            json_of(run(&[("Keep", "user.id, path")], rec)),
            json!({"user": {"id": 7}, "path": "/x"})
        );
        assert_eq!(
            json_of(run(&[("Drop", "secret"), ("Mask", "user.email")], rec)),
            json!({"user": {"id": 7, "email": "****"}, "path": "/x"})
        );
        assert_eq!(
            json_of(run(&[("Mask", "secret,absent.x"), ("MaskWith", "X")], rec))["secret"],
            "X"
        );
    }

    #[test]
    fn bad_records_and_parameters_are_refused() {
        assert!(
            matches!(run(&[("Drop", "a")], "[1]"), Outcome::Failed(m) if m.contains("an array"))
        );
        assert!(matches!(run(&[("Drop", "a")], "{"), Outcome::Failed(m) if m.contains("not JSON")));
        assert!(JsonFieldFilter::init(&Params::default()).is_err());
        assert!(JsonFieldFilter::init(&Params::new([("Keep", "a..b")])).is_err());
        assert!(
            JsonFieldFilter::init(&Params::new([("Keep", "a"), ("Kep", "b")]))
                .unwrap_err()
                .contains("Kep")
        );
    }
}
