//! `flyt clusters`: fits the k-means centroids DataComp's image-based method assigns pool images to, once, so
//! that the curation graph assigns every streaming shard against the same fixed centroids (the result does not
//! depend on arrival order).

use std::path::PathBuf;
use std::time::Instant;

use flyt::methods::{KMeans, KMeansConfig};
use flyt::{NpyArray, NpyData, PoolEmbeddings};

use crate::{Error, Result};

/// What to fit.
#[derive(Clone, Debug, Default)]
pub struct ClustersConfig {
    /// A DataComp-layout pool directory (`<stem>.parquet` + `<stem>.npz`), e.g. a curation's `OUT/embeddings`.
    pub pool: PathBuf,
    /// The `.npz` prefix (default: l14, else b32, else the only pair).
    pub embeddings: Option<String>,
    /// Centroids (default: rows / 256, at least 1, at most 100,000).
    pub k: Option<usize>,
    /// Fit on the first N rows in pool order (default: all).
    pub sample: Option<usize>,
    /// The seed of k-means++ and of the iterations.
    pub seed: u64,
    /// Threads (0: all cores).
    pub threads: usize,
    /// Output `.npy`: `k × dim` float32.
    pub out: PathBuf,
}

/// What `clusters` fitted.
#[derive(Clone, Debug)]
pub struct ClustersReport {
    /// Centroids.
    pub k: usize,
    /// Their dimension.
    pub dim: usize,
    /// Rows fitted on.
    pub rows: usize,
    /// Seconds.
    pub seconds: f64,
}

/// The k DataComp's image-based baseline uses for `n` rows.
pub(crate) fn default_k(n: usize) -> usize {
    (n / 256).clamp(1, 100_000).min(n.max(1))
}

/// Fits the centroids over a pool's image embeddings (the first `sample` rows, if given).
pub(crate) fn fit(cfg: &ClustersConfig) -> Result<(KMeans, usize)> {
    let which = match &cfg.embeddings {
        Some(p) => PoolEmbeddings::Prefix(p.clone()),
        None => PoolEmbeddings::Auto,
    };
    let pool = flyt::read_pool(&cfg.pool, &which)?;
    let n = cfg.sample.map_or(pool.rows.len(), |s| s.min(pool.rows.len()));
    if n == 0 {
        return Err(Error::Config(format!("{}: no pool rows to fit centroids on", cfg.pool.display())));
    }
    let k = cfg.k.unwrap_or_else(|| default_k(n)).min(n);
    let km_cfg = KMeansConfig { k, seed: cfg.seed, threads: cfg.threads, ..Default::default() };
    Ok((KMeans::fit(&pool.image[..n * pool.dim], pool.dim, &km_cfg)?, n))
}

/// Fits and writes the centroids.
pub fn clusters(cfg: &ClustersConfig) -> Result<ClustersReport> {
    let start = Instant::now();
    let (km, rows) = fit(cfg)?;
    let arr = NpyArray { shape: vec![km.k(), km.dim()], data: NpyData::F32(km.centroids().to_vec()) };
    flyt::write_atomic(&cfg.out, &flyt::npy_bytes(&arr))?;
    Ok(ClustersReport { k: km.k(), dim: km.dim(), rows, seconds: start.elapsed().as_secs_f64() })
}
