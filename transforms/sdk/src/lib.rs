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
//!     fn process(&mut self, record: Record) -> Outcome {
//!         Outcome::ok(record.data.to_ascii_uppercase())
//!     }
//! }
//!
//! hosepipe_transform::export_transform!(Upper);
//! # let mut t = Upper::init(&Params::default()).unwrap();
//! # assert_eq!(t.process(Record::new(b"a".to_vec())), Outcome::ok(b"A".to_vec()));
//! ```

/// One record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Opaque id; the SDK echoes it back for you.
    pub id: u64,
    /// The record's bytes.
    pub data: Vec<u8>,
    /// When hosepipe accepted the record, epoch milliseconds.
    pub arrival_ms: i64,
}

impl Record {
    /// A record with id 0 and arrival time 0 (for tests).
    pub fn new(data: impl Into<Vec<u8>>) -> Self {
        Record {
            id: 0,
            data: data.into(),
            arrival_ms: 0,
        }
    }
}

/// What became of one record (Firehose's `result`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `Ok`: deliver `data`, with optional dynamic-partitioning keys.
    Ok {
        data: Vec<u8>,
        partition_keys: Vec<(String, String)>,
    },
    /// `Dropped`: deliver nothing; counts as success.
    Dropped,
    /// `ProcessingFailed`: the original record goes to the error output with this message.
    Failed(String),
}

impl Outcome {
    /// `Ok` with new data and no partition keys.
    pub fn ok(data: impl Into<Vec<u8>>) -> Self {
        Outcome::Ok {
            data: data.into(),
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

    /// Transforms one record.
    fn process(&mut self, record: Record) -> Outcome;
}

/// Runs a batch through a transform, as the host does: one outcome per record, in order.
pub fn run_batch<T: Transform>(transform: &mut T, records: Vec<Record>) -> Vec<Outcome> {
    records.into_iter().map(|r| transform.process(r)).collect()
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
                fn process(
                    batch: ::std::vec::Vec<$crate::guest::Input>,
                ) -> ::std::vec::Vec<$crate::guest::Output> {
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

    pub use self::hosepipe::transform::types::{Outcome as WitOutcome, PartitionKey, Transformed};

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

    pub fn process<T: crate::Transform>(batch: Vec<Input>) -> Vec<Output> {
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
            batch
                .into_iter()
                .map(|input| {
                    let id = input.id;
                    let record = crate::Record {
                        id,
                        data: input.data,
                        arrival_ms: input.arrival_ms,
                    };
                    let outcome = match t.process(record) {
                        crate::Outcome::Ok {
                            data,
                            partition_keys,
                        } => WitOutcome::Ok(Transformed {
                            data,
                            partition_keys: partition_keys
                                .into_iter()
                                .map(|(name, value)| PartitionKey { name, value })
                                .collect(),
                        }),
                        crate::Outcome::Dropped => WitOutcome::Dropped,
                        crate::Outcome::Failed(m) => WitOutcome::ProcessingFailed(m),
                    };
                    Output { id, outcome }
                })
                .collect()
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
                data: b"x".to_vec(),
                partition_keys: vec![("k".into(), "v".into())]
            }
        );
        assert_eq!(
            Outcome::Dropped.with_partition_key("k", "v"),
            Outcome::Dropped
        );
    }
}
