//! The curation output directory (`flyt curate --out OUT`), the format the curation dataflow writes and the
//! Flight service reads:
//!
//! ```text
//! OUT/subset.npy                       the DataComp subset (published atomically, then the manifest)
//! OUT/manifest.json                    what that subset reflects: shards, models, counts
//! OUT/shards/<name>.json               a shard's commit record (written last: a shard is committed exactly
//!                                      when its record exists)
//! OUT/shards/<name>.scores.parquet     its score table (uid, key, sha256 and pixels_sha256 when known, one
//!                                      float column per scoring method)
//! OUT/shards/<name>.rejects.jsonl      its rejected samples, one JSON object per line
//! OUT/embeddings/<name>.{parquet,npz}  its embeddings when the CLIP model made them (a DataComp sidecar pair)
//! ```

mod sidecar;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use sidecar::{SidecarRead, read_metadata_only, read_sidecar, round_to_f16, store_embeddings};

use crate::{Error, Rejected, Result, ShardStats, Uid};

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
    pub fn digest(path: &Path) -> Result<Self> {
        let mut id = Self::stat(path).map_err(|e| Error::io(path, e))?;
        id.sha256 = crate::file_sha256(path)?;
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
    /// What its columns depend on: `clip` (the CLIP model's digest, or `sidecar:<prefix>`) and, per scoring
    /// method that has inputs, their identity (`flyt`: the head's digest; `neg_clip_loss`: B, K, τ and seed;
    /// `norm_sim`, `image_based`, `text_based`: digests of their files).
    pub models: BTreeMap<String, String>,
    /// The score columns in its score table.
    pub columns: Vec<String>,
    /// Rows in the score table.
    pub rows: u64,
    /// Ingest counts (reconciled: every sample accepted or rejected with a reason).
    pub stats: ShardStats,
    /// Stored embeddings (`OUT/embeddings/<name>.parquet` / `.npz`), when kept.
    pub embeddings: Option<(PathBuf, PathBuf)>,
    /// The npz prefix of the embeddings used.
    pub prefix: String,
    /// The embedding dimension (0 when unknown).
    #[serde(default)]
    pub dim: usize,
    /// The flyt version that wrote it.
    pub flyt_version: String,
    /// Its score table carries the content digests its input allows (`sha256`, `pixels_sha256`): records
    /// written before flyt kept them say false, and exact dedup reads such a shard again.
    #[serde(default)]
    pub content_digests: bool,
}

/// A shard's rows and score columns.
#[derive(Clone, Debug, Default)]
pub struct ShardScores {
    /// The shard's name.
    pub name: String,
    /// (uid, key) per row.
    pub ids: Vec<(Uid, String)>,
    /// Values per column (in the order the columns were asked for), aligned with `ids`.
    pub columns: Vec<Vec<f32>>,
    /// Each row's content digests (128-bit prefixes of the bytes' and the decoded pixels' SHA-256), aligned
    /// with `ids`; empty when unknown.
    pub content: Vec<(Option<u128>, Option<u128>)>,
}

/// The output directory's layout.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The output directory.
    pub out: PathBuf,
}

impl Layout {
    /// A layout over `out`.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Layout { out: out.into() }
    }
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
    /// `OUT/subset.npy`.
    pub fn subset(&self) -> PathBuf {
        self.out.join("subset.npy")
    }
    /// `OUT/manifest.json`.
    pub fn manifest(&self) -> PathBuf {
        self.out.join("manifest.json")
    }

    /// Creates the directories.
    pub fn create(&self) -> Result<()> {
        for d in [self.shards(), self.out.join("embeddings")] {
            std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
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
            match read_record(&p) {
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

    /// One commit record, if readable.
    pub fn record_of(&self, name: &str) -> Option<ShardRecord> {
        read_record(&self.record(name)).ok()
    }

    /// Writes a commit record (atomically: the shard is committed once this returns).
    pub fn write_record(&self, record: &ShardRecord) -> Result<()> {
        let path = self.record(&record.name);
        let json = serde_json::to_vec_pretty(record).map_err(|e| Error::format(&path, "record", e.to_string()))?;
        crate::write_atomic(&path, &json)
    }

    /// Reads a committed shard's rows back from its score table (the `columns` asked for, in that order).
    pub fn replay(&self, record: &ShardRecord, columns: &[String]) -> Result<ShardScores> {
        let names: Vec<&str> = columns.iter().map(|s| s.as_str()).collect();
        let t = crate::read_score_table(self.scores(&record.name), &names)?;
        Ok(ShardScores { name: record.name.clone(), ids: t.ids, columns: t.columns, content: t.content })
    }

    /// Writes a shard's rejects (`OUT/shards/<name>.rejects.jsonl`).
    pub fn write_rejects(&self, name: &str, rejects: &[Rejected]) -> Result<()> {
        write_rejects(&self.rejects(name), rejects)
    }

    /// The rejects a commit wrote; unreadable lines are logged and skipped.
    pub fn read_rejects(&self, name: &str) -> Vec<Rejected> {
        let path = self.rejects(name);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| match serde_json::from_str(l) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "an unreadable reject line");
                    None
                }
            })
            .collect()
    }
}

/// Writes rejects as JSON lines, atomically.
pub fn write_rejects(path: &Path, rejects: &[Rejected]) -> Result<()> {
    let mut lines = String::new();
    for r in rejects {
        let line = serde_json::to_string(r).map_err(|e| Error::format(path, &r.key, e.to_string()))?;
        lines.push_str(&line);
        lines.push('\n');
    }
    crate::write_atomic(path, lines.as_bytes())
}

fn read_record(path: &Path) -> Result<ShardRecord> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::format(path, "record", e.to_string()))
}
