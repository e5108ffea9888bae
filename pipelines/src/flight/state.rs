//! What the Flight service serves, read from a curation output directory (`flyt curate --out DIR`) and
//! refreshed when a new subset is published: the manifest, the subset with a version of the service's own,
//! the subset changes between versions, and the tables built from the per-shard files.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, FixedSizeListBuilder, Float32Builder, Float64Builder, Int64Builder, StringBuilder, UInt32Builder,
    UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use flyt::Uid;
use flyt::train::MixWeights;

use flyt::curation::{Layout, ShardRecord, read_sidecar};

use crate::CurateConfig;

/// Versions of the subset kept for `subset/<version>/<part>` tickets and change streams.
const KEEP_VERSIONS: usize = 8;
/// Changes kept for `since` requests (older requests get the whole subset as one change set).
const KEEP_CHANGES: usize = 1024;

/// The count changes from one version to the next: (version, (uid, delta) by uid).
pub type Change = (u64, Arc<Vec<(Uid, i64)>>);

/// External scores by column, then uid.
pub type External = Arc<HashMap<String, HashMap<Uid, f64>>>;

/// `since` is older than the changes kept.
#[derive(Debug)]
pub struct TooOld;

/// One published subset.
#[derive(Clone, Debug)]
pub struct Version {
    /// The service's version number (1, 2, ... whenever the subset's digest changes).
    pub version: u64,
    /// (uid, count), by uid.
    pub counts: Arc<Vec<(Uid, u32)>>,
    /// The manifest it was published with.
    pub manifest: Arc<serde_json::Value>,
}

/// The served state.
#[derive(Default)]
pub struct State {
    /// The output directory.
    pub out: PathBuf,
    /// Recent versions, newest last.
    pub versions: VecDeque<Version>,
    /// Changes: (version, (uid, count delta)) from the previous version to this one, newest last.
    pub changes: VecDeque<Change>,
    /// The digest of the last subset read.
    digest: String,
    /// External scores by (column → uid → value), cached for the manifest's external file list.
    external: Option<(String, External)>,
}

impl State {
    /// A state over `out` (nothing loaded yet).
    pub fn new(out: &Path) -> Self {
        State { out: out.to_path_buf(), ..Default::default() }
    }

    /// The newest version, if any subset was published yet.
    pub fn current(&self) -> Option<&Version> {
        self.versions.back()
    }

    /// Reads the manifest and, if the subset changed, the subset; returns whether a new version appeared. A
    /// manifest whose subset digest does not match the file (a publication in progress) is left for later.
    pub fn refresh(&mut self) -> crate::Result<bool> {
        let m = self.out.join("manifest.json");
        let Ok(bytes) = std::fs::read(&m) else { return Ok(false) };
        let manifest: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| crate::Error::Config(format!("{}: {e}", m.display())))?;
        let digest = manifest["subset"]["sha256"].as_str().unwrap_or_default().to_string();
        if digest.is_empty() || digest == self.digest {
            if let Some(v) = self.versions.back_mut() {
                v.manifest = Arc::new(manifest); // same subset, newer shard list or counters
            }
            return Ok(false);
        }
        let subset_path = self.out.join("subset.npy");
        let bytes = std::fs::read(&subset_path).map_err(|e| crate::Error::io(&subset_path, e))?;
        if flyt_digest(&bytes) != digest {
            return Ok(false);
        }
        let counts: Vec<(Uid, u32)> = flyt::SubsetCounts::read(&subset_path)?.iter().collect();
        let previous: HashMap<Uid, u32> =
            self.current().map(|v| v.counts.iter().copied().collect()).unwrap_or_default();
        let mut delta: Vec<(Uid, i64)> = Vec::new();
        let mut now: HashMap<Uid, u32> = HashMap::with_capacity(counts.len());
        for &(u, c) in &counts {
            now.insert(u, c);
            let d = c as i64 - previous.get(&u).copied().unwrap_or(0) as i64;
            if d != 0 {
                delta.push((u, d));
            }
        }
        for (u, c) in &previous {
            if !now.contains_key(u) {
                delta.push((*u, -(*c as i64)));
            }
        }
        delta.sort_unstable();
        let version = self.current().map(|v| v.version + 1).unwrap_or(1);
        self.versions.push_back(Version { version, counts: Arc::new(counts), manifest: Arc::new(manifest) });
        if self.versions.len() > KEEP_VERSIONS {
            self.versions.pop_front();
        }
        self.changes.push_back((version, Arc::new(delta)));
        if self.changes.len() > KEEP_CHANGES {
            self.changes.pop_front();
        }
        self.digest = digest;
        Ok(true)
    }

    /// Changes after `since`, or [`TooOld`] when `since` is older than what is kept.
    pub fn changes_since(&self, since: u64) -> Result<Vec<Change>, TooOld> {
        if let Some((first, _)) = self.changes.front()
            && since + 1 < *first
        {
            return Err(TooOld);
        }
        Ok(self.changes.iter().filter(|(v, _)| *v > since).cloned().collect())
    }

    /// The configuration the curation ran with (from the manifest).
    pub fn config(&self) -> Option<CurateConfig> {
        self.current().and_then(|v| serde_json::from_value(v.manifest["config"].clone()).ok())
    }

    /// The committed shards (names, in manifest order).
    pub fn shards(&self) -> Vec<String> {
        self.current()
            .and_then(|v| v.manifest["shards"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s["name"].as_str().map(String::from))
            .collect()
    }

    /// A shard's commit record.
    pub fn record(&self, name: &str) -> Option<ShardRecord> {
        if !self.shards().iter().any(|s| s == name) {
            return None;
        }
        Layout::new(&self.out).record_of(name)
    }

    /// External scores for the mix, read once per list of files.
    pub fn external(&mut self) -> External {
        let files: Vec<(String, Vec<String>)> = self
            .current()
            .and_then(|v| v.manifest["external_scores"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|f| f["error"].is_null())
            .map(|f| {
                let cols = f["columns"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.as_str().map(String::from))
                    .collect();
                (f["file"].as_str().unwrap_or_default().to_string(), cols)
            })
            .collect();
        let key = serde_json::to_string(&files).unwrap_or_default();
        if let Some((k, v)) = &self.external
            && *k == key
        {
            return v.clone();
        }
        let mut sorted = files;
        sorted.sort();
        let mut map: HashMap<String, HashMap<Uid, f64>> = HashMap::new();
        // the least file name wins, as in the pipeline's mix
        for (file, cols) in sorted.iter().rev() {
            for c in cols {
                if let Ok(pairs) = flyt::read_scores_parquet(file, c) {
                    map.entry(c.clone()).or_default().extend(pairs);
                }
            }
        }
        let v = Arc::new(map);
        self.external = Some((key, v.clone()));
        v
    }
}

fn flyt_digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(bytes))
}

fn strings(v: impl IntoIterator<Item = impl AsRef<str>>) -> ArrayRef {
    let mut b = StringBuilder::new();
    for s in v {
        b.append_value(s.as_ref());
    }
    Arc::new(b.finish())
}

/// The schema and one batch of the subset (rows `range`), with the version in the schema metadata.
pub fn subset_batch(v: &Version, range: std::ops::Range<usize>) -> crate::Result<RecordBatch> {
    let rows = &v.counts[range.start.min(v.counts.len())..range.end.min(v.counts.len())];
    let mut counts = UInt32Builder::with_capacity(rows.len());
    counts.append_slice(&rows.iter().map(|(_, c)| *c).collect::<Vec<_>>());
    let schema = subset_schema(v);
    Ok(RecordBatch::try_new(schema, vec![strings(rows.iter().map(|(u, _)| u.to_string())), Arc::new(counts.finish())])?)
}

/// The subset's schema: `uid`, `count`, with `flyt.version`, `flyt.complete` and `flyt.frontier` metadata.
pub fn subset_schema(v: &Version) -> SchemaRef {
    let mut meta = std::collections::HashMap::new();
    meta.insert("flyt.version".to_string(), v.version.to_string());
    meta.insert("flyt.complete".to_string(), v.manifest["complete"].to_string());
    meta.insert("flyt.frontier".to_string(), v.manifest["frontier"].to_string());
    Arc::new(
        Schema::new(vec![Field::new("uid", DataType::Utf8, false), Field::new("count", DataType::UInt32, false)])
            .with_metadata(meta),
    )
}

/// The changes schema: `version`, `uid`, `delta`.
pub fn changes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("version", DataType::UInt64, false),
        Field::new("uid", DataType::Utf8, false),
        Field::new("delta", DataType::Int64, false),
    ]))
}

/// One batch of changes.
pub fn changes_batch(changes: &[Change]) -> crate::Result<RecordBatch> {
    let (mut v, mut d) = (UInt64Builder::new(), Int64Builder::new());
    let mut uids = Vec::new();
    for (ver, c) in changes {
        for (u, delta) in c.iter() {
            v.append_value(*ver);
            d.append_value(*delta);
            uids.push(u.to_string());
        }
    }
    Ok(RecordBatch::try_new(changes_schema(), vec![Arc::new(v.finish()), strings(uids), Arc::new(d.finish())])?)
}

/// The score table's schema for the given internal columns: `uid`, `key`, `shard`, each column (f32), and
/// `score` (f64: what SCS samples by; null while a mixer input is missing).
pub fn scores_schema(columns: &[String]) -> SchemaRef {
    let mut f = vec![
        Field::new("uid", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("shard", DataType::Utf8, false),
    ];
    f.extend(columns.iter().map(|c| Field::new(c, DataType::Float32, false)));
    f.push(Field::new("score", DataType::Float64, true));
    Arc::new(Schema::new(f))
}

/// What serving a shard's score table needs, taken from the state under its lock; the table itself is read
/// without it ([`ScoresPlan::batches`]), so DoGets run in parallel.
pub struct ScoresPlan {
    path: PathBuf,
    name: String,
    columns: Vec<String>,
    mix: Option<(MixWeights, External)>,
    column: Option<usize>,
}

/// Plans serving shard `name`'s score table.
pub fn scores_plan(state: &mut State, name: &str) -> crate::Result<ScoresPlan> {
    let record = state.record(name).ok_or_else(|| crate::Error::NotFound(format!("no committed shard {name:?}")))?;
    let config = state.config().unwrap_or_default();
    let mix = match &config.score.mixer {
        Some(m) => Some((MixWeights::load(m)?, state.external())),
        None => None,
    };
    let want = config.score.column.clone().unwrap_or_else(|| record.columns.last().cloned().unwrap_or_default());
    Ok(ScoresPlan {
        path: Layout { out: state.out.clone() }.scores(name),
        name: name.to_string(),
        column: record.columns.iter().position(|c| *c == want),
        columns: record.columns,
        mix,
    })
}

impl ScoresPlan {
    /// The table's schema.
    pub fn schema(&self) -> SchemaRef {
        scores_schema(&self.columns)
    }

    /// The table in batches of 64k rows, straight from the parquet file plus `shard` and `score`.
    pub fn batches(&self) -> crate::Result<Vec<RecordBatch>> {
        use arrow_array::cast::AsArray;
        use arrow_array::types::Float32Type;
        let file = std::fs::File::open(&self.path).map_err(|e| crate::Error::io(&self.path, e))?;
        let pq = |source| crate::Error::Flyt(flyt::Error::Parquet { path: self.path.clone(), source });
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(pq)?
            .with_batch_size(1 << 16)
            .build()
            .map_err(pq)?;
        let schema = scores_schema(&self.columns);
        let mut out = Vec::new();
        for b in reader {
            let b = b?;
            let col = |n: &str| {
                b.column_by_name(n)
                    .cloned()
                    .ok_or_else(|| crate::Error::NotFound(format!("{}: no column {n}", self.path.display())))
            };
            let (uid, key) = (col("uid")?, col("key")?);
            let values: Vec<ArrayRef> = self.columns.iter().map(|c| col(c)).collect::<crate::Result<_>>()?;
            let f32s: Vec<&arrow_array::Float32Array> = values
                .iter()
                .zip(&self.columns)
                .map(|(a, c)| {
                    a.as_primitive_opt::<Float32Type>().ok_or_else(|| {
                        crate::Error::NotFound(format!(
                            "{}: column {c} is {}, not float32",
                            self.path.display(),
                            a.data_type()
                        ))
                    })
                })
                .collect::<crate::Result<_>>()?;
            if uid.as_string_opt::<i32>().is_none() || key.as_string_opt::<i32>().is_none() {
                return Err(crate::Error::NotFound(format!(
                    "{}: uid and key must be utf8 columns",
                    self.path.display()
                )));
            }
            let n = b.num_rows();
            let mut score = Float64Builder::with_capacity(n);
            match (&self.mix, self.column) {
                (Some((w, external)), _) => {
                    let uids = uid.as_string_opt::<i32>().expect("checked above");
                    for i in 0..n {
                        let row: Option<Vec<f64>> = w
                            .columns
                            .iter()
                            .map(|c| match self.columns.iter().position(|x| x == c) {
                                Some(j) => Some(f32s[j].value(i) as f64),
                                None => Uid::parse_hex(uids.value(i))
                                    .ok()
                                    .and_then(|u| external.get(c).and_then(|m| m.get(&u)).copied()),
                            })
                            .collect();
                        score.append_option(row.map(|v| w.mix(&v)));
                    }
                }
                (None, Some(j)) => score.append_slice(&f32s[j].values().iter().map(|v| *v as f64).collect::<Vec<_>>()),
                (None, None) => score.append_nulls(n),
            }
            let mut arrays = vec![uid, key, strings(std::iter::repeat_n(self.name.as_str(), n))];
            arrays.extend(values);
            arrays.push(Arc::new(score.finish()));
            out.push(RecordBatch::try_new(schema.clone(), arrays)?);
        }
        Ok(out)
    }
}

/// Per-shard stats: one row per committed shard.
pub fn stats_batch(state: &State) -> crate::Result<RecordBatch> {
    let schema = stats_schema();
    let names = state.shards();
    let layout = Layout { out: state.out.clone() };
    let records: Vec<ShardRecord> = names.iter().filter_map(|n| layout.record_of(n)).collect();
    let u = |f: fn(&ShardRecord) -> u64| -> ArrayRef {
        let mut b = UInt64Builder::new();
        for r in &records {
            b.append_value(f(r));
        }
        Arc::new(b.finish())
    };
    let replayed: BTreeMap<String, bool> = state
        .current()
        .and_then(|v| v.manifest["shards"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| Some((s["name"].as_str()?.to_string(), s["replayed"].as_bool().unwrap_or(false))))
        .collect();
    let mut rep = BooleanBuilder::new();
    for r in &records {
        rep.append_value(replayed.get(&r.name).copied().unwrap_or(false));
    }
    Ok(RecordBatch::try_new(
        schema,
        vec![
            strings(records.iter().map(|r| &r.name)),
            strings(records.iter().map(|r| &r.via)),
            u(|r| r.rows),
            u(|r| r.stats.members),
            u(|r| r.stats.samples),
            u(|r| r.stats.accepted),
            u(|r| r.stats.rejected),
            strings(records.iter().map(|r| serde_json::to_string(&r.stats.rejected_by_reason).unwrap_or_default())),
            Arc::new(rep.finish()),
        ],
    )?)
}

/// The stats schema.
pub fn stats_schema() -> SchemaRef {
    let u = |n: &str| Field::new(n, DataType::UInt64, false);
    Arc::new(Schema::new(vec![
        Field::new("shard", DataType::Utf8, false),
        Field::new("via", DataType::Utf8, false),
        u("rows"),
        u("members"),
        u("samples"),
        u("accepted"),
        u("rejected"),
        Field::new("rejected_by_reason", DataType::Utf8, false),
        Field::new("replayed", DataType::Boolean, false),
    ]))
}

/// The rejects schema.
pub fn rejects_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("shard", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("detail", DataType::Utf8, false),
        Field::new("members", DataType::UInt64, false),
    ]))
}

/// A shard's rejects.
pub fn rejects_batch(state: &State, name: &str) -> crate::Result<RecordBatch> {
    state.record(name).ok_or_else(|| crate::Error::NotFound(format!("no committed shard {name:?}")))?;
    let path = Layout { out: state.out.clone() }.rejects(name);
    let text = std::fs::read_to_string(&path).map_err(|e| crate::Error::io(&path, e))?;
    let rows: Vec<flyt::Rejected> =
        text.lines().filter(|l| !l.is_empty()).filter_map(|l| serde_json::from_str(l).ok()).collect();
    let mut m = UInt64Builder::new();
    for r in &rows {
        m.append_value(r.members);
    }
    Ok(RecordBatch::try_new(
        rejects_schema(),
        vec![
            strings(rows.iter().map(|r| r.shard.to_string())),
            strings(rows.iter().map(|r| &r.key)),
            strings(rows.iter().map(|r| r.reason.name())),
            strings(rows.iter().map(|r| &r.detail)),
            Arc::new(m.finish()),
        ],
    )?)
}

/// A shard's embeddings (its sidecar or the stored copy): `uid`, `key`, `image`, `text` (fixed-size lists of
/// f32).
pub fn embeddings_batch(state: &State, name: &str) -> crate::Result<RecordBatch> {
    let record = state.record(name).ok_or_else(|| crate::Error::NotFound(format!("no committed shard {name:?}")))?;
    let (parquet, npz) = match (&record.embeddings, record.via.as_str()) {
        (Some(pair), _) => pair.clone(),
        (None, "sidecar") => {
            let p = record.inputs.iter().find(|f| f.path.extension().is_some_and(|x| x == "parquet"));
            let n = record.inputs.iter().find(|f| f.path.extension().is_some_and(|x| x == "npz"));
            match (p, n) {
                (Some(p), Some(n)) => (p.path.clone(), n.path.clone()),
                _ => return Err(crate::Error::NotFound(format!("shard {name:?} has no embeddings"))),
            }
        }
        _ => {
            return Err(crate::Error::NotFound(format!(
                "shard {name:?} has no stored embeddings (run curate with [embed] store = true)"
            )));
        }
    };
    let e = read_sidecar(name, &parquet, &npz, Some(&record.prefix))?.embeddings;
    let dim = e.dim as i32;
    let list = |v: &[f32]| -> ArrayRef {
        let mut b = FixedSizeListBuilder::new(Float32Builder::with_capacity(v.len()), dim);
        for row in v.chunks_exact(e.dim.max(1)) {
            b.values().append_slice(row);
            b.append(true);
        }
        Arc::new(b.finish())
    };
    let schema = embeddings_schema(e.dim);
    Ok(RecordBatch::try_new(
        schema,
        vec![
            strings(e.ids.iter().map(|(u, _)| u.to_string())),
            strings(e.ids.iter().map(|(_, k)| k)),
            list(&e.image),
            list(&e.text),
        ],
    )?)
}

/// The embeddings schema for a dimension.
pub fn embeddings_schema(dim: usize) -> SchemaRef {
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    Arc::new(Schema::new(vec![
        Field::new("uid", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("image", DataType::FixedSizeList(item.clone(), dim as i32), false),
        Field::new("text", DataType::FixedSizeList(item, dim as i32), false),
    ]))
}
