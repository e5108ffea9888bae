//! Helpers shared by the CLI tests: run the `flyt` binary, run python from the project venv.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `flyt ARGS` in `cwd`.
pub fn flyt(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flyt")).args(args).current_dir(cwd).output().expect("running flyt")
}

/// Asserts success; returns stdout.
pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "flyt failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The project venv's python (or `FLYT_PYTHON`).
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("FLYT_PYTHON") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

/// Runs a python script with arguments in `cwd`; asserts success; returns stdout.
pub fn py(script: &str, args: &[&str], cwd: &Path) -> String {
    let o = Command::new(python()).arg("-c").arg(script).args(args).current_dir(cwd).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// The CLIP BPE vocabulary (`FLYT_CLIP_BPE`, or the one `./x` fetches).
pub fn bpe() -> PathBuf {
    std::env::var("FLYT_CLIP_BPE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/clip/bpe_simple_vocab_16e6.txt.gz"))
}
