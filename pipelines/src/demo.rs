//! `flyt demo`: the embedded default run. For now: generate a small pool with realistic faults, ingest it,
//! print and write the stats, then select a subset and reshard it. Later stages (embedding, scoring, SCS)
//! join this run as they land.

use std::path::PathBuf;

use flyt::synth::{SynthImage, SynthPool};
use flyt::{Ingest, ReaderConfig, Record, ShardStats, SubsetCounts, Uid};
use serde_json::json;

use crate::cli::inspect_print_stats;
use crate::shards::{progress, show};

/// Arguments of `flyt demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Working directory for the demo's pool and outputs (its `pool/` and `resharded/` are replaced).
    #[arg(long, default_value = "flyt-demo")]
    pub out: PathBuf,
    /// Shards in the generated pool.
    #[arg(long, default_value_t = 4)]
    pub shards: usize,
    /// Samples per shard.
    #[arg(long, default_value_t = 250)]
    pub samples_per_shard: usize,
    /// Seed of the generated pool.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// Runs the demo.
pub fn run(a: Args) -> anyhow::Result<()> {
    let pool_dir = a.out.join("pool");
    for d in [&pool_dir, &a.out.join("resharded")] {
        if d.exists() {
            std::fs::remove_dir_all(d)?;
        }
    }
    println!("1. generating a pool of {} shards × {} samples in {}", a.shards, a.samples_per_shard, show(&pool_dir));
    let pool = SynthPool {
        shards: a.shards,
        samples_per_shard: a.samples_per_shard,
        image: SynthImage::Png(48),
        seed: a.seed,
        dirt: 0.05,
    };
    let mut shards = pool.write(&pool_dir)?;
    // A re-delivered shard that broke in transit: the first shard again, cut at 60 %.
    if let Some(first) = shards.first().cloned() {
        let bytes = std::fs::read(&first)?;
        let cut = pool_dir.join("00000099.tar");
        std::fs::write(&cut, &bytes[..bytes.len() * 3 / 5])?;
        shards.push(cut);
        println!("   plus 00000099.tar: a re-delivery of {} truncated at 60 %", show(&first));
    }

    println!("2. ingesting {} shards", shards.len());
    let mut ingest = Ingest::new(ReaderConfig::default());
    let mut total = ShardStats::default();
    let mut per_shard = Vec::new();
    let mut rejects = Vec::new();
    let mut cat_uids: Vec<Uid> = Vec::new();
    let pb = progress(shards.len() as u64, "ingest");
    for path in &shards {
        let stats = ingest.read_shard(path, |r| match r {
            Record::Sample(s) => {
                if s.caption.as_deref().is_some_and(|c| c.contains(" cat ") || c.contains(" dog ")) {
                    cat_uids.push(s.uid);
                }
            }
            Record::Rejected(r) => rejects.push(r),
        })?;
        total.add(&stats);
        per_shard.push((path.clone(), stats));
        pb.inc(1);
    }
    pb.finish_and_clear();
    for (p, s) in &per_shard {
        println!("   {}", show(p));
        inspect_print_stats(s, "     ");
    }
    println!("   total");
    inspect_print_stats(&total, "     ");
    println!(
        "   counts reconcile: {} (members {} = {} in accepted + {} in rejected samples)",
        total.reconciles(),
        total.members,
        total.accepted_members,
        total.rejected_members
    );
    let stats_path = a.out.join("stats.json");
    let stats_json = json!({
        "shards": per_shard.iter().map(|(p, s)| { let mut v = serde_json::to_value(s).unwrap_or_default(); v["path"] = json!(show(p)); v }).collect::<Vec<_>>(),
        "total": total,
    });
    flyt::write_atomic(&stats_path, serde_json::to_string_pretty(&stats_json)?.as_bytes())?;
    let rejects_path = a.out.join("rejects.jsonl");
    let lines: String = rejects.iter().map(|r| format!("{}\n", serde_json::to_string(r).unwrap_or_default())).collect();
    flyt::write_atomic(&rejects_path, lines.as_bytes())?;
    println!("   wrote {} and {} ({} rejects)", show(&stats_path), show(&rejects_path), rejects.len());

    println!("3. selecting the {} cat and dog pictures, twice each, and resharding them", cat_uids.len());
    let subset_path = a.out.join("subset.npy");
    let doubled: Vec<Uid> = cat_uids.iter().flat_map(|&u| [u, u]).collect();
    flyt::write_subset(&subset_path, &doubled)?;
    let subset = SubsetCounts::read(&subset_path)?;
    let out = a.out.join("resharded");
    let report = flyt::reshard(&subset, &shards, &out, 100, false, |_, _| {})?;
    println!(
        "   {}: {} uids → {} samples in {} shards under {} ({} not found)",
        show(&subset_path),
        report.selected_uids,
        report.written_samples,
        report.output_shards,
        show(&out),
        report.not_found.len()
    );
    if !total.reconciles() {
        anyhow::bail!("the counts do not reconcile");
    }
    Ok(())
}
