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

/// Below this many bytes an object is compressed on one core.
const PARALLEL_MIN: usize = 2 << 20;
/// A piece compressed on its own is at least this large, so the ratio barely suffers.
const PIECE_MIN: usize = 1 << 20;

/// How many pieces an object of `total_len` bytes is compressed in: one per core, each of at
/// least [`PIECE_MIN`].
fn pieces(total_len: usize) -> usize {
    if total_len < PARALLEL_MIN {
        return 1;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.min(total_len / PIECE_MIN).max(1)
}

/// Cuts `parts` (at part boundaries) into `n` groups of about equal bytes.
fn split<'p, 'a>(parts: &'p [&'a [u8]], total_len: usize, n: usize) -> Vec<&'p [&'a [u8]]> {
    let target = total_len.div_ceil(n);
    let mut groups = Vec::with_capacity(n);
    let (mut start, mut bytes) = (0, 0);
    for (i, p) in parts.iter().enumerate() {
        bytes += p.len();
        if bytes >= target && groups.len() + 1 < n {
            groups.push(&parts[start..=i]);
            (start, bytes) = (i + 1, 0);
        }
    }
    groups.push(&parts[start..]);
    groups
}

/// Compresses the concatenation of `parts` (Firehose concatenates records with no delimiter).
/// `entry_name` names the single file inside a ZIP archive.
///
/// A large object is compressed in pieces, one per core, and the pieces are joined where the
/// format allows it while staying one standard file: GZIP as concatenated members (RFC 1952
/// §2.2; `gzip -d`, `zcat` and Python's `gzip` read them as one stream), Snappy framing as
/// concatenated streams (the stream identifier may repeat), HADOOP_SNAPPY as more blocks. ZIP
/// and UNCOMPRESSED are written whole.
pub fn compress<'a, I>(
    format: CompressionFormat,
    parts: I,
    total_len: usize,
    entry_name: &str,
) -> Result<Bytes, CompressError>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let splittable = matches!(
        format,
        CompressionFormat::Gzip | CompressionFormat::Snappy | CompressionFormat::HadoopSnappy
    );
    let n = pieces(total_len);
    if !splittable || n == 1 {
        return compress_whole(format, parts, total_len, entry_name).map(Bytes::from);
    }
    let parts: Vec<&[u8]> = parts.into_iter().collect();
    let groups = split(&parts, total_len, n);
    let outs: Vec<Result<Vec<u8>, CompressError>> = std::thread::scope(|scope| {
        let piece = |g: &[&[u8]]| {
            let len = g.iter().map(|p| p.len()).sum();
            compress_whole(format, g.iter().copied(), len, entry_name)
        };
        let others: Vec<_> = groups[1..]
            .iter()
            .map(|g| scope.spawn(move || piece(g)))
            .collect();
        let first = piece(groups[0]);
        std::iter::once(first)
            .chain(
                others
                    .into_iter()
                    .map(|h| h.join().expect("compression thread panicked")),
            )
            .collect()
    });
    let mut out = Vec::with_capacity(outs.iter().map(|o| o.as_ref().map_or(0, Vec::len)).sum());
    for o in outs {
        out.extend_from_slice(&o?);
    }
    Ok(out.into())
}

/// One gzip member of `data` at [`GZIP_LEVEL`], by libdeflate (the compressor's state is kept
/// per thread). The pipeline's GZIP objects and the benchmarks' baseline both use it.
pub fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<libdeflater::Compressor> = std::cell::RefCell::new(
            libdeflater::Compressor::new(
                libdeflater::CompressionLvl::new(GZIP_LEVEL as i32).expect("level 6 is valid"),
            ),
        );
    }
    COMPRESSOR.with_borrow_mut(|c| {
        let mut out = vec![0; c.gzip_compress_bound(data.len())];
        let n = c
            .gzip_compress(data, &mut out)
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        out.truncate(n);
        out.shrink_to_fit();
        Ok(out)
    })
}

/// Compresses `parts` as one piece on this thread.
fn compress_whole<'a, I>(
    format: CompressionFormat,
    parts: I,
    total_len: usize,
    entry_name: &str,
) -> Result<Vec<u8>, CompressError>
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
            Ok(out)
        }
        CompressionFormat::Gzip => {
            let mut joined = Vec::with_capacity(total_len);
            for p in parts {
                joined.extend_from_slice(p);
            }
            gzip(&joined).map_err(io)
        }
        CompressionFormat::Snappy => {
            let mut enc = snap::write::FrameEncoder::new(Vec::with_capacity(total_len / 2 + 64));
            for p in parts {
                enc.write_all(p).map_err(io)?;
            }
            enc.into_inner()
                .map_err(|e| io(std::io::Error::other(e.to_string())))
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
            Ok(out)
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
            Ok(zw.finish()?.into_inner())
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
                flate2::read::MultiGzDecoder::new(data)
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

    /// JSON-like lines, compressible like real records.
    fn lines(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                format!(
                    "{{\"seq\":{i},\"page\":\"/p/{}\",\"pad\":\"{}\"}}\n",
                    i % 97,
                    "x".repeat(i % 300)
                )
                .into_bytes()
            })
            .collect()
    }

    #[test]
    fn a_large_object_is_compressed_in_pieces_that_read_back_as_one_file() {
        let parts = lines(40_000);
        let expected = parts.concat();
        assert!(expected.len() > PARALLEL_MIN);
        let n = pieces(expected.len());
        for f in ALL {
            let out =
                compress(f, parts.iter().map(|p| p.as_slice()), expected.len(), "obj").unwrap();
            assert_eq!(decompress(f, &out), expected, "{f:?}");
            if f == CompressionFormat::Gzip {
                // One gzip member per piece; gzip(1) reads them as one stream.
                let members = out.windows(3).filter(|w| w == &[0x1f, 0x8b, 8]).count();
                assert!(members >= n, "{members} members for {n} pieces");
                let mut child = std::process::Command::new("gzip")
                    .arg("-dc")
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .expect("gzip is installed");
                let mut stdin = child.stdin.take().unwrap();
                let body = out.clone();
                let feeder = std::thread::spawn(move || stdin.write_all(&body));
                let done = child.wait_with_output().unwrap();
                feeder.join().unwrap().unwrap();
                assert!(done.status.success());
                assert_eq!(done.stdout, expected, "gzip -d reads every member");
            }
        }
    }

    #[test]
    fn pieces_split_at_record_boundaries_in_about_equal_bytes() {
        let parts = lines(1000);
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        let total = refs.iter().map(|p| p.len()).sum();
        let groups = split(&refs, total, 3);
        assert_eq!(groups.len(), 3);
        assert_eq!(groups.iter().map(|g| g.len()).sum::<usize>(), 1000);
        for g in &groups {
            let bytes: usize = g.iter().map(|p| p.len()).sum();
            assert!(
                bytes * 3 > total / 2 && bytes * 3 < total * 2,
                "{bytes} of {total}"
            );
        }
        assert_eq!(split(&refs, total, 1).len(), 1);
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
