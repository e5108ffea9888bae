//! `flyt scores` (every per-uid score column a pool's inputs allow, for M-FLYT) and `flyt filter` (DataComp's
//! baseline filters and score-based selection): the curation graph's front over a DataComp-layout pool, each
//! `<stem>.parquet` (+ `<stem>.npz`) one shard, so a column here equals the curation graph's column of the
//! same uid.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use flyt::methods::{BasicFeatures, BasicFilter};
use flyt::sampling::topk;
use flyt::{DeviceSpec, ReaderConfig, RejectReason, Rejected, Uid};
use flyt_operators::{Counters, Job, Via};
use timely::dataflow::operators::Inspect;

use super::clusters::{ClustersConfig, fit};
use super::{pool_files, pool_prefix};
use crate::graph::{Front, Wire, run_finite};
use crate::methods::{Centroids, Loaded, Method, MethodInputs, NegClipLossParams, columns_of};
use crate::{Error, Result};

/// A pool and the inputs of its scoring methods (shared by `scores` and `filter`).
#[derive(Clone, Debug, Default)]
pub struct PoolInputs {
    /// A DataComp-layout pool directory: `<stem>.parquet` metadata (uid, text, original_width,
    /// original_height, ...) with `<stem>.npz` embeddings beside them.
    pub pool: PathBuf,
    /// The `.npz` prefix (`l14`, `b32`, `emb`, ...); default: l14, else b32, else the only pair.
    pub embeddings: Option<String>,
    /// Downstream image embeddings (image-based, NormSim): `.npy` or `.npz` (`FILE.npz:KEY`), concatenated.
    pub downstream: Vec<String>,
    /// Downstream class names (text-based): `classnames.txt` files.
    pub classnames: Vec<PathBuf>,
    /// Fixed k-means centroids for image-based (`flyt clusters`); default: fitted here over the whole pool.
    pub centroids: Option<PathBuf>,
    /// Centroids to fit when none are given (default: pool size / 256, at least 1, at most 100,000).
    pub clusters: Option<usize>,
    /// negCLIPLoss's parameters (its batches are formed within each pool file, as in the curation graph).
    pub neg_clip_loss: NegClipLossParams,
    /// The seed of the fitted centroids.
    pub seed: u64,
    /// Threads for k-means (0: all cores).
    pub threads: usize,
    /// Where the matrix work runs.
    pub device: DeviceSpec,
}

/// A pool scored: one row per uid — the first of a uid in file then row order, the row the curation graph's
/// `DedupUids` keeps (the least (shard, key)) — with the columns by name.
pub(crate) struct ScoredPool {
    pub(crate) uids: Vec<Uid>,
    pub(crate) columns: BTreeMap<String, Vec<f32>>,
    /// Rows left out (a bad uid, a missing embedding row, a uid seen before).
    pub(crate) rejected: Vec<Rejected>,
}

/// Scores a pool with `methods` (each pool file one shard of the graph).
pub(crate) fn score_pool(inputs: &PoolInputs, methods: &[Method]) -> Result<ScoredPool> {
    let files = pool_files(&inputs.pool)?;
    let need_emb = methods.iter().any(|m| m.needs_embeddings());
    let prefix = if need_emb { Some(pool_prefix(&files, inputs.embeddings.as_deref())?) } else { None };
    if methods.contains(&Method::ImageBased) && inputs.downstream.is_empty() {
        return Err(Error::Config(
            "image-based needs the downstream set's image embeddings: pass --downstream FILE.npy|FILE.npz".into(),
        ));
    }
    let centroids = match (&inputs.centroids, methods.contains(&Method::ImageBased)) {
        (Some(p), _) => Some(Centroids::File(p.clone())),
        (None, true) => {
            let c = ClustersConfig {
                pool: inputs.pool.clone(),
                embeddings: prefix.clone(),
                k: inputs.clusters,
                sample: None,
                seed: inputs.seed,
                threads: inputs.threads,
                out: PathBuf::new(),
            };
            let (km, rows) = fit(&c)?;
            let how = format!("fitted: k={} on {rows} rows, seed {}", km.k(), inputs.seed);
            Some(Centroids::Fitted(km, how))
        }
        (None, false) => None,
    };
    let mi = MethodInputs {
        downstream: inputs.downstream.clone(),
        classnames: inputs.classnames.clone(),
        centroids,
        neg_clip_loss: inputs.neg_clip_loss.clone(),
        flyt: None,
        prefix: prefix.clone(),
    };
    let loaded = Arc::new(Loaded::load(methods, &mi, inputs.threads)?);
    if let (Some(p), Some(d)) = (&prefix, loaded.dim()) {
        let npz = files[0].with_extension("npz");
        let (_, _, dim) = flyt::read_npz_matrix(&npz, &format!("{p}_img"))?;
        if dim != d {
            return Err(Error::Config(format!(
                "downstream embeddings are {d}-d but the pool's are {dim}-d (use the same CLIP model)"
            )));
        }
    }
    let device = inputs.device.resolve()?;
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
    let columns = columns_of(methods);
    type Got = std::result::Result<(String, Vec<Uid>, Vec<Vec<f32>>, Vec<Rejected>), (String, String)>;
    let got: Arc<Mutex<Vec<Got>>> = Default::default();
    let (sink, cols, threads) = (got.clone(), columns.clone(), inputs.threads);
    run_finite(timely::Config::thread(), jobs, move |_| -> Result<Wire> {
        let front = Front {
            embedder: None,
            batch_size: 1,
            decode_budget: 1,
            reader: ReaderConfig::default(),
            round_f16: false,
            prefix: prefix.clone(),
            scorers: loaded.for_worker(device, threads.max(1))?,
            columns: cols.clone(),
            store_prefix: String::new(),
            counters: Arc::new(Counters::default()),
        };
        let sink = sink.clone();
        Ok(Box::new(move |_scope, jobs| {
            front.assemble(jobs).inspect(move |r| {
                let g = match r {
                    Ok(s) => Ok((s.name.clone(), s.embeddings.uids(), s.columns.clone(), s.rejects.clone())),
                    Err(e) => Err(e.clone()),
                };
                if let Ok(mut v) = sink.lock() {
                    v.push(g);
                }
            });
        }))
    })?;
    let mut got = std::mem::take(&mut *got.lock().map_err(|_| Error::Dataflow("a worker panicked".into()))?);
    got.sort_by(|a, b| {
        let name = |g: &Got| match g {
            Ok((n, ..)) | Err((n, _)) => n.clone(),
        };
        name(a).cmp(&name(b))
    });
    let mut out = ScoredPool { uids: Vec::new(), columns: BTreeMap::new(), rejected: Vec::new() };
    let mut values: Vec<Vec<f32>> = vec![Vec::new(); columns.len()];
    let mut seen = HashSet::new();
    for g in got {
        let (name, uids, cols, rejects) = g.map_err(|(_, e)| Error::Incomplete(e))?;
        out.rejected.extend(rejects);
        for (i, u) in uids.iter().enumerate() {
            if !seen.insert(*u) {
                out.rejected.push(Rejected {
                    shard: name.as_str().into(),
                    key: format!("row {i}"),
                    reason: RejectReason::DuplicateUid,
                    detail: format!("uid {u} already seen in an earlier file"),
                    members: 0,
                });
                continue;
            }
            out.uids.push(*u);
            for (v, c) in values.iter_mut().zip(&cols) {
                v.push(c[i]);
            }
        }
    }
    out.columns = columns.into_iter().zip(values).collect();
    Ok(out)
}

fn write_columns(path: &std::path::Path, uids: &[Uid], cols: &BTreeMap<String, Vec<f32>>) -> Result<()> {
    let ids: Vec<(Uid, String)> = uids.iter().map(|u| (*u, String::new())).collect();
    let cols: Vec<(&str, &[f32])> = cols.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    Ok(flyt::write_score_table(path, &ids, &[], &cols)?)
}

/// What `scores` computes.
#[derive(Clone, Debug, Default)]
pub struct ScoresConfig {
    /// The pool and the methods' inputs.
    pub inputs: PoolInputs,
    /// Output parquet: `uid` plus one float column per method the inputs allow.
    pub out: PathBuf,
}

/// What `scores` did.
#[derive(Clone, Debug)]
pub struct ScoresReport {
    /// Uids scored.
    pub uids: usize,
    /// The columns written, by name.
    pub columns: Vec<String>,
    /// Rows left out.
    pub rejected: Vec<Rejected>,
    /// Whether the embedding methods were left out because not every pool file has its `.npz`.
    pub no_embeddings: bool,
    /// Seconds.
    pub seconds: f64,
}

/// The methods a pool's inputs allow: the basic-filter features always; text-based with class names; CLIP
/// score and negCLIPLoss with embeddings; NormSim and image-based with embeddings and a downstream set.
pub fn scores(cfg: &ScoresConfig) -> Result<ScoresReport> {
    let start = Instant::now();
    let a = &cfg.inputs;
    let has_npz = pool_files(&a.pool)?.iter().all(|f| f.with_extension("npz").exists());
    let mut methods = vec![Method::Basic];
    if !a.classnames.is_empty() {
        methods.push(Method::TextBased);
    }
    if has_npz {
        methods.extend([Method::ClipScore, Method::NegClipLoss]);
        if !a.downstream.is_empty() {
            methods.extend([Method::NormSim2, Method::NormSimInf, Method::ImageBased]);
        }
    }
    let p = score_pool(a, &methods)?;
    write_columns(&cfg.out, &p.uids, &p.columns)?;
    Ok(ScoresReport {
        uids: p.uids.len(),
        columns: p.columns.keys().cloned().collect(),
        rejected: p.rejected,
        no_embeddings: !has_npz,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// A filtering method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterMethod {
    /// Keep everything.
    NoFilter,
    /// DataComp's basic filter: English, > 2 words, > 5 characters, shorter side ≥ 200, aspect ≤ 3.
    Basic,
    /// Top fraction (default 0.3) or `score ≥ threshold` by CLIP score.
    ClipScore,
    /// English captions naming a downstream class.
    TextBased,
    /// English captions (> 1 word, > 5 characters) whose image's nearest k-means centroid is one of those
    /// nearest to the downstream set's images.
    ImageBased,
    /// image-based ∩ CLIP-score top fraction (default 0.3): DataComp's best baseline.
    ImageBasedAndClipScore,
    /// Top fraction / `≥ threshold` by negCLIPLoss.
    NegClipLoss,
    /// Top fraction / `≥ threshold` by NormSim∞ to the downstream images.
    NormSimInf,
    /// Top fraction / `≥ threshold` by NormSim₂ to the downstream images.
    NormSim2,
    /// SemDeDup (Abbas et al. 2023): within each k-means cluster of the image embeddings, drop a sample whose
    /// cosine to an earlier-ranked one (farther from the centroid) is ≥ 1 − ε ([`FilterConfig::epsilon`]).
    SemDedup,
}

impl FilterMethod {
    /// Whether it ranks by a score (and so takes a fraction or a threshold).
    pub fn scored(self) -> bool {
        !matches!(
            self,
            FilterMethod::NoFilter
                | FilterMethod::Basic
                | FilterMethod::TextBased
                | FilterMethod::ImageBased
                | FilterMethod::SemDedup
        )
    }

    fn methods(self) -> Vec<Method> {
        use FilterMethod as F;
        match self {
            F::NoFilter => vec![],
            F::Basic => vec![Method::Basic],
            F::TextBased => vec![Method::TextBased, Method::Basic],
            F::ImageBased => vec![Method::ImageBased, Method::Basic],
            F::ImageBasedAndClipScore => vec![Method::ImageBased, Method::Basic, Method::ClipScore],
            F::ClipScore => vec![Method::ClipScore],
            F::NegClipLoss => vec![Method::NegClipLoss],
            F::NormSimInf | F::NormSim2 => vec![Method::NormSim2, Method::NormSimInf],
            F::SemDedup => vec![],
        }
    }
}

/// What `filter` selects.
#[derive(Clone, Debug)]
pub struct FilterConfig {
    /// The filter.
    pub method: FilterMethod,
    /// The pool and the methods' inputs.
    pub inputs: PoolInputs,
    /// Keep the top fraction by score (score methods; exactly ⌊F·N⌋ uids, ties broken by uid).
    pub fraction: Option<f64>,
    /// Keep scores ≥ this (score methods).
    pub threshold: Option<f64>,
    /// Output DataComp subset file (`.npy`, sorted uids).
    pub out: PathBuf,
    /// Also write the score columns computed, per uid, as parquet.
    pub scores: Option<PathBuf>,
    /// SemDeDup's ε (default 0.05).
    pub epsilon: Option<f32>,
}

/// What `filter` kept.
#[derive(Clone, Debug)]
pub struct FilterReport {
    /// Uids kept.
    pub kept: usize,
    /// Uids in the pool.
    pub total: usize,
    /// Rows left out before filtering.
    pub rejected: Vec<Rejected>,
    /// Seconds.
    pub seconds: f64,
}

/// Keeps rows by fraction (exactly ⌊F·N⌋, ties by uid) or threshold.
fn select(uids: &[Uid], score: &[f32], fraction: Option<f64>, threshold: Option<f64>) -> Result<Vec<bool>> {
    if let Some(t) = threshold {
        return Ok(score.iter().map(|&s| s as f64 >= t).collect());
    }
    let pairs: Vec<(Uid, f64)> = uids.iter().zip(score).map(|(&u, &s)| (u, s as f64)).collect();
    Ok(topk(&pairs, fraction.unwrap_or(0.3))?.into_iter().map(|c| c > 0).collect())
}

/// Applies a filter and writes the subset.
pub fn filter(cfg: &FilterConfig) -> Result<FilterReport> {
    use FilterMethod as F;
    let start = Instant::now();
    if !cfg.method.scored() && (cfg.fraction.is_some() || cfg.threshold.is_some()) {
        return Err(Error::Config(format!(
            "--fraction/--threshold apply to score methods; {:?} is a yes/no filter",
            cfg.method
        )));
    }
    if let Some(f) = cfg.fraction
        && !(0.0..=1.0).contains(&f)
    {
        return Err(Error::Config(format!("--fraction must be in [0, 1], got {f}")));
    }
    if cfg.epsilon.is_some() && cfg.method != F::SemDedup {
        return Err(Error::Config("--epsilon applies to semdedup".into()));
    }
    if cfg.method == F::SemDedup {
        return semdedup_filter(cfg, start);
    }
    let p = score_pool(&cfg.inputs, &cfg.method.methods())?;
    let n = p.uids.len();
    let col = |name: &str| -> &[f32] { p.columns.get(name).map(Vec::as_slice).unwrap_or(&[]) };
    let flag = |name: &str| -> Vec<bool> { col(name).iter().map(|&x| x > 0.5).collect() };
    let top = |name: &str| select(&p.uids, col(name), cfg.fraction, cfg.threshold);
    // DataComp's caption rule of image-based, from the basic-filter columns.
    let caption_ok = || -> Vec<bool> {
        let f = BasicFilter::caption_only();
        (0..n)
            .map(|i| {
                let x = BasicFeatures {
                    words: col("caption_words")[i] as u32,
                    chars: col("caption_chars")[i] as u32,
                    english: col("english")[i] > 0.5,
                    size: None,
                };
                f.keeps(&x)
            })
            .collect()
    };
    let keep: Vec<bool> = match cfg.method {
        F::NoFilter => vec![true; n],
        F::Basic => flag("basic"),
        F::TextBased => col("text_based").iter().zip(flag("english")).map(|(&c, e)| c > 0.0 && e).collect(),
        F::ImageBased => flag("image_based").into_iter().zip(caption_ok()).map(|(i, c)| i && c).collect(),
        F::ImageBasedAndClipScore => {
            let t = top("clip_score")?;
            flag("image_based").into_iter().zip(caption_ok()).zip(t).map(|((i, c), t)| i && c && t).collect()
        }
        F::ClipScore => top("clip_score")?,
        F::NegClipLoss => top("neg_clip_loss")?,
        F::NormSimInf => top("norm_sim_inf")?,
        F::NormSim2 => top("norm_sim_2")?,
        F::SemDedup => unreachable!("handled above"),
    };
    let mut kept: Vec<Uid> = p.uids.iter().zip(&keep).filter(|(_, k)| **k).map(|(u, _)| *u).collect();
    kept.sort_unstable();
    flyt::write_subset(&cfg.out, &kept)?;
    if let Some(s) = &cfg.scores {
        write_columns(s, &p.uids, &p.columns)?;
    }
    Ok(FilterReport { kept: kept.len(), total: n, rejected: p.rejected, seconds: start.elapsed().as_secs_f64() })
}

/// `flyt filter --method semdedup`: the pool's image embeddings, their clusters (the given centroids, or k-means
/// fitted here as for image-based), [`flyt::methods::semdedup`]; the curation graph's `[dedup] semantic` gives
/// the same verdicts incrementally. `--scores` gets `semdedup_keep`, `semdedup_sim` (NaN for a cluster's first
/// member) and `semdedup_cluster`.
fn semdedup_filter(cfg: &FilterConfig, start: Instant) -> Result<FilterReport> {
    let inputs = &cfg.inputs;
    let which = match &inputs.embeddings {
        Some(p) => flyt::PoolEmbeddings::Prefix(p.clone()),
        None => flyt::PoolEmbeddings::Auto,
    };
    let pool = flyt::read_pool(&inputs.pool, &which)?;
    if pool.dim == 0 {
        return Err(Error::Config(format!(
            "{}: semdedup needs the pool's image embeddings (.npz)",
            inputs.pool.display()
        )));
    }
    let km = match &inputs.centroids {
        Some(p) => crate::methods::read_centroids(p)?,
        None => {
            let c = ClustersConfig {
                pool: inputs.pool.clone(),
                embeddings: pool.prefix.clone(),
                k: inputs.clusters,
                sample: None,
                seed: inputs.seed,
                threads: inputs.threads,
                out: PathBuf::new(),
            };
            fit(&c)?.0
        }
    };
    if km.dim() != pool.dim {
        return Err(Error::Config(format!("the centroids are {}-d, the pool's embeddings {}-d", km.dim(), pool.dim)));
    }
    let mut image = pool.image.clone();
    for row in image.chunks_exact_mut(pool.dim) {
        flyt::methods::normalize(row);
    }
    let assigned = km.assign(&image, inputs.threads);
    let uids: Vec<Uid> = pool.rows.iter().map(|r| r.uid).collect();
    let cluster: Vec<u32> = assigned.iter().map(|a| a.0).collect();
    let sims: Vec<f32> = assigned.iter().map(|a| a.1).collect();
    let input = flyt::methods::SemDedupInput {
        dim: pool.dim,
        uids: &uids,
        cluster: &cluster,
        centroid_sim: &sims,
        image: &image,
    };
    let verdicts = flyt::methods::semdedup(&input, cfg.epsilon.unwrap_or(0.05), inputs.threads)?;
    let mut kept: Vec<Uid> = uids.iter().zip(&verdicts).filter(|(_, v)| v.keep).map(|(u, _)| *u).collect();
    kept.sort_unstable();
    flyt::write_subset(&cfg.out, &kept)?;
    if let Some(s) = &cfg.scores {
        let mut cols = BTreeMap::new();
        cols.insert("semdedup_keep".to_string(), verdicts.iter().map(|v| if v.keep { 1.0 } else { 0.0 }).collect());
        cols.insert("semdedup_sim".to_string(), verdicts.iter().map(|v| v.similarity().unwrap_or(f32::NAN)).collect());
        cols.insert("semdedup_cluster".to_string(), cluster.iter().map(|c| *c as f32).collect());
        write_columns(s, &uids, &cols)?;
    }
    let rejected = pool
        .rejected
        .iter()
        .map(|(file, row, why)| Rejected {
            shard: flyt::shard_name(file).as_str().into(),
            key: format!("row {row}"),
            reason: if why.contains("already") { RejectReason::DuplicateUid } else { RejectReason::BadUid },
            detail: why.clone(),
            members: 0,
        })
        .collect();
    Ok(FilterReport { kept: kept.len(), total: uids.len(), rejected, seconds: start.elapsed().as_secs_f64() })
}
