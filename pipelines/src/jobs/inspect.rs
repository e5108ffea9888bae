//! `flyt inspect`: per-shard ingest counts and rejects, read the way curation reads shards.

use std::path::PathBuf;

use flyt::{Ingest, ReaderConfig, Record, Rejected, ShardStats};

use crate::Result;
use crate::shards::{expand_shards, progress};

/// What to read.
#[derive(Clone, Debug)]
pub struct InspectConfig {
    /// Shard files (`.tar`, `.tar.gz`, `.tgz`) or directories of them.
    pub shards: Vec<PathBuf>,
    /// Accept samples without a caption (labelled sets such as downstream tasks).
    pub no_caption: bool,
    /// Largest member accepted, in bytes.
    pub max_member_bytes: u64,
}

/// What `inspect` found.
#[derive(Clone, Debug, Default)]
pub struct InspectReport {
    /// Per shard: its path, its counts (they reconcile) and its rejects.
    pub shards: Vec<(PathBuf, ShardStats, Vec<Rejected>)>,
    /// The counts over all shards.
    pub total: ShardStats,
}

/// Reads every shard. Damaged shards are data (rejects with reasons), not errors; a path that cannot be read
/// is an error naming it.
pub fn inspect(c: &InspectConfig) -> Result<InspectReport> {
    let shards = expand_shards(&c.shards)?;
    let config = ReaderConfig::default().require_caption(!c.no_caption).with_max_member_bytes(c.max_member_bytes);
    let mut ingest = Ingest::new(config);
    let pb = progress(shards.len() as u64, "inspect");
    let mut report = InspectReport::default();
    for path in &shards {
        pb.set_message(path.display().to_string());
        let mut rejects: Vec<Rejected> = Vec::new();
        let stats = ingest.read_shard(path, |r| {
            if let Record::Rejected(r) = r {
                rejects.push(r);
            }
        })?;
        debug_assert!(stats.reconciles());
        report.total.add(&stats);
        report.shards.push((path.clone(), stats, rejects));
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(report)
}
