//! Encoding batches into object bodies other than concatenated records: record format
//! conversion to Parquet. Pure: bytes in, bytes out.

pub mod parquet;
