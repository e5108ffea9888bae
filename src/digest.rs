//! Content digests: how flyt recognises a file it has seen (an input shard, a model, a published subset).

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The SHA-256 (hex) of a file's bytes, read in 1 MiB blocks.
pub fn file_sha256(path: &Path) -> Result<String> {
    sha256_of(path, false)
}

/// Like [`file_sha256`], but ends with [`crate::interrupted`] at the next block once a stop is requested (for
/// digests of input files, which may be large; an output's digest is always finished).
pub fn file_sha256_interruptible(path: &Path) -> Result<String> {
    sha256_of(path, true)
}

fn sha256_of(path: &Path, interruptible: bool) -> Result<String> {
    use std::io::Read;
    let mut f = crate::open_regular(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if interruptible && crate::stop_requested() {
            return Err(crate::interrupted(path));
        }
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}
