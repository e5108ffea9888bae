//! `flyt sample`.

use std::path::PathBuf;
use std::time::Instant;

use flyt::Uid;
use flyt::sampling::{hcs, scs, scs_rounds, topk};
use serde_json::json;

/// Sampling method.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Soft Cap Sampling with a penalty after every draw, exact and order-independent (production).
    Scs,
    /// Soft Cap Sampling as the paper's loop: rounds of `--round` distinct draws (reference).
    ScsRounds,
    /// Hard Cap Sampling: softmax draws in batches of `--round`, at most `--cap` copies each.
    Hcs,
    /// The top `--fraction` of the pool by score, once each.
    Topk,
}

/// Arguments of `flyt sample`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Scores: a parquet file with a `uid` column (32 hex characters) and a score column, or a subset-style
    /// uid `.npy` (then give the scores with `--values`).
    #[arg(long)]
    pub scores: PathBuf,
    /// The score column of a parquet score file.
    #[arg(long, default_value = "score")]
    pub score_column: String,
    /// A 1-D float `.npy` of scores, row-aligned with a uid `.npy` given as `--scores`.
    #[arg(long)]
    pub values: Option<PathBuf>,
    /// Sampling method.
    #[arg(long, value_enum, default_value_t = Method::Scs)]
    pub method: Method,
    /// Repetition penalty α (scs, scs-rounds); `inf` samples without replacement.
    #[arg(long, default_value_t = 0.15)]
    pub alpha: f64,
    /// Number of draws T (default: the pool size).
    #[arg(long, conflicts_with = "target_ratio")]
    pub target: Option<u64>,
    /// T as a multiple of the pool size.
    #[arg(long)]
    pub target_ratio: Option<f64>,
    /// Round size b (scs-rounds) or batch size (hcs).
    #[arg(long, default_value_t = 100_000)]
    pub round: usize,
    /// Copies cap (hcs).
    #[arg(long, default_value_t = 15)]
    pub cap: u32,
    /// Fraction kept (topk).
    #[arg(long, default_value_t = 0.2)]
    pub fraction: f64,
    /// Random seed.
    #[arg(long)]
    pub seed: u64,
    /// Output DataComp subset file (.npy; each uid repeated count times, sorted).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write (uid, count) as parquet.
    #[arg(long)]
    pub counts: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `flyt sample`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let is_npy = a.scores.extension().is_some_and(|e| e == "npy");
    let pool: Vec<(Uid, f64)> = match (&a.values, is_npy) {
        (Some(values), true) => flyt::read_scores_npy(&a.scores, values)?,
        (None, true) => anyhow::bail!("{}: a uid .npy needs its scores: pass --values SCORES.npy", a.scores.display()),
        (Some(_), false) => anyhow::bail!("--values goes with a uid .npy given as --scores"),
        (None, false) => flyt::read_scores_parquet(&a.scores, &a.score_column)?,
    };
    let n = pool.len();
    let target = match (a.target, a.target_ratio) {
        (Some(t), _) => t,
        (None, Some(r)) if r >= 0.0 && r.is_finite() => (r * n as f64).floor() as u64,
        (None, Some(r)) => anyhow::bail!("--target-ratio must be a finite number ≥ 0, got {r}"),
        (None, None) => n as u64,
    };
    let read_s = start.elapsed().as_secs_f64();
    let counts = match a.method {
        Method::Scs => scs(&pool, a.alpha, target, a.seed)?,
        Method::ScsRounds => scs_rounds(&pool, a.alpha, a.round, target, a.seed)?,
        Method::Hcs => hcs(&pool, a.cap, a.round, target, a.seed)?,
        Method::Topk => topk(&pool, a.fraction)?,
    };
    let sample_s = start.elapsed().as_secs_f64() - read_s;
    let mut pairs: Vec<(Uid, u32)> =
        pool.iter().zip(&counts).filter(|(_, c)| **c > 0).map(|(p, &c)| (p.0, c)).collect();
    pairs.sort_unstable();
    let uids: Vec<Uid> = pairs.iter().flat_map(|&(u, c)| std::iter::repeat_n(u, c as usize)).collect();
    flyt::write_subset(&a.out, &uids)?;
    if let Some(path) = &a.counts {
        flyt::write_counts_parquet(path, &pairs)?;
    }
    let drawn = uids.len() as u64;
    let unique = pairs.len() as u64;
    let max = pairs.iter().map(|p| p.1).max().unwrap_or(0);
    let buckets = histogram(&pairs);
    if a.json {
        let hist: Vec<serde_json::Value> =
            buckets.iter().map(|(lo, hi, k)| json!({"from": lo, "to": hi, "uids": k})).collect();
        println!(
            "{}",
            json!({"pool": n, "target": target, "drawn": drawn, "unique": unique, "max_count": max,
                   "histogram": hist, "method": format!("{:?}", a.method), "seconds": sample_s,
                   "out": a.out.display().to_string()})
        );
        return Ok(());
    }
    println!(
        "pool {n}  T {target}  drawn {drawn}  unique {unique} ({:.1} % of the pool)  max count {max}",
        100.0 * unique as f64 / n.max(1) as f64
    );
    println!("count histogram (uids with a count in the range):");
    for (lo, hi, k) in &buckets {
        let range = if lo == hi { format!("{lo}") } else { format!("{lo}–{hi}") };
        println!("  {range:>9}: {k}");
    }
    println!("sampled in {sample_s:.2} s (read {read_s:.2} s); wrote {}", a.out.display());
    Ok(())
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
