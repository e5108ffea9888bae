//! `flyt embed`: shards' images and captions through a CLIP model into a DataComp-style pool, per shard
//! `<stem>.npz` (embeddings), `<stem>.parquet` (uid, key, text, original size, CLIP score) and
//! `<stem>.rejects.jsonl`. The curation graph's front (DecodeShards → EmbedClip) over the shards not done yet.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flyt::clip::{Embedder, EmbedderConfig};
use flyt::curation::write_rejects;
use flyt::{DeviceSpec, NpyArray, NpyData, ReaderConfig};
use flyt_operators::{AssembledShard, Counters, Job, Via};
use timely::dataflow::operators::Inspect;

use crate::graph::{Front, Wire, run_finite};
use crate::methods::Loaded;
use crate::shards::{expand_shards, progress};
use crate::{Context, Error, Result};

/// Stored embedding precision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dtype {
    /// float16, as DataComp stores embeddings.
    #[default]
    F16,
    /// float32.
    F32,
}

/// What to embed.
#[derive(Clone, Debug)]
pub struct EmbedConfig {
    /// A Hugging Face CLIP folder: `config.json`, `model.safetensors`, `vocab.json` + `merges.txt` (or
    /// `tokenizer.json`).
    pub model: PathBuf,
    /// The output directory.
    pub out: PathBuf,
    /// Array and column name prefix (`b32`, `l14` give DataComp's names).
    pub prefix: String,
    /// Largest batch.
    pub batch_size: usize,
    /// Where the model runs.
    pub device: DeviceSpec,
    /// Preprocessing threads (default: all cores).
    pub workers: Option<usize>,
    /// Decode JPEGs at full size, for bit-equality with `CLIPImageProcessor`.
    pub exact_preprocessing: bool,
    /// Stored precision.
    pub dtype: Dtype,
    /// Shards, or directories of them.
    pub shards: Vec<PathBuf>,
}

/// One shard embedded.
#[derive(Clone, Debug)]
pub struct EmbeddedShard {
    /// The shard.
    pub path: PathBuf,
    /// Rows embedded.
    pub rows: usize,
    /// Samples rejected (by ingest, or an image that could not be decoded).
    pub rejected: usize,
}

/// What `embed` did.
#[derive(Clone, Debug, Default)]
pub struct EmbedReport {
    /// Shards embedded now, in name order.
    pub embedded: Vec<EmbeddedShard>,
    /// Shards whose outputs existed (an interrupted run resumes).
    pub skipped: usize,
    /// Rows embedded.
    pub rows: usize,
    /// Seconds.
    pub seconds: f64,
}

/// Embeds the shards whose outputs do not exist yet. A shard that cannot be read, or whose outputs cannot be
/// written, is an error naming it once the others are done.
pub fn embed(cfg: &EmbedConfig) -> Result<EmbedReport> {
    let device = cfg.device.resolve()?;
    let shards = expand_shards(&cfg.shards)?;
    crate::jobs::create_dir(&cfg.out)?;
    let start = Instant::now();
    let outputs = |stem: &str| (cfg.out.join(format!("{stem}.npz")), cfg.out.join(format!("{stem}.parquet")));
    let mut report = EmbedReport::default();
    let mut jobs = Vec::new();
    for path in &shards {
        let stem = flyt::shard_name(path);
        let (npz, table) = outputs(&stem);
        if npz.exists() && table.exists() {
            report.skipped += 1;
        } else {
            jobs.push(Job::Shard { name: stem, inputs: Vec::new(), via: Via::Model { tar: path.clone() } });
        }
    }
    let tars: BTreeMap<String, PathBuf> = jobs
        .iter()
        .filter_map(|j| match j {
            Job::Shard { name, via: Via::Model { tar }, .. } => Some((name.clone(), tar.clone())),
            _ => None,
        })
        .collect();
    let mut config = EmbedderConfig {
        batch_size: cfg.batch_size,
        device,
        exact_preprocessing: cfg.exact_preprocessing,
        max_latency: Duration::from_millis(50),
        ..Default::default()
    };
    if let Some(w) = cfg.workers {
        config.workers = w.max(1);
    }
    let pb = progress(jobs.len() as u64, "embed");
    let done: Arc<Mutex<Vec<std::result::Result<EmbeddedShard, String>>>> = Default::default();
    let loaded = Arc::new(Loaded::load(&[], &Default::default(), 1)?);
    let (model, out, prefix, dtype) = (cfg.model.clone(), cfg.out.clone(), cfg.prefix.clone(), cfg.dtype);
    let sink = done.clone();
    let bar = pb.clone();
    run_finite(timely::Config::thread(), jobs, move |_| -> Result<Wire> {
        let embedder = Rc::new(
            Embedder::load(&model, config.clone())
                .context_with(|| format!("loading the CLIP model {}", model.display()))?,
        );
        let front = Front {
            embedder: Some(embedder),
            batch_size: config.batch_size,
            decode_budget: 4096,
            reader: ReaderConfig::default(),
            round_f16: false,
            prefix: None,
            scorers: loaded.for_worker(tch::Device::Cpu, 1)?,
            columns: Vec::new(),
            store_prefix: prefix.clone(),
            counters: Arc::new(Counters::default()),
        };
        let (sink, bar, out, tars, prefix) = (sink.clone(), bar.clone(), out.clone(), tars.clone(), prefix.clone());
        Ok(Box::new(move |_scope, jobs| {
            front.assemble(jobs).inspect(move |r| {
                let done = match r {
                    Ok(s) => write_shard(s, &out, &prefix, dtype, &tars[&s.name]).map_err(|e| e.report()),
                    Err((name, e)) => {
                        Err(format!("{}: {e}", tars.get(name).map(|p| p.display().to_string()).unwrap_or_default()))
                    }
                };
                if let Ok(d) = &done {
                    bar.println(format!("{}: {} embedded, {} rejected", d.path.display(), d.rows, d.rejected));
                }
                bar.inc(1);
                sink.lock().map(|mut v| v.push(done)).ok();
            });
        }))
    })?;
    pb.finish_and_clear();
    let done = std::mem::take(&mut *done.lock().map_err(|_| Error::Dataflow("a worker panicked".into()))?);
    let mut failed = Vec::new();
    for d in done {
        match d {
            Ok(s) => {
                report.rows += s.rows;
                report.embedded.push(s);
            }
            Err(e) => failed.push(e),
        }
    }
    report.embedded.sort_by(|a, b| a.path.cmp(&b.path));
    report.seconds = start.elapsed().as_secs_f64();
    if !failed.is_empty() {
        failed.sort();
        return Err(Error::Incomplete(format!(
            "{} of {} shards could not be embedded ({} embedded, outputs in {}): {}",
            failed.len(),
            failed.len() + report.embedded.len(),
            report.embedded.len(),
            cfg.out.display(),
            failed.join("; ")
        )));
    }
    Ok(report)
}

/// Writes one shard's outputs: the `.npz` (f16 or f32), the `.parquet` and the rejects.
fn write_shard(
    s: &AssembledShard,
    out: &std::path::Path,
    prefix: &str,
    dtype: Dtype,
    tar: &std::path::Path,
) -> Result<EmbeddedShard> {
    let e = &s.embeddings;
    let rows = e.ids.len();
    let shape = vec![rows, e.dim];
    let data = |v: &[f32]| match dtype {
        Dtype::F16 => NpyData::F16(v.iter().map(|&x| half::f16::from_f32(x)).collect()),
        Dtype::F32 => NpyData::F32(v.to_vec()),
    };
    let mut arrays = BTreeMap::new();
    arrays.insert(format!("{prefix}_img"), NpyArray { shape: shape.clone(), data: data(&e.image) });
    arrays.insert(format!("{prefix}_txt"), NpyArray { shape, data: data(&e.text) });
    flyt::write_npz(out.join(format!("{}.npz", s.name)), &arrays, false)?;
    let score_col = format!("{prefix}_clip_score");
    flyt::write_score_table(
        out.join(format!("{}.parquet", s.name)),
        &e.ids,
        &e.meta,
        &[(score_col.as_str(), &e.clip_score)],
    )?;
    write_rejects(&out.join(format!("{}.rejects.jsonl", s.name)), &s.rejects)?;
    Ok(EmbeddedShard { path: tar.to_path_buf(), rows, rejected: s.rejects.len() })
}
