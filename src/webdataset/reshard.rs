//! DataComp-style resharding: write `count` copies of each selected sample.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{ReaderConfig, Record, ShardWriter};
use crate::ingest::Ingest;
use crate::sample::ShardStats;
use crate::{Error, Result, SubsetCounts, Uid};

/// What [`reshard`] did.
#[derive(Clone, Debug, Serialize)]
pub struct ReshardReport {
    /// Distinct uids in the subset.
    pub selected_uids: u64,
    /// Entries in the subset (copies included).
    pub selected_copies: u64,
    /// Selected uids found in the input shards.
    pub found_uids: u64,
    /// Samples written (copies included).
    pub written_samples: u64,
    /// Output shards.
    pub output_shards: u64,
    /// Selected uids that no input shard had, sorted.
    pub not_found: Vec<Uid>,
    /// Counts over the input shards.
    pub input: ShardStats,
}

/// Writes, for every accepted sample of `shards` whose uid is in `subset`, as many copies as the subset lists
/// it, keyed `<uid>-<j>` (j = 0..count), into `{:08d}.tar` shards of `shard_size` in `out`, plus `meta.json`. This
/// is DataComp's resharder semantics. Refuses an `out` that has files unless `overwrite`, in which case its
/// `*.tar` files and `meta.json` are removed first. `on_shard` is called after each input shard (progress).
pub fn reshard(
    subset: &SubsetCounts,
    shards: &[PathBuf],
    out: &Path,
    shard_size: u64,
    overwrite: bool,
    mut on_shard: impl FnMut(&Path, &ShardStats),
) -> Result<ReshardReport> {
    prepare_out_dir(out, overwrite)?;
    let mut writer = ShardWriter::new(out, shard_size)?;
    let mut found = vec![false; subset.len()];
    let mut written = 0u64;
    let mut input = ShardStats::default();
    let mut ingest = Ingest::new(ReaderConfig::default());
    for shard in shards {
        let mut failure = None;
        let stats = ingest.read_shard(shard, |record| {
            if failure.is_some() {
                return;
            }
            if let Record::Sample(s) = record
                && let Some(idx) = subset.index_of(s.uid)
            {
                found[idx] = true;
                for j in 0..subset.count_at(idx) {
                    if let Err(e) = writer.write_members(&format!("{}-{j}", s.uid), &s.members) {
                        failure = Some(e);
                        return;
                    }
                    written += 1;
                }
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        on_shard(shard, &stats);
        input.add(&stats);
    }
    let summary = writer.finish()?;
    let not_found: Vec<Uid> = (0..subset.len()).filter(|&i| !found[i]).map(|i| subset.uid_at(i)).collect();
    Ok(ReshardReport {
        selected_uids: subset.len() as u64,
        selected_copies: subset.total(),
        found_uids: subset.len() as u64 - not_found.len() as u64,
        written_samples: written,
        output_shards: summary.output_shard_count,
        not_found,
        input,
    })
}

fn prepare_out_dir(out: &Path, overwrite: bool) -> Result<()> {
    let entries: Vec<PathBuf> = match std::fs::read_dir(out) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(out, e)),
    };
    if entries.is_empty() {
        return Ok(());
    }
    if !overwrite {
        return Err(Error::Config(format!(
            "output directory {} is not empty ({} entries); pass --overwrite to replace its shards",
            out.display(),
            entries.len()
        )));
    }
    for p in entries {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.ends_with(".tar") || name == "meta.json" {
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}
