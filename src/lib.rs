//! hosepipe: a self-hosted delivery-stream daemon that speaks the Amazon Data Firehose API.
//!
//! The data path, one module per stage: [`api`] → [`buffer`] → [`deliver`] (naming, with
//! [`compress`]) → the `hosepipe-sinks` destinations, wired per stream in [`pipeline`].
//! The producers that feed it — [`agent`] (tails files) and [`generate`] (test data) — send
//! through [`producer`].

pub mod admission;
pub mod agent;
pub mod api;
pub mod aws_client;
pub mod bench;
pub mod buffer;
pub mod compress;
pub mod config;
pub mod credentials;
pub mod crypto;
pub mod deliver;
pub mod durable;
pub mod encode;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
pub mod generate;
pub mod journal;
pub mod metrics;
pub mod partition;
pub mod pipeline;
pub mod producer;
pub mod registry;
pub mod schema;
pub mod secrets;
pub mod server;
pub mod spool;
pub mod status;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tidy;
pub mod tls;
#[cfg(feature = "operator-tools")]
pub mod top;
pub mod transform;
