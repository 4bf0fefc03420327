//! Object compression: `CompressionFormat` of the S3 destination. Pure: no I/O, no clock.

use std::io::Write;

use bytes::Bytes;

/// Firehose's `CompressionFormat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionFormat {
    Uncompressed,
    Gzip,
    Zip,
    /// Snappy framing format (`.snappy`), as `snzip` and python-snappy read it.
    Snappy,
    /// Hadoop's block format: per block, the uncompressed length, then compressed chunks each
    /// prefixed by their length (big-endian u32s), as Hadoop's `SnappyCodec` writes.
    HadoopSnappy,
}

/// The gzip level: 6 is gzip(1)'s and zlib's default, the usual balance of speed and size, and
/// what a user who runs `gzip` on the same data would get.
pub const GZIP_LEVEL: u32 = 6;

/// Hadoop's default snappy block size (io.compression.codec.snappy.buffersize).
const HADOOP_BLOCK: usize = 256 * 1024;

impl CompressionFormat {
    /// Parses the API value; `None` for an unknown one.
    pub fn from_api(value: &str) -> Option<Self> {
        Some(match value {
            "UNCOMPRESSED" => Self::Uncompressed,
            "GZIP" => Self::Gzip,
            "ZIP" => Self::Zip,
            "Snappy" => Self::Snappy,
            "HADOOP_SNAPPY" => Self::HadoopSnappy,
            _ => return None,
        })
    }

    pub const API_VALUES: &'static str = "UNCOMPRESSED, GZIP, ZIP, Snappy, HADOOP_SNAPPY";

    pub fn as_api(self) -> &'static str {
        match self {
            Self::Uncompressed => "UNCOMPRESSED",
            Self::Gzip => "GZIP",
            Self::Zip => "ZIP",
            Self::Snappy => "Snappy",
            Self::HadoopSnappy => "HADOOP_SNAPPY",
        }
    }

    /// The default object extension for this format.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Uncompressed => "",
            Self::Gzip => ".gz",
            Self::Zip => ".zip",
            // Hadoop's SnappyCodec also names its files `.snappy`.
            Self::Snappy | Self::HadoopSnappy => ".snappy",
        }
    }

    /// The Content-Type stored with the object.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Uncompressed | Self::HadoopSnappy => "application/octet-stream",
            Self::Gzip => "application/gzip",
            Self::Zip => "application/zip",
            Self::Snappy => "application/x-snappy-framed",
        }
    }
}

/// Why compressing failed (only I/O into memory, so in practice a bug or an impossible size).
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("{format:?} compression failed: {source}")]
    Io {
        format: CompressionFormat,
        source: std::io::Error,
    },
    #[error("zip archive failed: {0}")]
    Zip(#[from] zip::result::ZipError),
}

/// Compresses the concatenation of `parts` (Firehose concatenates records with no delimiter).
/// `entry_name` names the single file inside a ZIP archive.
pub fn compress<'a, I>(
    format: CompressionFormat,
    parts: I,
    total_len: usize,
    entry_name: &str,
) -> Result<Bytes, CompressError>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let io = |source| CompressError::Io { format, source };
    match format {
        CompressionFormat::Uncompressed => {
            let mut out = Vec::with_capacity(total_len);
            for p in parts {
                out.extend_from_slice(p);
            }
            Ok(out.into())
        }
        CompressionFormat::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(total_len / 4 + 64),
                flate2::Compression::new(GZIP_LEVEL),
            );
            for p in parts {
                enc.write_all(p).map_err(io)?;
            }
            Ok(enc.finish().map_err(io)?.into())
        }
        CompressionFormat::Snappy => {
            let mut enc = snap::write::FrameEncoder::new(Vec::with_capacity(total_len / 2 + 64));
            for p in parts {
                enc.write_all(p).map_err(io)?;
            }
            let out = enc
                .into_inner()
                .map_err(|e| io(std::io::Error::other(e.to_string())))?;
            Ok(out.into())
        }
        CompressionFormat::HadoopSnappy => {
            let mut joined = Vec::with_capacity(total_len);
            for p in parts {
                joined.extend_from_slice(p);
            }
            let mut enc = snap::raw::Encoder::new();
            let mut out = Vec::with_capacity(total_len / 2 + 64);
            for block in joined.chunks(HADOOP_BLOCK) {
                let compressed = enc
                    .compress_vec(block)
                    .map_err(|e| io(std::io::Error::other(e)))?;
                out.extend_from_slice(&(block.len() as u32).to_be_bytes());
                out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
                out.extend_from_slice(&compressed);
            }
            Ok(out.into())
        }
        CompressionFormat::Zip => {
            let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::with_capacity(
                total_len / 4 + 256,
            )));
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .large_file(total_len as u64 >= u64::from(u32::MAX));
            zw.start_file(entry_name, options)?;
            for p in parts {
                zw.write_all(p).map_err(io)?;
            }
            Ok(zw.finish()?.into_inner().into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Read;

    fn decompress(format: CompressionFormat, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match format {
            CompressionFormat::Uncompressed => out.extend_from_slice(data),
            CompressionFormat::Gzip => {
                flate2::read::GzDecoder::new(data)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            CompressionFormat::Snappy => {
                snap::read::FrameDecoder::new(data)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            CompressionFormat::HadoopSnappy => {
                let mut rest = data;
                while !rest.is_empty() {
                    let raw = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                    let clen = u32::from_be_bytes(rest[4..8].try_into().unwrap()) as usize;
                    let block = snap::raw::Decoder::new()
                        .decompress_vec(&rest[8..8 + clen])
                        .unwrap();
                    assert_eq!(block.len(), raw);
                    out.extend_from_slice(&block);
                    rest = &rest[8 + clen..];
                }
            }
            CompressionFormat::Zip => {
                let mut archive = zip::ZipArchive::new(std::io::Cursor::new(data)).unwrap();
                assert_eq!(archive.len(), 1);
                archive.by_index(0).unwrap().read_to_end(&mut out).unwrap();
            }
        }
        out
    }

    const ALL: [CompressionFormat; 5] = [
        CompressionFormat::Uncompressed,
        CompressionFormat::Gzip,
        CompressionFormat::Zip,
        CompressionFormat::Snappy,
        CompressionFormat::HadoopSnappy,
    ];

    #[test]
    fn api_names_round_trip() {
        for f in ALL {
            assert_eq!(CompressionFormat::from_api(f.as_api()), Some(f));
        }
        assert_eq!(CompressionFormat::from_api("gzip"), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn every_format_round_trips(parts in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..2000), 0..20), big in 0usize..2) {
            let mut parts = parts;
            if big == 1 {
                // Cross Hadoop's block boundary.
                parts.push(vec![b'x'; HADOOP_BLOCK + 17]);
            }
            let expected: Vec<u8> = parts.concat();
            for f in ALL {
                let out = compress(f, parts.iter().map(|p| p.as_slice()), expected.len(), "obj").unwrap();
                prop_assert_eq!(decompress(f, &out), expected.clone(), "{:?}", f);
            }
        }
    }
}
