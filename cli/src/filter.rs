//! `flyt filter` (DataComp's baseline filters and score-based selection), `flyt scores` (every per-uid score
//! column the inputs allow, for M-FLYT) and `flyt clusters` (the image-based method's centroids).

use std::path::PathBuf;

use flyt::DeviceSpec;
use flyt_pipelines::{
    ClustersConfig, FilterConfig, FilterMethod, NegClipLossParams, PoolInputs, ScoresConfig, clusters, filter, scores,
};

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
    /// SemDeDup (Abbas et al. 2023): within each k-means cluster of the image embeddings (`--centroids`, or
    /// fitted here with `--clusters`), drop a sample whose cosine to one farther from the centroid is
    /// ≥ 1 − `--epsilon`.
    Semdedup,
}

/// Inputs shared by `flyt filter` and `flyt scores`.
#[derive(clap::Args, Debug)]
pub struct PoolArgs {
    /// Pool directory: DataComp metadata `<stem>.parquet` files (uid, text, original_width, original_height,
    /// ...) with `<stem>.npz` embeddings beside them, as DataComp ships them and `flyt embed` writes them. Each
    /// file is one shard of the curation graph: negCLIPLoss forms its batches within it.
    #[arg(long)]
    pub pool: PathBuf,
    /// Embedding prefix in the `.npz` files (`l14`, `b32`, `emb`, ...); default: l14, else b32, else the only pair.
    #[arg(long)]
    pub embeddings: Option<String>,
    /// Downstream image embeddings (image-based, NormSim): `.npy` (rows × dim) or `.npz` (its `<prefix>_img`,
    /// its only `*_img`, its `image`, or `FILE.npz:KEY`). Repeatable: the sets are concatenated.
    #[arg(long)]
    pub downstream: Vec<String>,
    /// Downstream class names (text-based): `classnames.txt` files, one class per line, synonyms separated by
    /// commas. Repeatable.
    #[arg(long)]
    pub classnames: Vec<PathBuf>,
    /// Fixed k-means centroids for image-based (`flyt clusters`); default: fitted here over the whole pool.
    #[arg(long)]
    pub centroids: Option<PathBuf>,
    /// k-means centroids to fit for image-based without --centroids (default: pool size / 256, at least 1, at
    /// most 100,000).
    #[arg(long)]
    pub clusters: Option<usize>,
    /// negCLIPLoss batch size B (batches are formed within each pool file).
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
    #[arg(long, default_value = "auto", value_parser = crate::device)]
    pub device: DeviceSpec,
}

impl PoolArgs {
    fn inputs(&self) -> PoolInputs {
        PoolInputs {
            pool: self.pool.clone(),
            embeddings: self.embeddings.clone(),
            downstream: self.downstream.clone(),
            classnames: self.classnames.clone(),
            centroids: self.centroids.clone(),
            clusters: self.clusters,
            neg_clip_loss: NegClipLossParams {
                batch: self.ncl_batch,
                repeats: self.ncl_repeats,
                temperature: self.ncl_temperature,
                seed: self.seed,
            },
            seed: self.seed,
            threads: self.threads,
            device: self.device,
        }
    }
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
    /// SemDeDup's ε: a sample goes when its cosine to an earlier-ranked member of its cluster is ≥ 1 − ε
    /// (default 0.05).
    #[arg(long)]
    pub epsilon: Option<f32>,
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

/// Arguments of `flyt clusters`.
#[derive(clap::Args, Debug)]
pub struct ClustersArgs {
    /// Pool directory (DataComp layout: `<stem>.parquet` + `<stem>.npz`), e.g. a curation's `OUT/embeddings`.
    #[arg(long)]
    pub pool: PathBuf,
    /// Embedding prefix in the `.npz` files; default: l14, else b32, else the only pair.
    #[arg(long)]
    pub embeddings: Option<String>,
    /// Centroids (default: rows / 256, at least 1, at most 100,000).
    #[arg(long)]
    pub k: Option<usize>,
    /// Fit on the first N rows in pool order (default: all).
    #[arg(long)]
    pub sample: Option<usize>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Output `.npy` (k × dim, float32).
    #[arg(long)]
    pub out: PathBuf,
}

fn print_rejected(rejected: &[flyt::Rejected]) {
    for r in rejected.iter().take(10) {
        eprintln!("flyt: {} {}: {} (left out)", r.shard, r.key, r.detail);
    }
    if rejected.len() > 10 {
        eprintln!("flyt: ... {} rows left out in all", rejected.len());
    }
}

/// Runs `flyt filter`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let method = match a.method {
        Method::NoFilter => FilterMethod::NoFilter,
        Method::Basic => FilterMethod::Basic,
        Method::ClipScore => FilterMethod::ClipScore,
        Method::TextBased => FilterMethod::TextBased,
        Method::ImageBased => FilterMethod::ImageBased,
        Method::ImageBasedAndClipScore => FilterMethod::ImageBasedAndClipScore,
        Method::NegClipLoss => FilterMethod::NegClipLoss,
        Method::NormSimInf => FilterMethod::NormSimInf,
        Method::NormSim2 => FilterMethod::NormSim2,
        Method::Semdedup => FilterMethod::SemDedup,
    };
    let r = filter(&FilterConfig {
        method,
        inputs: a.inputs.inputs(),
        fraction: a.fraction,
        threshold: a.threshold,
        out: a.out.clone(),
        scores: a.scores,
        epsilon: a.epsilon,
    })?;
    print_rejected(&r.rejected);
    println!(
        "{:?}: kept {} of {} uids ({:.1} %), {} rows left out; wrote {} in {:.2} s",
        a.method,
        r.kept,
        r.total,
        100.0 * r.kept as f64 / r.total.max(1) as f64,
        r.rejected.len(),
        a.out.display(),
        r.seconds
    );
    Ok(())
}

/// Runs `flyt scores`.
pub fn run_scores(a: ScoresArgs) -> anyhow::Result<()> {
    let r = scores(&ScoresConfig { inputs: a.inputs.inputs(), out: a.out.clone() })?;
    print_rejected(&r.rejected);
    if r.no_embeddings {
        eprintln!("flyt: no .npz beside every parquet: embedding-based scores skipped");
    }
    println!(
        "scored {} uids with {} columns ({}); wrote {} in {:.2} s",
        r.uids,
        r.columns.len(),
        r.columns.join(", "),
        a.out.display(),
        r.seconds
    );
    Ok(())
}

/// Runs `flyt clusters`.
pub fn run_clusters(a: ClustersArgs) -> anyhow::Result<()> {
    let r = clusters(&ClustersConfig {
        pool: a.pool,
        embeddings: a.embeddings,
        k: a.k,
        sample: a.sample,
        seed: a.seed,
        threads: a.threads,
        out: a.out.clone(),
    })?;
    println!(
        "{} centroids ({}-d) fitted on {} rows in {:.2} s; wrote {}",
        r.k,
        r.dim,
        r.rows,
        r.seconds,
        a.out.display()
    );
    Ok(())
}
