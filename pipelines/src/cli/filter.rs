//! `flyt filter` (DataComp's baseline filters and score-based selection) and `flyt scores` (every per-uid
//! score column the inputs allow, for M-FLYT).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use flyt::methods::{
    BasicFeatures, BasicFilter, ClassNameMatcher, ImageClusters, KMeans, KMeansConfig, NegClipLossConfig,
    NormSimTarget, clip_score, neg_clip_loss, norm_sim,
};
use flyt::sampling::topk;
use flyt::{Pool, PoolEmbeddings, Uid};

/// A filtering method.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Keep everything.
    NoFilter,
    /// DataComp's basic filter: English, > 2 words, > 5 characters, shorter side ≥ 200, aspect ≤ 3.
    Basic,
    /// Top `--fraction` (default 0.3) or `score ≥ --threshold` by CLIP score.
    ClipScore,
    /// English captions naming a downstream class (`--classnames`).
    TextBased,
    /// English captions (> 1 word, > 5 characters) whose image's nearest k-means centroid is one of those
    /// nearest to the downstream set's images (`--downstream`).
    ImageBased,
    /// image-based ∩ CLIP-score top `--fraction` (default 0.3): DataComp's best baseline.
    ImageBasedAndClipScore,
    /// Top `--fraction` / `≥ --threshold` by negCLIPLoss.
    NegClipLoss,
    /// Top `--fraction` / `≥ --threshold` by NormSim∞ to the downstream images.
    NormSimInf,
    /// Top `--fraction` / `≥ --threshold` by NormSim₂ to the downstream images.
    NormSim2,
}

/// Inputs shared by `flyt filter` and `flyt scores`.
#[derive(clap::Args, Debug)]
pub struct PoolArgs {
    /// Pool directory: DataComp metadata `<stem>.parquet` files (uid, text, original_width, original_height,
    /// ...) with `<stem>.npz` embeddings beside them, as DataComp ships them and `flyt embed` writes them.
    #[arg(long)]
    pub pool: PathBuf,
    /// Embedding prefix in the `.npz` files (`l14`, `b32`, `emb`, ...); default: l14, else b32, else the only pair.
    #[arg(long)]
    pub embeddings: Option<String>,
    /// Downstream image embeddings (image-based, NormSim): `.npy` (rows × dim) or `.npz` (its `<prefix>_img`,
    /// or `FILE.npz:KEY`). Repeatable: the sets are concatenated.
    #[arg(long)]
    pub downstream: Vec<String>,
    /// Downstream class names (text-based): `classnames.txt` files, one class per line, synonyms separated by
    /// commas. Repeatable.
    #[arg(long)]
    pub classnames: Vec<PathBuf>,
    /// k-means centroids for image-based (default: pool size / 256, at least 1, at most 100,000).
    #[arg(long)]
    pub clusters: Option<usize>,
    /// negCLIPLoss batch size B.
    #[arg(long, default_value_t = 32768)]
    pub ncl_batch: usize,
    /// negCLIPLoss repeats K.
    #[arg(long, default_value_t = 10)]
    pub ncl_repeats: usize,
    /// negCLIPLoss temperature τ (the teacher CLIP's; OpenAI CLIP: 0.01).
    #[arg(long, default_value_t = 0.01)]
    pub ncl_temperature: f64,
    /// Random seed (k-means, negCLIPLoss batches).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Device for the matrix work: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// Arguments of `flyt filter`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The filter.
    #[arg(long, value_enum)]
    pub method: Method,
    #[command(flatten)]
    pub inputs: PoolArgs,
    /// Keep the top fraction by score (score methods; exactly ⌊F·N⌋ uids).
    #[arg(long, conflicts_with = "threshold")]
    pub fraction: Option<f64>,
    /// Keep scores ≥ this (score methods).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Output DataComp subset file (.npy, sorted uids).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the score columns computed, per uid, as parquet.
    #[arg(long)]
    pub scores: Option<PathBuf>,
}

/// Arguments of `flyt scores`.
#[derive(clap::Args, Debug)]
pub struct ScoresArgs {
    #[command(flatten)]
    pub inputs: PoolArgs,
    /// Output parquet: `uid` plus one float column per method the inputs allow.
    #[arg(long)]
    pub out: PathBuf,
}

/// Downstream embeddings from `.npy` / `.npz` / `.npz:KEY` files, concatenated; (data, dim).
fn read_downstream(specs: &[String], prefix: Option<&str>) -> anyhow::Result<(Vec<f32>, usize)> {
    let (mut all, mut dim) = (Vec::new(), 0usize);
    for spec in specs {
        let (file, key) = match spec.rsplit_once(':') {
            Some((f, k)) if f.ends_with(".npz") => (PathBuf::from(f), Some(k.to_string())),
            _ => (PathBuf::from(spec), None),
        };
        let (data, rows, cols) = if file.extension().is_some_and(|e| e == "npz") {
            let key = match key {
                Some(k) => k,
                None => {
                    let keys: Vec<String> = flyt::read_npz(&file)?.into_keys().collect();
                    let want = prefix.map(|p| format!("{p}_img"));
                    match want.filter(|w| keys.contains(w)) {
                        Some(w) => w,
                        None => {
                            let imgs: Vec<&String> = keys.iter().filter(|k| k.ends_with("_img")).collect();
                            match imgs[..] {
                                [one] => one.clone(),
                                _ => bail!(
                                    "{}: say which array with FILE.npz:KEY (arrays: {})",
                                    file.display(),
                                    keys.join(", ")
                                ),
                            }
                        }
                    }
                }
            };
            flyt::read_npz_matrix(&file, &key)?
        } else {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let arr = flyt::parse_npy(&bytes, &file, "array")?;
            let [rows, cols] = arr.shape[..] else {
                bail!("{}: expected a 2-D array of embeddings, shape is {:?}", file.display(), arr.shape)
            };
            let data = arr.to_f32().with_context(|| format!("{}: not a float array", file.display()))?;
            (data, rows, cols)
        };
        if dim != 0 && cols != dim {
            bail!("{}: {cols}-d embeddings, earlier downstream files are {dim}-d", file.display());
        }
        dim = cols;
        if rows == 0 {
            bail!("{}: no rows", file.display());
        }
        all.extend(data);
    }
    Ok((all, dim))
}

/// Everything loaded once for the methods.
struct Loaded {
    pool: Pool,
    uids: Vec<Uid>,
    dev: tch::Device,
}

fn load(a: &PoolArgs, need_embeddings: bool) -> anyhow::Result<Loaded> {
    let which = match (&a.embeddings, need_embeddings) {
        (_, false) => PoolEmbeddings::None,
        (Some(p), true) => PoolEmbeddings::Prefix(p.clone()),
        (None, true) => PoolEmbeddings::Auto,
    };
    let pool = flyt::read_pool(&a.pool, &which)?;
    for (file, row, why) in pool.rejected.iter().take(10) {
        eprintln!("flyt: {} row {row}: {why} (left out)", file.display());
    }
    if pool.rejected.len() > 10 {
        eprintln!("flyt: ... {} rows left out in all", pool.rejected.len());
    }
    let uids = pool.rows.iter().map(|r| r.uid).collect();
    Ok(Loaded { pool, uids, dev: super::embed::parse_device(&a.device)? })
}

fn mask(v: impl Iterator<Item = bool>) -> Vec<f32> {
    v.map(|b| if b { 1.0 } else { 0.0 }).collect()
}

fn basic_features(pool: &Pool) -> Vec<BasicFeatures> {
    let rows: Vec<(Option<&str>, flyt::methods::ImageSize)> = pool
        .rows
        .iter()
        .map(|r| {
            let size = match (r.original_width, r.original_height) {
                (Some(w), Some(h)) if w >= 0 && h >= 0 => Some((w as u64, h as u64)),
                _ => None,
            };
            (r.text.as_deref(), size)
        })
        .collect();
    BasicFeatures::batch(&rows)
}

fn classnames(a: &PoolArgs) -> anyhow::Result<ClassNameMatcher> {
    let mut lines = Vec::new();
    for f in &a.classnames {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        lines.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from));
    }
    if lines.is_empty() {
        bail!("text-based needs downstream class names: pass --classnames classnames.txt");
    }
    Ok(ClassNameMatcher::new(&lines))
}

fn image_clusters(a: &PoolArgs, l: &Loaded) -> anyhow::Result<ImageClusters> {
    let (down, dim) = downstream(a, l)?;
    let n = l.uids.len();
    let k = a.clusters.unwrap_or((n / 256).clamp(1, 100_000)).min(n.max(1));
    let cfg = KMeansConfig { k, seed: a.seed, threads: a.threads, ..Default::default() };
    let km = KMeans::fit(&l.pool.image, dim, &cfg)?;
    Ok(ImageClusters::new(km, &down, a.threads)?)
}

fn downstream(a: &PoolArgs, l: &Loaded) -> anyhow::Result<(Vec<f32>, usize)> {
    if a.downstream.is_empty() {
        bail!("this method needs the downstream set's image embeddings: pass --downstream FILE.npy|FILE.npz");
    }
    let (down, dim) = read_downstream(&a.downstream, l.pool.prefix.as_deref())?;
    if dim != l.pool.dim {
        bail!("downstream embeddings are {dim}-d but the pool's are {}-d (use the same CLIP model)", l.pool.dim);
    }
    Ok((down, dim))
}

fn ncl(a: &PoolArgs, l: &Loaded) -> anyhow::Result<Vec<f32>> {
    let cfg = NegClipLossConfig {
        batch_size: a.ncl_batch,
        repeats: a.ncl_repeats,
        temperature: a.ncl_temperature,
        seed: a.seed,
    };
    Ok(neg_clip_loss(&l.uids, &l.pool.image, &l.pool.text, l.pool.dim, &cfg, l.dev)?)
}

fn norm_sims(a: &PoolArgs, l: &Loaded) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
    let (down, dim) = downstream(a, l)?;
    let target = NormSimTarget::new(&down, dim, l.dev)?;
    Ok(norm_sim(&l.pool.image, dim, &target, 8192)?)
}

fn write_columns(path: &Path, uids: &[Uid], cols: &BTreeMap<String, Vec<f32>>) -> anyhow::Result<()> {
    let ids: Vec<(Uid, String)> = uids.iter().map(|u| (*u, String::new())).collect();
    let cols: Vec<(&str, &[f32])> = cols.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    flyt::write_score_table(path, &ids, &[], &cols)?;
    Ok(())
}

/// Keeps rows by fraction (exactly ⌊F·N⌋, ties by uid) or threshold.
fn select(uids: &[Uid], score: &[f32], fraction: Option<f64>, threshold: Option<f64>) -> anyhow::Result<Vec<bool>> {
    if let Some(t) = threshold {
        return Ok(score.iter().map(|&s| s as f64 >= t).collect());
    }
    let pairs: Vec<(Uid, f64)> = uids.iter().zip(score).map(|(&u, &s)| (u, s as f64)).collect();
    Ok(topk(&pairs, fraction.unwrap_or(0.3))?.into_iter().map(|c| c > 0).collect())
}

/// Runs `flyt filter`.
pub fn run(a: Args) -> anyhow::Result<()> {
    use Method::*;
    let start = Instant::now();
    let scored = !matches!(a.method, NoFilter | Basic | TextBased | ImageBased);
    if !scored && (a.fraction.is_some() || a.threshold.is_some()) {
        bail!("--fraction/--threshold apply to score methods; {:?} is a yes/no filter", a.method);
    }
    if let Some(f) = a.fraction
        && !(0.0..=1.0).contains(&f)
    {
        bail!("--fraction must be in [0, 1], got {f}");
    }
    let need_emb = !matches!(a.method, NoFilter | Basic | TextBased);
    let l = load(&a.inputs, need_emb)?;
    let n = l.uids.len();
    let mut cols: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let clip = || clip_score(&l.pool.image, &l.pool.text, l.pool.dim);
    let keep: Vec<bool> = match a.method {
        NoFilter => vec![true; n],
        Basic => {
            let f = BasicFilter::default();
            let feats = basic_features(&l.pool);
            let keep: Vec<bool> = feats.iter().map(|x| f.keeps(x)).collect();
            cols.insert("basic".into(), mask(keep.iter().copied()));
            keep
        }
        TextBased => {
            let m = classnames(&a.inputs)?;
            let counts: Vec<u32> =
                l.pool.rows.iter().map(|r| r.text.as_deref().map(|t| m.count(t)).unwrap_or(0)).collect();
            let feats = basic_features(&l.pool);
            cols.insert("text_based".into(), counts.iter().map(|&c| c as f32).collect());
            counts.iter().zip(&feats).map(|(&c, f)| c > 0 && f.english).collect()
        }
        ImageBased | ImageBasedAndClipScore => {
            let ic = image_clusters(&a.inputs, &l)?;
            let (inside, sim) = ic.score(&l.pool.image, a.inputs.threads);
            let cap = BasicFilter::caption_only();
            let feats = basic_features(&l.pool);
            let mut keep: Vec<bool> = inside.iter().zip(&feats).map(|(&i, f)| i && cap.keeps(f)).collect();
            cols.insert("image_based".into(), mask(inside.iter().copied()));
            cols.insert("image_based_sim".into(), sim);
            if a.method == ImageBasedAndClipScore {
                let c = clip()?;
                let top = select(&l.uids, &c, a.fraction, a.threshold)?;
                keep.iter_mut().zip(top).for_each(|(k, t)| *k &= t);
                cols.insert("clip_score".into(), c);
            }
            keep
        }
        ClipScore => {
            let c = clip()?;
            let keep = select(&l.uids, &c, a.fraction, a.threshold)?;
            cols.insert("clip_score".into(), c);
            keep
        }
        NegClipLoss => {
            let c = ncl(&a.inputs, &l)?;
            let keep = select(&l.uids, &c, a.fraction, a.threshold)?;
            cols.insert("neg_clip_loss".into(), c);
            keep
        }
        NormSimInf | NormSim2 => {
            let (p2, pinf) = norm_sims(&a.inputs, &l)?;
            let s = if a.method == NormSim2 { &p2 } else { &pinf };
            let keep = select(&l.uids, s, a.fraction, a.threshold)?;
            cols.insert("norm_sim_2".into(), p2);
            cols.insert("norm_sim_inf".into(), pinf);
            keep
        }
    };
    let mut kept: Vec<Uid> = l.uids.iter().zip(&keep).filter(|(_, k)| **k).map(|(u, _)| *u).collect();
    kept.sort_unstable();
    flyt::write_subset(&a.out, &kept)?;
    if let Some(p) = &a.scores {
        write_columns(p, &l.uids, &cols)?;
    }
    println!(
        "{:?}: kept {} of {n} uids ({:.1} %), {} rows left out; wrote {} in {:.2} s",
        a.method,
        kept.len(),
        100.0 * kept.len() as f64 / n.max(1) as f64,
        l.pool.rejected.len(),
        a.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs `flyt scores`: every column the inputs allow.
pub fn run_scores(a: ScoresArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let probe = flyt::read_pool(&a.inputs.pool, &PoolEmbeddings::None)?;
    let has_npz = probe.files.iter().all(|f| f.with_extension("npz").exists());
    let l = load(&a.inputs, has_npz)?;
    let mut cols: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let feats = basic_features(&l.pool);
    cols.insert("caption_words".into(), feats.iter().map(|f| f.words as f32).collect());
    cols.insert("caption_chars".into(), feats.iter().map(|f| f.chars as f32).collect());
    cols.insert("english".into(), mask(feats.iter().map(|f| f.english)));
    cols.insert("image_min_side".into(), feats.iter().map(|f| f.min_side() as f32).collect());
    cols.insert("image_aspect".into(), feats.iter().map(|f| f.aspect().min(f32::MAX as f64) as f32).collect());
    let basic = BasicFilter::default();
    cols.insert("basic".into(), mask(feats.iter().map(|f| basic.keeps(f))));
    if !a.inputs.classnames.is_empty() {
        let m = classnames(&a.inputs)?;
        cols.insert(
            "text_based".into(),
            l.pool.rows.iter().map(|r| r.text.as_deref().map(|t| m.count(t) as f32).unwrap_or(0.0)).collect(),
        );
    }
    if has_npz {
        cols.insert("clip_score".into(), clip_score(&l.pool.image, &l.pool.text, l.pool.dim)?);
        cols.insert("neg_clip_loss".into(), ncl(&a.inputs, &l)?);
        if !a.inputs.downstream.is_empty() {
            let (p2, pinf) = norm_sims(&a.inputs, &l)?;
            cols.insert("norm_sim_2".into(), p2);
            cols.insert("norm_sim_inf".into(), pinf);
            let ic = image_clusters(&a.inputs, &l)?;
            let (inside, sim) = ic.score(&l.pool.image, a.inputs.threads);
            cols.insert("image_based".into(), mask(inside.into_iter()));
            cols.insert("image_based_sim".into(), sim);
        }
    } else {
        eprintln!("flyt: no .npz beside every parquet: embedding-based scores skipped");
    }
    write_columns(&a.out, &l.uids, &cols)?;
    println!(
        "scored {} uids with {} columns ({}); wrote {} in {:.2} s",
        l.uids.len(),
        cols.len(),
        cols.keys().cloned().collect::<Vec<_>>().join(", "),
        a.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
