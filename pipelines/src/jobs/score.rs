//! `flyt score`: a trained FLYT head or M-FLYT mixer over a pool or shards, one `<stem>_scores.parquet`
//! (uid, key, score) per pool file or shard. The curation graph's front with the `flyt` method (a head), or
//! its pool, `ReadScoreFiles` and `MixScores` (a mixer), over a finite input.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use differential_dataflow::AsCollection;
use flyt::clip::{Embedder, EmbedderConfig};
use flyt::train::{CheckpointInfo, MixWeights, ModelKind};
use flyt::{DeviceSpec, ReaderConfig, Uid};
use flyt_operators::{Counters, DedupUids, Job, Mix, MixScores, PoolRows, ReadScoreFiles, Via};
use timely::dataflow::operators::Inspect;
use timely::dataflow::operators::vec::Map as _;

use super::{pool_files, pool_prefix};
use crate::graph::{Front, Wire, run_finite};
use crate::methods::{Loaded, Method, MethodInputs, columns_of};
use crate::shards::expand_shards;
use crate::{Context, Error, Result};

/// What to score.
#[derive(Clone, Debug, Default)]
pub struct ScoreConfig {
    /// A checkpoint written by `flyt train` (`checkpoint.safetensors`, with its `.json`).
    pub model: PathBuf,
    /// A DataComp-layout pool to score (or give `shards`).
    pub pool: Option<PathBuf>,
    /// FLYT over shards: the frozen CLIP that embeds them (default: the checkpoint's `model`).
    pub clip: Option<PathBuf>,
    /// Shards (or directories) to score: embedded with the frozen CLIP (FLYT) or joined with `scores` on uid
    /// (M-FLYT).
    pub shards: Vec<PathBuf>,
    /// M-FLYT: parquet files with the mixer's columns (`uid` + columns). A column in none of them is computed
    /// here when it is a scoring method's.
    pub scores: Vec<PathBuf>,
    /// The output directory.
    pub out: PathBuf,
    /// Where the models run.
    pub device: DeviceSpec,
}

/// What `score` did.
#[derive(Clone, Debug)]
pub struct ScoreReport {
    /// `flyt` or `mflyt`.
    pub kind: ModelKind,
    /// The checkpoint's step.
    pub step: u64,
    /// Rows scored (one per uid).
    pub rows: usize,
    /// Files written.
    pub files: usize,
    /// Seconds.
    pub seconds: f64,
}

/// The columns some score file has (reading only their names).
fn file_columns(files: &[PathBuf], wanted: &[String]) -> Result<HashSet<String>> {
    let mut have = HashSet::new();
    for f in files {
        for c in wanted {
            match flyt::read_scores_parquet(f, c) {
                Ok(_) => {
                    have.insert(c.clone());
                }
                Err(flyt::Error::Format { what, .. }) if what == *c => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(have)
}

/// Scores the pool or the shards with the checkpoint.
pub fn score(cfg: &ScoreConfig) -> Result<ScoreReport> {
    let start = Instant::now();
    let device = cfg.device.resolve()?;
    let info = CheckpointInfo::read(&cfg.model)?;
    crate::jobs::create_dir(&cfg.out)?;
    // The mixer: columns in the score files are external, the others must be a method's.
    let (methods, mix) = match info.kind {
        ModelKind::Flyt => (vec![Method::Flyt], None),
        ModelKind::Mflyt => {
            let weights = MixWeights::load(&cfg.model)?;
            let external = file_columns(&cfg.scores, &weights.columns)?;
            let mut methods = Vec::new();
            for c in weights.columns.iter().filter(|c| !external.contains(*c)) {
                match Method::of_column(c) {
                    Some(m) if m != Method::Flyt && !methods.contains(&m) => methods.push(m),
                    _ => {
                        return Err(Error::Config(format!(
                            "score column {c:?} is in none of the --scores files (and flyt does not compute it here)"
                        )));
                    }
                }
            }
            (methods.clone(), Some((weights, columns_of(&methods))))
        }
    };
    let need_emb = methods.iter().any(|m| m.needs_embeddings());
    // The jobs: pool files (sidecars) or tars (embedded with the frozen CLIP), then the score files.
    let (mut jobs, prefix, embedder) = match (&cfg.pool, need_emb) {
        (Some(dir), _) => {
            let files = pool_files(dir)?;
            let prefix = if need_emb { Some(pool_prefix(&files, info.meta["embeddings"].as_str())?) } else { None };
            let jobs: Vec<Job> = files
                .iter()
                .map(|f| Job::Shard {
                    name: f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
                    inputs: Vec::new(),
                    via: if need_emb {
                        Via::Sidecar { parquet: f.clone(), npz: f.with_extension("npz"), stored: false }
                    } else {
                        Via::Metadata { parquet: f.clone() }
                    },
                })
                .collect();
            (jobs, prefix, None)
        }
        (None, true) => {
            let clip =
                cfg.clip.clone().or_else(|| info.meta["model"].as_str().map(PathBuf::from)).ok_or_else(|| {
                    Error::Config(
                        "scoring shards with a FLYT head needs the frozen CLIP: pass --clip DIR (the one the pool was \
                     embedded with)"
                            .into(),
                    )
                })?;
            (shard_jobs(&cfg.shards)?, None, Some(clip))
        }
        (None, false) => (shard_jobs(&cfg.shards)?, None, None),
    };
    jobs.extend(cfg.scores.iter().map(|p| Job::Scores { path: p.clone() }));
    let mi = MethodInputs { flyt: Some(cfg.model.clone()), prefix: prefix.clone(), ..Default::default() };
    let loaded = Arc::new(Loaded::load(&methods, &mi, 1)?);
    let columns = columns_of(&methods);
    let shards: Arc<Mutex<Vec<Got>>> = Default::default();
    // A head's scores are final once a shard is assembled: its table is written as soon as the shards before it
    // (in name order) are, so only the uids seen so far stay in memory. A mixer's come at the end.
    let mut names: Vec<String> = jobs
        .iter()
        .filter_map(|j| match j {
            Job::Shard { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    names.sort();
    let tables = Arc::new(Mutex::new(Tables::new(cfg.out.clone(), names)));
    let mixed: Arc<Mutex<HashMap<Uid, i64>>> = Default::default();
    let mixed_scores: Arc<Mutex<HashMap<Uid, u64>>> = Default::default();
    {
        let (shards, mixed_scores, mixed, tables) =
            (shards.clone(), mixed_scores.clone(), mixed.clone(), tables.clone());
        let (columns, mix) = (columns.clone(), mix.clone());
        run_finite(timely::Config::thread(), jobs, move |_| -> Result<Wire> {
            let embedder = match &embedder {
                Some(clip) => Some(Rc::new(
                    Embedder::load(clip, EmbedderConfig { device, ..Default::default() })
                        .context_with(|| format!("loading the CLIP model {}", clip.display()))?,
                )),
                None => None,
            };
            let scorers = loaded.for_worker(device, 1)?;
            if let (Some(e), Some(d)) = (&embedder, scorers.flyt_dim())
                && e.dim() != d
            {
                return Err(Error::Config(format!("{}-d embeddings, the head takes {d}-d", e.dim())));
            }
            let front = Front {
                embedder,
                batch_size: 256,
                decode_budget: 4096,
                reader: if need_emb { ReaderConfig::default() } else { ReaderConfig::default().require_image(false) },
                round_f16: false,
                prefix: prefix.clone(),
                scorers,
                columns: columns.clone(),
                store_prefix: String::new(),
                counters: Arc::new(Counters::default()),
            };
            let (shards, mixed_scores, mixed, mix) = (shards.clone(), mixed_scores.clone(), mixed.clone(), mix.clone());
            let tables = tables.clone();
            let head = mix.is_none();
            Ok(Box::new(move |_scope, jobs| {
                let assembled = front.assemble(jobs.clone()).inspect(move |r| {
                    let g = match r {
                        Ok(s) => Ok((s.name.clone(), s.embeddings.ids.clone(), s.columns.clone())),
                        Err(e) => Err(e.clone()),
                    };
                    if head {
                        if let Ok(mut t) = tables.lock() {
                            t.add(g);
                            t.write_ready(false);
                        }
                    } else if let Ok(mut v) = shards.lock() {
                        v.push(g);
                    }
                });
                if let Some((weights, internal)) = mix {
                    // M-FLYT: the pool's rows (one per uid), mixed with the score files joined on uid.
                    let rows = assembled.flat_map(|r| r.ok()).map(|s| flyt::curation::ShardScores {
                        name: s.name,
                        content: s.embeddings.meta.iter().map(|m| m.content()).collect(),
                        ids: s.embeddings.ids,
                        columns: s.columns,
                    });
                    let mix = Mix::Linear { weights: weights.clone(), internal };
                    let (external, _events) = jobs.read_score_files(mix.external_columns());
                    rows.pool_rows()
                        .as_collection()
                        .dedup_uids()
                        .mix_scores(&mix, Some(external.as_collection()))
                        .inner
                        .inspect(move |((uid, bits), _, d)| {
                            if let (Ok(mut m), Ok(mut s)) = (mixed.lock(), mixed_scores.lock()) {
                                *m.entry(*uid).or_insert(0) += *d as i64;
                                if *d > 0 {
                                    s.insert(*uid, *bits);
                                }
                            }
                        });
                }
            }))
        })?;
    }
    if mix.is_none() {
        let mut t = tables.lock().map_err(|_| Error::Dataflow("a worker panicked".into()))?;
        t.write_ready(true);
        if let Some(e) = t.error.take() {
            return Err(e);
        }
        return Ok(ScoreReport {
            kind: info.kind,
            step: info.step,
            rows: t.seen.len(),
            files: t.files,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    let mut shards = std::mem::take(&mut *shards.lock().map_err(|_| Error::Dataflow("a worker panicked".into()))?);
    shards.sort_by_key(|r| match r {
        Ok((n, ..)) | Err((n, _)) => n.clone(),
    });
    let mixed = mixed.lock().map_err(|_| Error::Dataflow("a worker panicked".into()))?;
    let mixed_scores = mixed_scores.lock().map_err(|_| Error::Dataflow("a worker panicked".into()))?;
    let mut seen = HashSet::new();
    let mut outputs: BTreeMap<String, Output> = BTreeMap::new();
    let mut missing: Vec<Uid> = Vec::new();
    for r in shards {
        let (name, ids, cols) = r.map_err(|(_, e)| Error::Incomplete(e))?;
        let out = outputs.entry(name).or_default();
        for (i, (uid, key)) in ids.into_iter().enumerate() {
            if !seen.insert(uid) {
                continue; // one row per uid: the first shard (in name order) has it
            }
            let s = match &mix {
                None => cols[0][i],
                Some(_) => match mixed.get(&uid).filter(|c| **c > 0).and_then(|_| mixed_scores.get(&uid)) {
                    Some(bits) => f64::from_bits(*bits) as f32,
                    None => {
                        missing.push(uid);
                        continue;
                    }
                },
            };
            out.0.push((uid, key));
            out.1.push(s);
        }
    }
    if let Some(first) = missing.first() {
        return Err(Error::Config(format!(
            "{} pool uids have no score for some mixer column in the --scores files (first: {first}); a missing \
             score is not zero-filled",
            missing.len()
        )));
    }
    let rows = seen.len();
    for (name, (ids, scores)) in &outputs {
        flyt::write_score_table(cfg.out.join(format!("{name}_scores.parquet")), ids, &[], &[("score", scores)])?;
    }
    Ok(ScoreReport {
        kind: info.kind,
        step: info.step,
        rows,
        files: outputs.len(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// A head's score tables, written in shard-name order as the shards come in.
struct Tables {
    out: PathBuf,
    /// The shards' names, in order.
    order: Vec<String>,
    /// The next in `order` to write.
    next: usize,
    /// Shards in, not written yet.
    waiting: HashMap<String, Got>,
    /// Uids written (one row per uid: the first shard in name order has it).
    seen: HashSet<Uid>,
    files: usize,
    /// The first failure in name order (nothing after it is written).
    error: Option<Error>,
}

impl Tables {
    fn new(out: PathBuf, order: Vec<String>) -> Self {
        Tables { out, order, next: 0, waiting: HashMap::new(), seen: HashSet::new(), files: 0, error: None }
    }

    fn add(&mut self, g: Got) {
        let name = match &g {
            Ok((n, ..)) | Err((n, _)) => n.clone(),
        };
        self.waiting.insert(name, g);
    }

    /// Writes the waiting shards whose predecessors are written; with `all`, every waiting shard (in name order).
    fn write_ready(&mut self, all: bool) {
        if all {
            // A shard the job list did not name (none expected) is written after the others, by name.
            let mut extra: Vec<String> = self.waiting.keys().filter(|n| !self.order.contains(n)).cloned().collect();
            extra.sort();
            self.order.extend(extra);
        }
        loop {
            if self.error.is_some() {
                self.waiting.clear();
                return;
            }
            let name = match self.order.get(self.next) {
                Some(n) if self.waiting.contains_key(n) => n.clone(),
                Some(_) if all => {
                    self.next += 1;
                    continue;
                }
                _ => break,
            };
            self.next += 1;
            let Some(g) = self.waiting.remove(&name) else { continue };
            let (name, ids, cols) = match g {
                Ok(g) => g,
                Err((_, e)) => {
                    self.error = Some(Error::Incomplete(e));
                    continue;
                }
            };
            let (mut keep, mut scores) = (Vec::new(), Vec::new());
            for (i, (uid, key)) in ids.into_iter().enumerate() {
                if self.seen.insert(uid) {
                    keep.push((uid, key));
                    scores.push(cols[0][i]);
                }
            }
            let path = self.out.join(format!("{name}_scores.parquet"));
            match flyt::write_score_table(path, &keep, &[], &[("score", &scores)]) {
                Ok(()) => self.files += 1,
                Err(e) => self.error = Some(e.into()),
            }
        }
    }
}

/// A shard's rows and columns, or why it failed.
type Got = std::result::Result<(String, Vec<(Uid, String)>, Vec<Vec<f32>>), (String, String)>;

/// A shard's output rows: (uid, key) and the score.
type Output = (Vec<(Uid, String)>, Vec<f32>);

/// A job per shard (files, or directories of them).
fn shard_jobs(shards: &[PathBuf]) -> Result<Vec<Job>> {
    Ok(expand_shards(shards)?
        .into_iter()
        .map(|tar| Job::Shard { name: flyt::shard_name(&tar), inputs: Vec::new(), via: Via::Model { tar } })
        .collect())
}
