//! `flyt sample`: the training multiset from scores — Soft Cap Sampling (exact, or the paper's rounds), Hard
//! Cap Sampling or top-k — as a DataComp subset file.

use std::path::PathBuf;
use std::time::Instant;

use flyt::Uid;
use flyt::sampling::{hcs, scs, scs_rounds, topk};

use crate::{Error, Result};

/// A sampling method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SampleMethod {
    /// Soft Cap Sampling with a penalty after every draw, exact and order-independent (production).
    #[default]
    Scs,
    /// Soft Cap Sampling as the paper's loop: rounds of `round` distinct draws (reference).
    ScsRounds,
    /// Hard Cap Sampling: softmax draws in batches of `round`, at most `cap` copies each.
    Hcs,
    /// The top `fraction` of the pool by score, once each.
    Topk,
}

/// What to sample.
#[derive(Clone, Debug)]
pub struct SampleConfig {
    /// Scores: a parquet file with `uid` (32 hex characters) and a score column, or a subset-style uid `.npy`
    /// (with `values`).
    pub scores: PathBuf,
    /// The score column of a parquet score file.
    pub score_column: String,
    /// A 1-D float `.npy` of scores, row-aligned with a uid `.npy` given as `scores`.
    pub values: Option<PathBuf>,
    /// The method.
    pub method: SampleMethod,
    /// Repetition penalty α (scs, scs-rounds); infinite samples without replacement.
    pub alpha: f64,
    /// Number of draws T (default: the pool size).
    pub target: Option<u64>,
    /// T as a multiple of the pool size.
    pub target_ratio: Option<f64>,
    /// Round size b (scs-rounds) or batch size (hcs).
    pub round: usize,
    /// Copies cap (hcs).
    pub cap: u32,
    /// Fraction kept (topk).
    pub fraction: f64,
    /// The seed.
    pub seed: u64,
    /// Output DataComp subset file (each uid repeated count times, sorted).
    pub out: PathBuf,
    /// Also write (uid, count) as parquet.
    pub counts: Option<PathBuf>,
}

/// What `sample` drew.
#[derive(Clone, Debug)]
pub struct SampleReport {
    /// Examples in the pool.
    pub pool: usize,
    /// T.
    pub target: u64,
    /// Draws made (Σ counts).
    pub drawn: u64,
    /// Distinct uids drawn.
    pub unique: u64,
    /// The largest count.
    pub max_count: u32,
    /// Uids per count range 1, 2, 3–4, 5–8, … (from, to, uids).
    pub histogram: Vec<(u32, u32, u64)>,
    /// Seconds reading the scores.
    pub read_seconds: f64,
    /// Seconds sampling.
    pub sample_seconds: f64,
}

/// Reads the scores, samples, writes the subset (and the counts).
pub fn sample(c: &SampleConfig) -> Result<SampleReport> {
    let start = Instant::now();
    let is_npy = c.scores.extension().is_some_and(|e| e == "npy");
    let pool: Vec<(Uid, f64)> = match (&c.values, is_npy) {
        (Some(values), true) => flyt::read_scores_npy(&c.scores, values)?,
        (None, true) => {
            return Err(Error::Config(format!(
                "{}: a uid .npy needs its scores: pass --values SCORES.npy",
                c.scores.display()
            )));
        }
        (Some(_), false) => return Err(Error::Config("--values goes with a uid .npy given as --scores".into())),
        (None, false) => flyt::read_scores_parquet(&c.scores, &c.score_column)?,
    };
    let n = pool.len();
    let target = match (c.target, c.target_ratio) {
        (Some(t), _) => t,
        (None, Some(r)) if r >= 0.0 && r.is_finite() => (r * n as f64).floor() as u64,
        (None, Some(r)) => return Err(Error::Config(format!("--target-ratio must be a finite number ≥ 0, got {r}"))),
        (None, None) => n as u64,
    };
    let read_seconds = start.elapsed().as_secs_f64();
    let counts = match c.method {
        SampleMethod::Scs => scs(&pool, c.alpha, target, c.seed)?,
        SampleMethod::ScsRounds => scs_rounds(&pool, c.alpha, c.round, target, c.seed)?,
        SampleMethod::Hcs => hcs(&pool, c.cap, c.round, target, c.seed)?,
        SampleMethod::Topk => topk(&pool, c.fraction)?,
    };
    let sample_seconds = start.elapsed().as_secs_f64() - read_seconds;
    let mut pairs: Vec<(Uid, u32)> =
        pool.iter().zip(&counts).filter(|(_, c)| **c > 0).map(|(p, &c)| (p.0, c)).collect();
    pairs.sort_unstable();
    let uids: Vec<Uid> = pairs.iter().flat_map(|&(u, c)| std::iter::repeat_n(u, c as usize)).collect();
    flyt::write_subset(&c.out, &uids)?;
    if let Some(path) = &c.counts {
        flyt::write_counts_parquet(path, &pairs)?;
    }
    Ok(SampleReport {
        pool: n,
        target,
        drawn: uids.len() as u64,
        unique: pairs.len() as u64,
        max_count: pairs.iter().map(|p| p.1).max().unwrap_or(0),
        histogram: histogram(&pairs),
        read_seconds,
        sample_seconds,
    })
}

/// Counts of uids per count range 1, 2, 3–4, 5–8, … (powers of two).
fn histogram(pairs: &[(Uid, u32)]) -> Vec<(u32, u32, u64)> {
    let max = pairs.iter().map(|p| p.1).max().unwrap_or(0);
    let mut out = Vec::new();
    let (mut lo, mut hi) = (1u32, 1u32);
    while lo <= max {
        let k = pairs.iter().filter(|p| p.1 >= lo && p.1 <= hi).count() as u64;
        out.push((lo, hi, k));
        lo = hi + 1;
        hi = hi.saturating_mul(2);
    }
    out
}
