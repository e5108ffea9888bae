//! Reading many shards as one pool: every sample accepted once by uid, with per-shard stats.

use std::collections::HashSet;
use std::path::Path;

use crate::sample::{RejectReason, Rejected, ShardStats};
use crate::webdataset::{ReaderConfig, Record, ShardReader};
use crate::{Result, Uid};

/// Reads shards one after another and accepts each uid once over all of them: a sample whose uid an earlier
/// shard (or the same shard) already gave is rejected as [`RejectReason::DuplicateUid`]. A shard delivered
/// twice therefore adds nothing the second time, and says so in its stats.
///
/// ```
/// # fn main() -> flyt::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let mut w = flyt::ShardWriter::new(dir.path(), 10)?;
/// w.write(&flyt::SampleBuilder::new("a").image("jpg", vec![1]).caption("x").build())?;
/// w.finish()?;
/// let shard = dir.path().join("00000000.tar");
/// let mut ingest = flyt::Ingest::new(flyt::ReaderConfig::default());
/// let first = ingest.read_shard(&shard, |_| {})?;
/// let again = ingest.read_shard(&shard, |_| {})?;
/// assert_eq!((first.accepted, again.accepted, again.rejected), (1, 0, 1));
/// # Ok(()) }
/// ```
pub struct Ingest {
    config: ReaderConfig,
    seen: HashSet<Uid>,
}

impl Ingest {
    /// A fresh pool.
    pub fn new(config: ReaderConfig) -> Self {
        Ingest { config, seen: HashSet::new() }
    }

    /// Uids accepted so far.
    pub fn accepted_uids(&self) -> usize {
        self.seen.len()
    }

    /// Reads one shard, handing every record to `on_record`, and returns its stats. Only an unreadable file
    /// is an error; damage inside it is in the records and stats.
    pub fn read_shard(&mut self, path: impl AsRef<Path>, mut on_record: impl FnMut(Record)) -> Result<ShardStats> {
        let mut reader = ShardReader::open(path, self.config.clone())?;
        // Only the member counts of re-rejected samples are kept: a re-delivered shard must not pile up in memory.
        let mut corrections: Vec<u64> = Vec::new();
        for record in reader.by_ref() {
            match record? {
                Record::Sample(s) if !self.seen.insert(s.uid) => {
                    let rejected = Rejected {
                        shard: s.shard.clone(),
                        key: s.key.clone(),
                        reason: RejectReason::DuplicateUid,
                        detail: format!("uid {} was accepted earlier in this pool", s.uid),
                        members: s.members.len() as u64,
                    };
                    on_record(Record::Rejected(rejected));
                    corrections.push(s.members.len() as u64);
                }
                r => on_record(r),
            }
        }
        let mut stats = reader.stats().clone();
        for &members in &corrections {
            stats.reclassify(members, RejectReason::DuplicateUid);
        }
        Ok(stats)
    }
}
