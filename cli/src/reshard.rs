//! `flyt reshard`.

use std::path::PathBuf;

use flyt::SubsetCounts;
use serde_json::json;

use flyt_pipelines::{expand_shards, progress_bar};

/// Arguments of `flyt reshard`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The DataComp subset file (.npy of uids; repeats mean copies). Required unless `--stamp-uids`.
    #[arg(long, required_unless_present = "stamp_uids", conflicts_with = "stamp_uids")]
    pub subset: Option<PathBuf>,
    /// Output directory for `{:08d}.tar` shards and `meta.json` (with `--stamp-uids`: for `<name>.tar`, one per
    /// input shard; it may be the input directory, whose shards are then replaced in place).
    #[arg(long)]
    pub out: PathBuf,
    /// Instead of resharding a subset: write every input shard again under its own name, each accepted sample
    /// under its own key, with its uid in `.json` (derived uids are added; a `.json` that has one is kept byte
    /// for byte), so DataComp's tools see the uids flyt gives. Rejected samples are counted, not written.
    #[arg(long)]
    pub stamp_uids: bool,
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
    let shards = expand_shards(&a.shards)?;
    if shards.is_empty() {
        anyhow::bail!("no shards (.tar, .tar.gz, .tgz) in {}", paths(&a.shards));
    }
    if a.stamp_uids {
        return stamp(&a, &shards);
    }
    let subset_path = a.subset.clone().expect("clap requires --subset without --stamp-uids");
    let subset = SubsetCounts::read(&subset_path)?;
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
    found_any(&report, &subset_path, &a.shards)
}

/// A subset none of whose uids is in the input is an error (the output has no samples): usually the wrong
/// shards, or shards whose uids were derived by another tool.
pub(crate) fn found_any(
    report: &flyt::ReshardReport,
    subset: &std::path::Path,
    shards: &[PathBuf],
) -> anyhow::Result<()> {
    if report.selected_uids > 0 && report.found_uids == 0 {
        anyhow::bail!(
            "none of the {} uids of {} is in the {} input samples of {}: the output has no samples",
            report.selected_uids,
            subset.display(),
            report.input.accepted,
            paths(shards)
        );
    }
    Ok(())
}

fn paths(p: &[PathBuf]) -> String {
    p.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

fn stamp(a: &Args, shards: &[PathBuf]) -> anyhow::Result<()> {
    let pb = progress_bar(shards.len() as u64, "stamp uids");
    let report = flyt::stamp_uids(shards, &a.out, a.overwrite, |s| {
        pb.set_message(s.input.display().to_string());
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_value(&report)?);
    } else {
        println!(
            "wrote {} shards into {}: {} samples, {} with a derived uid now in .json; {} rejected input samples not written",
            report.shards.len(),
            a.out.display(),
            report.samples,
            report.stamped,
            report.rejected
        );
        for s in report.shards.iter().filter(|s| s.input_stats.rejected > 0) {
            println!(
                "  {}: {} rejected {:?}",
                s.input.display(),
                s.input_stats.rejected,
                s.input_stats.rejected_by_reason
            );
        }
    }
    Ok(())
}
