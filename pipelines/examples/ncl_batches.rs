//! What forming negCLIPLoss's batches within each shard (as the curation graph must: a streaming shard's score
//! cannot wait for the whole pool) does to the scores, against the whole-pool batches of the batch computation:
//! the correlation of the two, their mean absolute difference, and how much of the top fraction they share.
//!
//! `cargo run --release -p flyt-pipelines --example ncl_batches -- POOL_DIR [B] [K] [FRACTION]` (a DataComp-layout
//! pool, e.g. a curation's `OUT/embeddings`; B, K as `flyt scores --ncl-batch/--ncl-repeats`, default 32768, 10;
//! the top fraction, default 0.3).

use std::collections::HashSet;
use std::path::PathBuf;

use flyt::methods::{NegClipLossConfig, neg_clip_loss};
use flyt::{PoolEmbeddings, Uid};
use flyt_pipelines::{NegClipLossParams, PoolInputs, ScoresConfig, scores};

fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    for (rank, i) in idx.into_iter().enumerate() {
        r[i] = rank as f64;
    }
    r
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

fn top(uids: &[Uid], v: &[f64], fraction: f64) -> HashSet<Uid> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(uids[a].cmp(&uids[b])));
    idx.into_iter().take((fraction * v.len() as f64) as usize).map(|i| uids[i]).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let pool = PathBuf::from(args.first().ok_or("give a pool directory")?);
    let b: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(32768);
    let k: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let fraction: f64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(0.3);
    // Whole-pool batches: the pool read at once, partitioned into random batches of B.
    let p = flyt::read_pool(&pool, &PoolEmbeddings::Auto)?;
    let uids: Vec<Uid> = p.rows.iter().map(|r| r.uid).collect();
    let cfg = NegClipLossConfig { batch_size: b, repeats: k, temperature: 0.01, seed: 0 };
    let whole = neg_clip_loss(&uids, &p.image, &p.text, p.dim, &cfg, tch::Device::Cpu)?;
    // Per-shard batches: `flyt scores`, the curation graph's negCLIPLoss over each pool file.
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("scores.parquet");
    let inputs = PoolInputs {
        pool: pool.clone(),
        neg_clip_loss: NegClipLossParams { batch: b, repeats: k, temperature: 0.01, seed: 0 },
        device: flyt::DeviceSpec::Cpu,
        ..Default::default()
    };
    scores(&ScoresConfig { inputs, out: out.clone() })?;
    let per_shard: std::collections::HashMap<Uid, f64> =
        flyt::read_scores_parquet(&out, "neg_clip_loss")?.into_iter().collect();
    let a: Vec<f64> = whole.iter().map(|&x| x as f64).collect();
    let s: Vec<f64> = uids.iter().map(|u| per_shard[u]).collect();
    let mad = a.iter().zip(&s).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64;
    let spread = {
        let m = a.iter().sum::<f64>() / a.len() as f64;
        (a.iter().map(|x| (x - m).powi(2)).sum::<f64>() / a.len() as f64).sqrt()
    };
    let (ta, ts) = (top(&uids, &a, fraction), top(&uids, &s, fraction));
    println!(
        "{} rows in {} files, B {b}, K {k}: Pearson {:.4}, Spearman {:.4}, mean |per-shard − whole-pool| {:.4} \
         (whole-pool std {:.4}); top {:.0} % shared: {:.1} %",
        uids.len(),
        p.files.len(),
        pearson(&a, &s),
        pearson(&ranks(&a), &ranks(&s)),
        mad,
        spread,
        100.0 * fraction,
        100.0 * ta.intersection(&ts).count() as f64 / ta.len().max(1) as f64
    );
    Ok(())
}
