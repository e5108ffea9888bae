//! WebDataset shards: the streaming reader, the writer, and resharding.

mod reader;
mod reshard;
pub(crate) mod tar;
mod writer;

use std::path::Path;

pub use reader::{ReaderConfig, Record, ShardReader, shard_name, split_member_name};
pub use reshard::{ReshardReport, StampReport, StampedShard, reshard, stamp_uids, stamped_json, uid_text};
pub use writer::{SampleBuilder, ShardWriter, WriterSummary, WrittenShard, temp_path, write_atomic};

/// Whether a directory listing (names, and whether each is a directory) shows img2dataset's layout: its `_tmp/`
/// folder (made before the first shard is opened, removed at the end) or a `<stem>_stats.json` completion
/// marker beside a `<stem>.tar` (or `.parquet`) of the same listing (another tool's `summary_stats.json` does
/// not count). Because `_tmp/` exists before any tar, a listing that shows a tar of a running img2dataset also
/// shows `_tmp/` or the markers.
pub fn shows_marker_layout(entries: &[(String, bool)]) -> bool {
    let stems: std::collections::HashSet<&str> = entries
        .iter()
        .filter_map(|(n, _)| [".tar.gz", ".tgz", ".tar", ".parquet"].iter().find_map(|x| n.strip_suffix(x)))
        .collect();
    entries.iter().any(|(n, is_dir)| {
        (n == "_tmp" && *is_dir) || n.strip_suffix("_stats.json").is_some_and(|stem| stems.contains(stem))
    })
}

/// Whether the directory `dir` shows img2dataset's layout now ([`shows_marker_layout`]).
pub fn dir_shows_marker_layout(dir: &Path) -> bool {
    let entries: Vec<(String, bool)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.file_type().is_ok_and(|t| t.is_dir())))
                .collect()
        })
        .unwrap_or_default();
    shows_marker_layout(&entries)
}
