//! DataComp-style resharding: write `count` copies of each selected sample.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{ReaderConfig, Record, ShardWriter};
use crate::ingest::Ingest;
use crate::sample::{Sample, ShardStats, UidSource};
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
/// it, keyed `<uid>-<j>` (j = 0..count, the uid as its `.json` spells it) with the uid in each copy's `.json`
/// ([`stamped_json`]), into `{:08d}.tar` shards of `shard_size` in `out`, each followed by its
/// `{:08d}_stats.json` (`{"successes": N}`), plus `meta.json`. This is DataComp's resharder semantics and
/// layout, with the subset's uids in `out/sample_ids.npy` (DataComp's dtype, sorted) as DataComp's copies them. Refuses an `out` that
/// has files unless `overwrite`, in which case its shards, stats files, `meta.json` and `sample_ids.npy` are
/// removed first. `on_shard` is called after each input shard (progress).
pub fn reshard(
    subset: &SubsetCounts,
    shards: &[PathBuf],
    out: &Path,
    shard_size: u64,
    overwrite: bool,
    mut on_shard: impl FnMut(&Path, &ShardStats),
) -> Result<ReshardReport> {
    prepare_out_dir(out, overwrite)?;
    let mut writer = ShardWriter::new(out, shard_size)?.with_stats_files();
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
                let uid = uid_text(&s);
                let json = stamped_json(&s, &uid);
                for j in 0..subset.count_at(idx) {
                    if let Err(e) = writer.write_parts(&format!("{uid}-{j}"), stamped_parts(&s, &json)) {
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
    crate::write_subset(out.join("sample_ids.npy"), &subset.to_uids())?;
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

/// How a sample's uid is spelled in output keys and `.json`: the `.json` string as written (DataComp's
/// resharder keys `<uid>-<j>` from it, case kept), else the derived uid in lower-case hex.
pub fn uid_text(s: &Sample) -> String {
    if s.uid_source == UidSource::Json
        && let Some(serde_json::Value::String(t)) = s.json.as_ref().and_then(|m| m.get("uid"))
    {
        return t.clone();
    }
    s.uid.to_string()
}

/// The `.json` member a written copy of `s` carries so that its uid survives: `None` when its `.json` already
/// has it (the bytes are kept); else the member's bytes with `"uid": "<uid>", ` inserted after the object's
/// opening brace (every other byte kept), or `{"uid": "<uid>"}` when the sample has no `.json`. A `.json`
/// whose `"uid"` is `null` is written again with the uid in place of the null.
pub fn stamped_json(s: &Sample, uid: &str) -> Option<Vec<u8>> {
    if s.uid_source == UidSource::Json {
        return None;
    }
    let field = format!("\"uid\": {}", serde_json::Value::String(uid.to_string()));
    let Some(m) = s.members.iter().find(|m| m.ext == "json") else {
        return Some(format!("{{{field}}}").into_bytes());
    };
    if let Some(map) = s.json.as_ref().filter(|m| m.contains_key("uid")) {
        let mut map = map.clone();
        map.insert("uid".into(), serde_json::Value::String(uid.to_string()));
        return Some(serde_json::to_vec(&serde_json::Value::Object(map)).unwrap_or_default());
    }
    // An accepted sample's `.json` parsed as an object, so its first non-blank byte is the opening brace.
    let open = m.data.iter().position(|&b| b == b'{')?;
    let rest = &m.data[open + 1..];
    let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
    let mut out = Vec::with_capacity(m.data.len() + field.len() + 2);
    out.extend_from_slice(&m.data[..=open]);
    out.extend_from_slice(field.as_bytes());
    if !empty {
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// The members of `s` as written, with `json` (from [`stamped_json`]) in place of its `.json` member (or added
/// after the others when it had none).
pub fn stamped_parts<'a>(s: &'a Sample, json: &'a Option<Vec<u8>>) -> Vec<(&'a str, &'a [u8])> {
    let mut replaced = false;
    let mut parts: Vec<(&str, &[u8])> = s
        .members
        .iter()
        .map(|m| match json {
            Some(j) if m.ext == "json" && !replaced => {
                replaced = true;
                ("json", j.as_slice())
            }
            _ => (m.ext.as_str(), m.data.as_slice()),
        })
        .collect();
    if let Some(j) = json
        && !replaced
    {
        parts.push(("json", j.as_slice()));
    }
    parts
}

/// One input shard [`stamp_uids`] wrote again.
#[derive(Clone, Debug, Serialize)]
pub struct StampedShard {
    /// The input.
    pub input: PathBuf,
    /// The output (`<name>.tar`).
    pub output: PathBuf,
    /// Samples written (every accepted sample of the input, under its own key).
    pub samples: u64,
    /// Of those, samples whose `.json` got the uid (derived uids).
    pub stamped: u64,
    /// The input's counts: its rejected samples are not written (`rejected_by_reason` says why).
    pub input_stats: ShardStats,
}

/// What [`stamp_uids`] did.
#[derive(Clone, Debug, Serialize)]
pub struct StampReport {
    /// Per input shard.
    pub shards: Vec<StampedShard>,
    /// Samples written.
    pub samples: u64,
    /// Samples whose uid was stamped.
    pub stamped: u64,
    /// Input samples not written because the reader rejected them.
    pub rejected: u64,
}

/// Writes each input shard again as `out/<name>.tar` (its shard name, so a derived uid stays the same), every
/// accepted sample under its own key with its uid written into `.json` ([`stamped_json`]), so that tools that
/// read the uid from `.json` (DataComp's) see the uids flyt gives. Each output is written to a temporary file
/// and renamed into place, so `out` may be the input directory (the shards are replaced in place), but not for
/// a shard with rejected samples (they would be lost), a compressed shard, a shard of a directory img2dataset
/// is still writing (`_tmp/`), or one whose `<name>_stats.json` is not there yet. Member extensions are
/// written lower-cased, as the reader names them. An output that exists and is not the input it comes from is
/// refused unless `overwrite`.
pub fn stamp_uids(
    shards: &[PathBuf],
    out: &Path,
    overwrite: bool,
    mut on_shard: impl FnMut(&StampedShard),
) -> Result<StampReport> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut report = StampReport { shards: Vec::new(), samples: 0, stamped: 0, rejected: 0 };
    let mut names = std::collections::HashSet::new();
    for shard in shards {
        let name = super::shard_name(shard);
        if !names.insert(name.clone()) {
            return Err(Error::Config(format!(
                "{}: two input shards are named {name:?}; their outputs would be the same file",
                shard.display()
            )));
        }
        let dest = out.join(format!("{name}.tar"));
        let canon = |p: &Path| std::fs::canonicalize(p).ok();
        let in_place = dest.exists() && canon(&dest) == canon(shard);
        if dest.exists() && !overwrite && !in_place {
            return Err(Error::Config(format!(
                "{} exists and is not the input {}; pass --overwrite to replace it",
                dest.display(),
                shard.display()
            )));
        }
        let parent = shard.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if canon(parent) == canon(out) && !shard.to_string_lossy().ends_with(".tar") {
            return Err(Error::Config(format!(
                "{}: a compressed shard stamped into its own directory would leave {name}.tar beside it (every \
                 sample twice); write to another --out",
                shard.display()
            )));
        }
        if parent.join("_tmp").is_dir() {
            return Err(Error::Config(format!(
                "{}: img2dataset is still writing into {} (its _tmp/ exists); stamp once it has finished",
                shard.display(),
                parent.display()
            )));
        }
        if super::dir_shows_marker_layout(parent) && !parent.join(format!("{name}_stats.json")).exists() {
            return Err(Error::Config(format!(
                "{}: its directory marks finished shards with <name>_stats.json and {name}_stats.json is not there \
                 yet; stamp once the shard is complete",
                shard.display()
            )));
        }
        let tmp = super::temp_path(&dest);
        let written = stamp_one(shard, &tmp);
        let (samples, stamped, stats) = match written {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if stats.rejected > 0 && canon(&dest) == canon(shard) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::Config(format!(
                "{}: {} sample(s) rejected ({:?}); stamping in place would drop them from the shard: write to \
                 another --out",
                shard.display(),
                stats.rejected,
                stats.rejected_by_reason
            )));
        }
        if let Err(e) = std::fs::rename(&tmp, &dest) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(&dest, e));
        }
        let done = StampedShard { input: shard.clone(), output: dest, samples, stamped, input_stats: stats };
        report.samples += samples;
        report.stamped += stamped;
        report.rejected += done.input_stats.rejected;
        on_shard(&done);
        report.shards.push(done);
    }
    Ok(report)
}

fn stamp_one(shard: &Path, tmp: &Path) -> Result<(u64, u64, ShardStats)> {
    use std::io::Write;
    let file = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
    let mut w = super::tar::TarWriter::new(std::io::BufWriter::with_capacity(1 << 20, file));
    let mut reader = super::ShardReader::open(shard, ReaderConfig::default())?;
    let (mut samples, mut stamped) = (0u64, 0u64);
    for record in reader.by_ref() {
        if let Record::Sample(s) = record? {
            let uid = uid_text(&s);
            let json = stamped_json(&s, &uid);
            stamped += json.is_some() as u64;
            for (ext, data) in stamped_parts(&s, &json) {
                w.append(&format!("{}.{ext}", s.key), data).map_err(|e| Error::io(tmp, e))?;
            }
            samples += 1;
        }
    }
    let stats = reader.stats().clone();
    let mut buf = w.finish().map_err(|e| Error::io(tmp, e))?;
    buf.flush().map_err(|e| Error::io(tmp, e))?;
    let file = buf.into_inner().map_err(|e| Error::io(tmp, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(tmp, e))?;
    Ok((samples, stamped, stats))
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
        if name.ends_with(".tar") || name.ends_with("_stats.json") || name == "meta.json" || name == "sample_ids.npy" {
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}
