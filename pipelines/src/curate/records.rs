//! What the curation run keeps on disk per shard: the commit record (`OUT/shards/<name>.json`, written last and
//! atomically: a shard is committed exactly when its record exists), its score table and rejects, and
//! optionally its embeddings. Also the sidecar reader (DataComp `.parquet` + `.npz`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use flyt::clip::Embeddings;
use flyt::{NpyArray, NpyData, RejectReason, Rejected, ShardStats, Uid};
use serde::{Deserialize, Serialize};

/// Identity of an input file: size and modification time (the quick check) and the SHA-256 of its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    /// The path as given.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: u128,
    /// SHA-256 of the bytes (empty until computed).
    pub sha256: String,
}

impl FileId {
    /// Size and mtime of a file (no digest).
    pub fn stat(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        let mtime_ns = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ok(FileId { path: path.to_path_buf(), size: m.len(), mtime_ns, sha256: String::new() })
    }

    /// Size, mtime and digest.
    pub fn digest(path: &Path) -> anyhow::Result<Self> {
        let mut id = Self::stat(path).with_context(|| format!("{}", path.display()))?;
        id.sha256 = flyt::train::file_sha256(path)?;
        Ok(id)
    }

    /// Whether size and mtime still match the file on disk.
    pub fn unchanged(&self) -> bool {
        Self::stat(&self.path).is_ok_and(|now| now.size == self.size && now.mtime_ns == self.mtime_ns)
    }
}

/// A shard's commit record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardRecord {
    /// The shard's name (file name without `.tar`/`.tar.gz`/`.tgz`/`.parquet`).
    pub name: String,
    /// Its input files (the tar, or the sidecar parquet + npz) with digests.
    pub inputs: Vec<FileId>,
    /// How it was embedded: `model` (the CLIP model over the tar), `sidecar` (the shard's `.npz`), `stored`
    /// (embeddings this pipeline stored earlier).
    pub via: String,
    /// The models its columns depend on: `clip` (model digest, or `sidecar:<prefix>`) and `flyt`.
    pub models: BTreeMap<String, String>,
    /// The score columns in its score table.
    pub columns: Vec<String>,
    /// Rows in the score table.
    pub rows: u64,
    /// Ingest counts (reconciled: every sample accepted or rejected with a reason).
    pub stats: ShardStats,
    /// Stored embeddings (`OUT/embeddings/<name>.npz` / `.parquet`), when kept.
    pub embeddings: Option<(PathBuf, PathBuf)>,
    /// The npz prefix of the embeddings used.
    pub prefix: String,
    /// The embedding dimension (0 when unknown).
    #[serde(default)]
    pub dim: usize,
    /// The flyt version that wrote it.
    pub flyt_version: String,
}

/// The output layout.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The output directory.
    pub out: PathBuf,
}

impl Layout {
    /// `OUT/shards`.
    pub fn shards(&self) -> PathBuf {
        self.out.join("shards")
    }
    /// `OUT/shards/<name>.json`.
    pub fn record(&self, name: &str) -> PathBuf {
        self.shards().join(format!("{name}.json"))
    }
    /// `OUT/shards/<name>.scores.parquet`.
    pub fn scores(&self, name: &str) -> PathBuf {
        self.shards().join(format!("{name}.scores.parquet"))
    }
    /// `OUT/shards/<name>.rejects.jsonl`.
    pub fn rejects(&self, name: &str) -> PathBuf {
        self.shards().join(format!("{name}.rejects.jsonl"))
    }
    /// `OUT/embeddings/<name>.parquet` and `.npz`.
    pub fn embeddings(&self, name: &str) -> (PathBuf, PathBuf) {
        let d = self.out.join("embeddings");
        (d.join(format!("{name}.parquet")), d.join(format!("{name}.npz")))
    }
    /// Creates the directories.
    pub fn create(&self) -> anyhow::Result<()> {
        for d in [self.shards(), self.out.join("embeddings")] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(())
    }

    /// Every readable commit record, by name. An unreadable record is logged and left out (its shard is then
    /// processed again).
    pub fn records(&self) -> BTreeMap<String, ShardRecord> {
        let mut out = BTreeMap::new();
        let Ok(dir) = std::fs::read_dir(self.shards()) else { return out };
        for e in dir.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json")
                || p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            match std::fs::read(&p)
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(serde_json::from_slice::<ShardRecord>(&b)?))
            {
                Ok(r) => {
                    out.insert(r.name.clone(), r);
                }
                Err(e) => {
                    tracing::warn!(record = %p.display(), error = %e, "unreadable commit record; the shard will be processed again")
                }
            }
        }
        out
    }
}

/// A shard's rows and score columns.
#[derive(Clone, Debug, Default)]
pub struct ShardScores {
    /// The shard's name.
    pub name: String,
    /// (uid, key) per row.
    pub ids: Vec<(Uid, String)>,
    /// Values per column (the pipeline's internal column order), aligned with `ids`.
    pub columns: Vec<Vec<f32>>,
}

/// Reads a committed shard's rows back from its score table.
pub fn replay(layout: &Layout, record: &ShardRecord, columns: &[String]) -> anyhow::Result<ShardScores> {
    let names: Vec<&str> = columns.iter().map(|s| s.as_str()).collect();
    let t = flyt::read_score_table(layout.scores(&record.name), &names)?;
    Ok(ShardScores { name: record.name.clone(), ids: t.ids, columns: t.columns })
}

/// Rounds embeddings to f16 precision, the precision they are stored at (DataComp's), so that scores computed
/// now equal scores computed later from the stored copy.
pub fn round_to_f16(e: &mut Embeddings) {
    for v in e.image.iter_mut().chain(e.text.iter_mut()) {
        *v = half::f16::from_f32(*v).to_f32();
    }
}

/// Writes embeddings as a DataComp-style pair: `.parquet` (uid, key) and `.npz` (`<prefix>_img`,
/// `<prefix>_txt`, f16).
pub fn store_embeddings(parquet: &Path, npz: &Path, prefix: &str, e: &Embeddings) -> anyhow::Result<()> {
    let rows = e.ids.len();
    let shape = vec![rows, e.dim];
    let f16 = |v: &[f32]| NpyData::F16(v.iter().map(|x| half::f16::from_f32(*x)).collect());
    let mut arrays = BTreeMap::new();
    arrays.insert(format!("{prefix}_img"), NpyArray { shape: shape.clone(), data: f16(&e.image) });
    arrays.insert(format!("{prefix}_txt"), NpyArray { shape, data: f16(&e.text) });
    flyt::write_npz(npz, &arrays, false)?;
    flyt::write_score_table(parquet, &e.ids, &[], &[])?;
    Ok(())
}

/// Reads a sidecar pair into embeddings (rows in file order, uids deduplicated within the file) plus the rows
/// it rejected, as ingest stats. Returns the prefix used.
pub fn read_sidecar(
    name: &str,
    parquet: &Path,
    npz: &Path,
    prefix: Option<&str>,
) -> anyhow::Result<(Embeddings, ShardStats, Vec<Rejected>, String)> {
    let table = flyt::read_metadata(parquet)?;
    let arrays = flyt::read_npz(npz)?;
    let keys: Vec<String> = arrays.keys().cloned().collect();
    let prefix = match prefix {
        Some(p) => p.to_string(),
        None => flyt::pick_prefix(&keys).ok_or_else(|| {
            anyhow::anyhow!("{}: no single <prefix>_img/<prefix>_txt pair; arrays: {}", npz.display(), keys.join(", "))
        })?,
    };
    let get = |key: String| -> anyhow::Result<(Vec<f32>, usize, usize)> {
        let a = arrays.get(&key).ok_or_else(|| {
            anyhow::anyhow!("{}: key {key}: no such array; the file has {}", npz.display(), keys.join(", "))
        })?;
        let [rows, cols] = a.shape[..] else {
            anyhow::bail!("{}: key {key}: expected a 2-D array, shape is {:?}", npz.display(), a.shape)
        };
        let data = a.to_f32().ok_or_else(|| anyhow::anyhow!("{}: key {key}: not a float array", npz.display()))?;
        Ok((data, rows, cols))
    };
    let (img, ri, di) = get(format!("{prefix}_img"))?;
    let (txt, rt, dt) = get(format!("{prefix}_txt"))?;
    if ri != rt || di != dt {
        anyhow::bail!("{}: key {prefix}: image {ri}×{di} but text {rt}×{dt}", npz.display());
    }
    let shard: std::sync::Arc<str> = name.into();
    let mut stats = ShardStats::default();
    let mut rejects = Vec::new();
    let mut reject = |stats: &mut ShardStats, key: String, reason: RejectReason, detail: String| {
        let r = Rejected { shard: shard.clone(), key, reason, detail, members: 0 };
        stats.count_rejected(&r);
        rejects.push(r);
    };
    for (row, why) in &table.rejected {
        reject(&mut stats, format!("row {row}"), RejectReason::BadUid, why.clone());
    }
    let mut e = Embeddings { dim: di, ..Default::default() };
    let mut seen = HashSet::new();
    for r in &table.rows {
        if r.row >= ri {
            reject(
                &mut stats,
                format!("row {}", r.row),
                RejectReason::MissingImage,
                format!("no embedding row ({} rows in {})", ri, npz.display()),
            );
            continue;
        }
        if !seen.insert(r.uid) {
            reject(
                &mut stats,
                format!("row {}", r.row),
                RejectReason::DuplicateUid,
                format!("uid {} already in this file", r.uid),
            );
            continue;
        }
        stats.samples += 1;
        stats.accepted += 1;
        e.ids.push((r.uid, format!("{:09}", r.row)));
        e.image.extend_from_slice(&img[r.row * di..(r.row + 1) * di]);
        e.text.extend_from_slice(&txt[r.row * di..(r.row + 1) * di]);
    }
    Ok((e, stats, rejects, prefix))
}
