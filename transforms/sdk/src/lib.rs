//! The guest SDK for hosepipe transforms (the WebAssembly counterpart of a Firehose
//! data-transformation Lambda).
//!
//! A transform is a type implementing [`Transform`]: `init` reads the processor's parameters
//! once, `process` turns one record into an [`Outcome`]. [`export_transform!`] makes it the
//! component's exports (`transforms/wit/transform.wit`). Built natively, the same type is plain
//! Rust: call it from unit tests, or through [`run_batch`].
//!
//! ```
//! use hosepipe_transform::{Outcome, Params, Record, Transform};
//!
//! struct Upper;
//!
//! impl Transform for Upper {
//!     fn init(_: &Params) -> Result<Self, String> {
//!         Ok(Upper)
//!     }
//!     fn process<'a>(&mut self, record: Record<'a>) -> Outcome<'a> {
//!         Outcome::ok(record.data.to_ascii_uppercase())
//!     }
//! }
//!
//! hosepipe_transform::export_transform!(Upper);
//! # let mut t = Upper::init(&Params::default()).unwrap();
//! # assert_eq!(t.process(Record::new("a")), Outcome::ok("A"));
//! ```

use std::borrow::Cow;

/// One record of a batch. Its bytes are borrowed from the batch: return them (or a part of
/// them) in an [`Outcome`] and nothing is copied until the SDK writes the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Opaque id; the SDK echoes it back for you.
    pub id: u64,
    /// The record's bytes.
    pub data: &'a [u8],
    /// When hosepipe accepted the record, epoch milliseconds.
    pub arrival_ms: i64,
}

impl<'a> Record<'a> {
    /// A record with id 0 and arrival time 0 (for tests).
    pub fn new<D: AsRef<[u8]> + ?Sized>(data: &'a D) -> Self {
        Record {
            id: 0,
            data: data.as_ref(),
            arrival_ms: 0,
        }
    }
}

/// Bytes for an [`Outcome`]: borrowed from the record (`&[u8]`, `&str`) or new (`Vec<u8>`,
/// `String`).
pub trait IntoData<'a> {
    fn into_data(self) -> Cow<'a, [u8]>;
}

impl<'a> IntoData<'a> for &'a [u8] {
    fn into_data(self) -> Cow<'a, [u8]> {
        Cow::Borrowed(self)
    }
}

impl<'a, const N: usize> IntoData<'a> for &'a [u8; N] {
    fn into_data(self) -> Cow<'a, [u8]> {
        Cow::Borrowed(self)
    }
}

impl<'a> IntoData<'a> for &'a str {
    fn into_data(self) -> Cow<'a, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
}

impl<'a> IntoData<'a> for Vec<u8> {
    fn into_data(self) -> Cow<'a, [u8]> {
        Cow::Owned(self)
    }
}

impl<'a> IntoData<'a> for String {
    fn into_data(self) -> Cow<'a, [u8]> {
        Cow::Owned(self.into_bytes())
    }
}

impl<'a> IntoData<'a> for Cow<'a, [u8]> {
    fn into_data(self) -> Cow<'a, [u8]> {
        self
    }
}

/// What became of one record (Firehose's `result`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// `Ok`: deliver `data`, with optional dynamic-partitioning keys.
    Ok {
        data: Cow<'a, [u8]>,
        partition_keys: Vec<(String, String)>,
    },
    /// `Dropped`: deliver nothing; counts as success.
    Dropped,
    /// `ProcessingFailed`: the original record goes to the error output with this message.
    Failed(String),
}

impl<'a> Outcome<'a> {
    /// `Ok` with new data (or the record's own) and no partition keys.
    pub fn ok(data: impl IntoData<'a>) -> Self {
        Outcome::Ok {
            data: data.into_data(),
            partition_keys: Vec::new(),
        }
    }

    /// `ProcessingFailed` with a message.
    pub fn failed(message: impl Into<String>) -> Self {
        Outcome::Failed(message.into())
    }

    /// Adds a partition key to an `Ok` outcome (other outcomes are returned unchanged).
    pub fn with_partition_key(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        if let Outcome::Ok { partition_keys, .. } = &mut self {
            partition_keys.push((name.into(), value.into()));
        }
        self
    }
}

/// The processor's parameters (`ParameterName` → `ParameterValue`), in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn new(pairs: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>) -> Self {
        Params(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// The value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A `true`/`false` parameter, `default` when absent.
    pub fn flag(&self, name: &str, default: bool) -> Result<bool, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(format!("parameter {name}: {v:?} is not true or false")),
        }
    }

    /// A comma-separated list parameter (empty when absent); items are trimmed.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every parameter, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// A record transform.
pub trait Transform: Sized + 'static {
    /// Reads the parameters once per instance; an `Err` rejects them (the stream cannot be
    /// created with them).
    fn init(params: &Params) -> Result<Self, String>;

    /// Transforms one record. The outcome may borrow the record's bytes.
    fn process<'a>(&mut self, record: Record<'a>) -> Outcome<'a>;
}

/// Runs a batch through a transform, as the host does: one outcome per record, in order.
pub fn run_batch<'a, T: Transform>(transform: &mut T, records: &[Record<'a>]) -> Vec<Outcome<'a>> {
    records.iter().map(|r| transform.process(*r)).collect()
}

/// Helpers for transforms that emit JSON (feature `json`).
#[cfg(feature = "json")]
pub mod json {
    use super::{Outcome, Record};
    use serde_json::{Map, Value};

    /// `value` as an `Ok` outcome, followed by `\n` when `append_newline`.
    pub fn outcome(value: &Value, append_newline: bool) -> Outcome<'static> {
        let mut out = serde_json::to_vec(value).expect("JSON into memory");
        if append_newline {
            out.push(b'\n');
        }
        Outcome::ok(out)
    }

    /// A text line (UTF-8, trailing CR/LF dropped) parsed by `parse` into a JSON object; a line
    /// that is not UTF-8 or does not parse is `ProcessingFailed` with the reason.
    pub fn line_to_object<'a>(
        record: Record<'a>,
        append_newline: bool,
        parse: impl FnOnce(&str) -> Result<Map<String, Value>, String>,
    ) -> Outcome<'a> {
        let line = match std::str::from_utf8(record.data) {
            Ok(line) => line.trim_end_matches(['\r', '\n']),
            Err(e) => return Outcome::failed(format!("not UTF-8: {e}")),
        };
        match parse(line) {
            Ok(fields) => outcome(&Value::Object(fields), append_newline),
            Err(e) => Outcome::failed(e),
        }
    }
}

/// Makes `$t` (a [`Transform`]) the component's `init` and `process` exports. Does nothing when
/// built for a non-wasm target, so the same crate is unit-tested natively.
#[macro_export]
macro_rules! export_transform {
    ($t:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct HosepipeGuest;
            impl $crate::guest::Guest for HosepipeGuest {
                fn init(
                    parameters: ::std::vec::Vec<$crate::guest::Parameter>,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::guest::init::<$t>(parameters)
                }
                fn process(batch: $crate::guest::Batch) -> $crate::guest::Processed {
                    $crate::guest::process::<$t>(batch)
                }
            }
    $crate::guest::export!(HosepipeGuest with_types_in $crate::guest);
        };
    };
}

/// The generated component bindings and the glue [`export_transform!`] expands to. Also usable
/// directly by a guest that wants the raw batch contract.
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod guest {
    wit_bindgen::generate!({
        path: "../wit",
        world: "transformer",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "hosepipe_transform::guest",
    });

    pub use self::hosepipe::transform::types::{PartitionKey, Source, Status};

    use std::any::Any;
    use std::cell::RefCell;

    thread_local! {
        static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    pub fn init<T: crate::Transform>(parameters: Vec<Parameter>) -> Result<(), String> {
        let params = crate::Params::new(parameters.into_iter().map(|p| (p.name, p.value)));
        let t = T::init(&params)?;
        STATE.with(|s| *s.borrow_mut() = Some(Box::new(t)));
        Ok(())
    }

    /// Runs every record of the batch through `T`, writing the transformed bytes one after
    /// the other into the answer's buffer.
    pub fn process<T: crate::Transform>(batch: Batch) -> Processed {
        STATE.with(|s| {
            let mut state = s.borrow_mut();
            if state.is_none() {
                let t = T::init(&crate::Params::default()).unwrap_or_else(|e| {
                    panic!("process called before init, and init with no parameters failed: {e}")
                });
                *state = Some(Box::new(t));
            }
            let t = state
                .as_mut()
                .and_then(|b| b.downcast_mut::<T>())
                .expect("the state is this transform");
            let input = batch.data.as_slice();
            let within = |b: &[u8]| {
                let range = input.as_ptr_range();
                (range.contains(&b.as_ptr()) || b.as_ptr() == range.end)
                    && b.as_ptr() as usize + b.len() <= range.end as usize
            };
            let span = |bytes: &[u8], data: &mut Vec<u8>| {
                if within(bytes) {
                    (
                        Source::Input,
                        (bytes.as_ptr() as usize - input.as_ptr() as usize) as u32,
                    )
                } else {
                    let offset = data.len() as u32;
                    data.extend_from_slice(bytes);
                    (Source::Output, offset)
                }
            };
            let n = batch.ids.len();
            let mut out = Processed {
                data: Vec::new(),
                ids: Vec::with_capacity(n),
                statuses: Vec::with_capacity(n),
                sources: Vec::with_capacity(n),
                offsets: Vec::with_capacity(n),
                lengths: Vec::with_capacity(n),
                partition_keys: Vec::new(),
            };
            let mut start = 0usize;
            for i in 0..n {
                let len = batch.lengths.get(i).copied().unwrap_or(0) as usize;
                let outcome = match input.get(start..start + len) {
                    Some(bytes) => t.process(crate::Record {
                        id: batch.ids[i],
                        data: bytes,
                        arrival_ms: batch.arrivals_ms.get(i).copied().unwrap_or(0),
                    }),
                    None => crate::Outcome::Failed("the host sent a record past the batch".into()),
                };
                start += len;
                let (status, bytes, keys) = match &outcome {
                    crate::Outcome::Ok {
                        data,
                        partition_keys,
                    } => (Status::Ok, data.as_ref(), partition_keys.as_slice()),
                    crate::Outcome::Dropped => (Status::Dropped, &[][..], &[][..]),
                    crate::Outcome::Failed(m) => (Status::ProcessingFailed, m.as_bytes(), &[][..]),
                };
                let (source, offset) = span(bytes, &mut out.data);
                out.partition_keys
                    .extend(keys.iter().map(|(name, value)| PartitionKey {
                        output: i as u32,
                        name: name.clone(),
                        value: value.clone(),
                    }));
                out.ids.push(batch.ids[i]);
                out.statuses.push(status);
                out.sources.push(source);
                out.offsets.push(offset);
                out.lengths.push(bytes.len() as u32);
            }
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_read_flags_and_lists() {
        let p = Params::new([("a", "TRUE"), ("b", "x, y,,z"), ("c", "maybe")]);
        assert_eq!(p.flag("a", false), Ok(true));
        assert_eq!(p.flag("missing", true), Ok(true));
        assert!(p.flag("c", false).unwrap_err().contains("maybe"));
        assert_eq!(p.list("b"), ["x", "y", "z"]);
        assert!(p.list("missing").is_empty());
    }

    #[test]
    fn partition_keys_attach_to_ok_only() {
        let ok = Outcome::ok("x").with_partition_key("k", "v");
        assert_eq!(
            ok,
            Outcome::Ok {
                data: b"x".as_slice().into(),
                partition_keys: vec![("k".into(), "v".into())]
            }
        );
        assert_eq!(
            Outcome::Dropped.with_partition_key("k", "v"),
            Outcome::Dropped
        );
    }
}
