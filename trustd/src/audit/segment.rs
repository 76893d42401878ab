//! Segment files, the head file, and the chain fields of a line.

use std::path::{Path, PathBuf};

use crate::digest::hex;

/// The head file: the last acknowledged record's seq and hash, rewritten in place after each
/// group commit. It lets `verify` detect a log cut short after records were acknowledged.
pub const HEAD_FILE: &str = "head";

const HEAD_MAGIC: &str = "trustd-audit-head/1";
/// The head is one fixed-size block, overwritten in place (never grows or moves).
pub(crate) const HEAD_LEN: usize = 128;

/// `segment-00000007.jsonl`.
pub fn segment_name(index: u32) -> String {
    format!("segment-{index:08}.jsonl")
}

fn parse_segment_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("segment-")?.strip_suffix(".jsonl")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments in `dir`, sorted by index.
pub(crate) fn list_segments(dir: &Path) -> std::io::Result<Vec<(u32, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if let Some(i) = e.file_name().to_str().and_then(parse_segment_name) {
            out.push((i, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Where the written part of a segment ends: segments are preallocated with zero bytes
/// (so that an fdatasync flushes data, not the file's size), and records never contain a
/// NUL byte. Everything from the returned offset on is zero.
pub(crate) fn written_len(data: &[u8]) -> usize {
    data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

/// Create segment `path` filled with `len` zero bytes, durably.
pub(crate) fn create_preallocated(path: &Path, len: u64) -> std::io::Result<std::fs::File> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .mode(0o640)
        .open(path)?;
    let chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    if let Some(dir) = path.parent() {
        crate::files::atomic::fsync_dir(dir)?;
    }
    Ok(f)
}

/// The head block for (seq, hash).
pub(crate) fn encode_head(seq: u64, hash: &[u8; 32]) -> [u8; HEAD_LEN] {
    let body = format!("{HEAD_MAGIC} {seq:020} {}", hex(hash));
    let check = &crate::digest::sha256_hex(body.as_bytes())[..16];
    let text = format!("{body} {check}");
    let mut out = [b' '; HEAD_LEN];
    out[..text.len()].copy_from_slice(text.as_bytes());
    out[HEAD_LEN - 1] = b'\n';
    out
}

/// Decode a head block: `Ok(None)` if empty, `Err` if torn or not a head.
pub(crate) fn decode_head(bytes: &[u8]) -> Result<Option<(u64, String)>, String> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "head file is not text".to_owned())?;
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [magic, seq, hash, check] = parts[..] else {
        return Err("head file is malformed".into());
    };
    let body = format!("{magic} {seq} {hash}");
    if magic != HEAD_MAGIC || crate::digest::sha256_hex(body.as_bytes())[..16] != *check {
        return Err("head file is malformed or torn".into());
    }
    let seq = seq
        .parse()
        .map_err(|_| "head file seq is not a number".to_owned())?;
    Ok(Some((seq, hash.to_owned())))
}

/// `seq` and `prev` of a line written by this log, read without a full JSON parse.
/// Any line that is not exactly in that shape returns `None` (and fails verification).
pub(crate) fn chain_fields(line: &[u8]) -> Option<(u64, &[u8])> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    let seq: u64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(b",\"prev\":\"")?;
    let prev = rest.get(..64)?;
    if !prev.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) || rest.get(64) != Some(&b'"') {
        return None;
    }
    if line.last() != Some(&b'}') {
        return None;
    }
    Some((seq, prev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_round_trips_and_detects_a_torn_block() {
        let h = [7u8; 32];
        let block = encode_head(42, &h);
        assert_eq!(decode_head(&block), Ok(Some((42, hex(&h)))));
        let mut torn = block;
        torn[30] = b'9';
        assert!(decode_head(&torn).is_err());
        assert_eq!(decode_head(b""), Ok(None));
    }

    #[test]
    fn segment_names_sort_and_parse() {
        assert_eq!(segment_name(3), "segment-00000003.jsonl");
        assert_eq!(parse_segment_name("segment-00000003.jsonl"), Some(3));
        assert_eq!(parse_segment_name("segment-3.jsonl"), None);
        assert_eq!(parse_segment_name("head"), None);
    }

    #[test]
    fn chain_fields_reads_only_the_exact_shape() {
        let p = "a".repeat(64);
        let line = format!("{{\"seq\":12,\"prev\":\"{p}\",\"kind\":\"x\"}}");
        assert_eq!(chain_fields(line.as_bytes()), Some((12, p.as_bytes())));
        let line = format!("{{\"seq\":012,\"prev\":\"{p}\"}}");
        assert_eq!(chain_fields(line.as_bytes()), None);
        let line = format!("{{\"seq\":1,\"prev\":\"{}\"}}", "A".repeat(64));
        assert_eq!(chain_fields(line.as_bytes()), None);
    }
}
