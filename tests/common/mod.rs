//! Helpers shared by the integration tests: a raw tar builder for hand-made (and deliberately broken) shards,
//! and the python interpreter of the project venv.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds tar bytes entry by entry, including entries a well-behaved writer never makes.
#[derive(Default)]
pub struct RawTar {
    pub bytes: Vec<u8>,
}

impl RawTar {
    pub fn entry(mut self, name: &str, typeflag: u8, data: &[u8]) -> Self {
        self.raw_entry(name.as_bytes(), typeflag, data);
        self
    }
    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, b'0', data)
    }
    pub fn raw_entry(&mut self, name: &[u8], typeflag: u8, data: &[u8]) {
        self.bytes.extend_from_slice(&Self::header(name, data.len() as u64, typeflag));
        self.bytes.extend_from_slice(data);
        self.bytes.resize(self.bytes.len().div_ceil(512) * 512, 0);
    }
    /// A ustar header (name cut at 100 bytes) with any type flag and size, its checksum filled in.
    pub fn header(name: &[u8], size: u64, typeflag: u8) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        Self::checksum(&mut h);
        h
    }
    /// Fills in a header's checksum (after a test changed its bytes).
    pub fn checksum(h: &mut [u8; 512]) {
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes.extend_from_slice(&[0u8; 1024]);
        self.bytes
    }
    pub fn write(self, path: &Path) -> PathBuf {
        std::fs::write(path, self.finish()).unwrap();
        path.to_path_buf()
    }
}

/// A valid `.json` member with a uid.
pub fn json_uid(uid: &str) -> Vec<u8> {
    format!("{{\"uid\": \"{uid}\", \"caption\": \"c\"}}").into_bytes()
}

/// A 32-hex uid from a number.
pub fn hex_uid(n: u128) -> String {
    format!("{n:032x}")
}

/// The project venv's python (set up by `./x test`); FLYT_PYTHON overrides.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("FLYT_PYTHON") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: run `./x test` (it installs numpy, webdataset and pyarrow)", p.display());
    p
}

/// Runs a python script with arguments; panics with its output when it fails. Returns stdout.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(python()).arg("-c").arg(script).args(args).output().expect("running python");
    assert!(
        out.status.success(),
        "python failed:\n{}\n--- stdout\n{}\n--- stderr\n{}",
        script,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
