//! The `hosepipe bench <what>` commands: each measures one part of the product against a bare
//! baseline in the same run (BENCHMARKS.md). Product modules never import this one.

pub mod agent;
pub mod backlog;
pub mod control;
pub mod convert;
pub mod encrypt;
pub mod fleet;
pub mod http_endpoint;
#[cfg(feature = "iceberg")]
pub mod iceberg;
pub mod ingest;
pub mod opensearch;
pub mod partition;
pub mod soak;
pub mod splunk;
pub mod transform;

pub use ingest::{peak_rss_mib, per_second, proc_status_kib};
