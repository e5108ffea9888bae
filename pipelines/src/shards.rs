//! Shard paths: which files are shards, and directories expanded into them.

use std::path::PathBuf;

use flyt::{Error, Result};

/// Whether a file name looks like a WebDataset shard (`.tar`, `.tar.gz`, `.tgz`).
pub fn is_shard_name(name: &str) -> bool {
    name.ends_with(".tar") || name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

/// Expands arguments into shard paths: files as given, directories into their shard files sorted by name. A
/// path that does not exist is an error naming it.
pub fn expand_shards(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for a in args {
        let meta = std::fs::metadata(a).map_err(|e| Error::io(a, e))?;
        if meta.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(a)
                .map_err(|e| Error::io(a, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.file_name().is_some_and(|n| {
                            is_shard_name(&n.to_string_lossy()) && !n.to_string_lossy().starts_with('.')
                        })
                })
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(a.clone());
        }
    }
    Ok(out)
}

/// A progress bar over `n` items; drawn only when stderr is a terminal.
pub fn progress(n: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(n);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}
