//! `flyt sample`.

use std::path::PathBuf;

use flyt_pipelines::{SampleConfig, SampleMethod, sample};
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
    let r = sample(&SampleConfig {
        scores: a.scores,
        score_column: a.score_column,
        values: a.values,
        method: match a.method {
            Method::Scs => SampleMethod::Scs,
            Method::ScsRounds => SampleMethod::ScsRounds,
            Method::Hcs => SampleMethod::Hcs,
            Method::Topk => SampleMethod::Topk,
        },
        alpha: a.alpha,
        target: a.target,
        target_ratio: a.target_ratio,
        round: a.round,
        cap: a.cap,
        fraction: a.fraction,
        seed: a.seed,
        out: a.out.clone(),
        counts: a.counts,
    })?;
    if a.json {
        let hist: Vec<serde_json::Value> =
            r.histogram.iter().map(|(lo, hi, k)| json!({"from": lo, "to": hi, "uids": k})).collect();
        println!(
            "{}",
            json!({"pool": r.pool, "target": r.target, "drawn": r.drawn, "unique": r.unique, "max_count": r.max_count,
                   "histogram": hist, "method": format!("{:?}", a.method), "seconds": r.sample_seconds,
                   "out": a.out.display().to_string()})
        );
        return Ok(());
    }
    println!(
        "pool {}  T {}  drawn {}  unique {} ({:.1} % of the pool)  max count {}",
        r.pool,
        r.target,
        r.drawn,
        r.unique,
        100.0 * r.unique as f64 / r.pool.max(1) as f64,
        r.max_count
    );
    println!("count histogram (uids with a count in the range):");
    for (lo, hi, k) in &r.histogram {
        let range = if lo == hi { format!("{lo}") } else { format!("{lo}–{hi}") };
        println!("  {range:>9}: {k}");
    }
    println!("sampled in {:.2} s (read {:.2} s); wrote {}", r.sample_seconds, r.read_seconds, a.out.display());
    Ok(())
}
