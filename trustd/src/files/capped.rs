//! Reading a file whose size the reader does not control, up to a cap.
//!
//! `std::fs::read` sizes its buffer from the file and reads to the end: `/dev/zero`, a fifo
//! or a 3 GiB sparse file handed to trustctl as a "bundle" would take all memory before any
//! size check runs. Every input from outside goes through [`read_capped`] instead, so that
//! the cap holds before the bytes are in memory.

use std::io::Read;
use std::path::Path;

/// Read `path` whole if it holds at most `cap` bytes. At most `cap + 1` bytes are ever
/// read, whatever the file is (regular, device, fifo).
///
/// Errors: the open or read error; a file larger than `cap` gives an error of kind
/// [`std::io::ErrorKind::FileTooLarge`] whose message names the cap.
pub fn read_capped(path: &Path, cap: usize) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    let hint = f
        .metadata()
        .ok()
        .filter(|m| m.is_file())
        .map_or(0, |m| m.len().min(cap as u64) as usize);
    let mut out = Vec::with_capacity(hint);
    f.take(cap as u64 + 1).read_to_end(&mut out)?;
    if out.len() > cap {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("larger than {cap} bytes, the most accepted here"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_file_is_refused_at_the_cap_not_read_to_the_end() {
        let e = read_capped(Path::new("/dev/zero"), 4096).expect_err("refused");
        assert_eq!(e.kind(), std::io::ErrorKind::FileTooLarge);
        assert!(e.to_string().contains("4096"), "{e}");
    }

    #[test]
    fn a_file_up_to_the_cap_is_read_whole() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("f");
        std::fs::write(&p, [7u8; 100]).expect("write");
        assert_eq!(read_capped(&p, 100).expect("read").len(), 100);
        assert!(read_capped(&p, 99).is_err());
    }
}
