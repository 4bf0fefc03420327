//! Pure encoding of what a stream delivers: object names and bodies, error-output documents,
//! Parquet.

pub mod error_output;
pub mod object;
pub mod parquet;
pub mod prefix;

pub use object::{
    ConvertedBatch, EncodedObject, encode_error_output, encode_s3, encode_s3_converted, zoned,
};
pub use prefix::ErrorOutputType;
