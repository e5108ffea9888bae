//! `flyt reshard`.

use std::path::PathBuf;

use flyt::SubsetCounts;
use serde_json::json;

use flyt_pipelines::{expand_shards, progress_bar};

/// Arguments of `flyt reshard`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The DataComp subset file (.npy of uids; repeats mean copies).
    #[arg(long)]
    pub subset: PathBuf,
    /// Output directory for `{:08d}.tar` shards and `meta.json`.
    #[arg(long)]
    pub out: PathBuf,
    /// Samples per output shard.
    #[arg(long, default_value_t = 10_000)]
    pub shard_size: u64,
    /// Replace the shards of a non-empty output directory.
    #[arg(long)]
    pub overwrite: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Input shards, or directories of them.
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
}

/// Runs `flyt reshard`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let subset = SubsetCounts::read(&a.subset)?;
    let shards = expand_shards(&a.shards)?;
    let pb = progress_bar(shards.len() as u64, "reshard");
    let report = flyt::reshard(&subset, &shards, &a.out, a.shard_size, a.overwrite, |p, _| {
        pb.set_message(p.display().to_string());
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["not_found"] = json!(report.not_found.iter().map(|u| u.to_string()).collect::<Vec<_>>());
        println!("{v}");
        return Ok(());
    }
    println!(
        "selected {} uids ({} copies); found {}; wrote {} samples into {} shards in {}",
        report.selected_uids,
        report.selected_copies,
        report.found_uids,
        report.written_samples,
        report.output_shards,
        a.out.display()
    );
    println!(
        "input: {} samples, {} accepted, {} rejected",
        report.input.samples, report.input.accepted, report.input.rejected
    );
    if !report.not_found.is_empty() {
        println!("{} selected uids were not found in the input shards:", report.not_found.len());
        for u in report.not_found.iter().take(20) {
            println!("  {u}");
        }
        if report.not_found.len() > 20 {
            println!("  … and {} more (use --json for all)", report.not_found.len() - 20);
        }
    }
    Ok(())
}
