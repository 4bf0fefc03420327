//! Pure encoding of what a stream delivers: object names and bodies, error-output documents,
//! Parquet, OpenSearch `_bulk` items, Splunk HEC bodies, HTTP endpoint requests.

pub mod error_output;
pub mod http_endpoint;
#[cfg(feature = "iceberg")]
pub mod iceberg;
pub mod object;
pub mod opensearch;
pub mod parquet;
pub mod prefix;
pub mod splunk;

pub use object::{
    ConvertedBatch, EncodedObject, encode_error_output, encode_s3, encode_s3_converted,
    error_object, zoned,
};
pub use prefix::ErrorOutputType;
