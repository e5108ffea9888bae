//! `flyt inspect`.

use std::path::PathBuf;

use flyt::ShardStats;
use flyt_pipelines::{InspectConfig, inspect};
use serde_json::json;

/// Arguments of `flyt inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print one JSON object: {"shards": [{"path", "members", "samples", "accepted", "rejected",
    /// "rejected_by_reason", "bytes"}...], "total": {...}}.
    #[arg(long)]
    pub json: bool,
    /// Also list every reject (key, reason, detail).
    #[arg(long)]
    pub rejects: bool,
    /// Accept samples without a caption (labelled sets such as downstream tasks).
    #[arg(long)]
    pub no_caption: bool,
    /// Largest member accepted, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_member_bytes: u64,
    /// Shard files (.tar, .tar.gz, .tgz) or directories of them.
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
}

fn stats_json(s: &ShardStats) -> serde_json::Value {
    json!({
        "members": s.members, "samples": s.samples, "accepted": s.accepted, "rejected": s.rejected,
        "rejected_by_reason": s.rejected_by_reason, "bytes": s.bytes,
    })
}

/// Runs `flyt inspect`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let r =
        inspect(&InspectConfig { shards: a.shards, no_caption: a.no_caption, max_member_bytes: a.max_member_bytes })?;
    let (per_shard, total) = (r.shards, r.total);
    if a.json {
        let shards: Vec<serde_json::Value> = per_shard
            .iter()
            .map(|(p, s, rj)| {
                let mut v = stats_json(s);
                v["path"] = json!(p.display().to_string());
                if a.rejects {
                    v["rejects"] = json!(rj
                        .iter()
                        .map(|r| json!({"key": r.key, "reason": r.reason.name(), "detail": r.detail, "members": r.members}))
                        .collect::<Vec<_>>());
                }
                v
            })
            .collect();
        println!("{}", json!({"shards": shards, "total": stats_json(&total)}));
        return Ok(());
    }
    for (p, s, rj) in &per_shard {
        println!("{}", p.display());
        print_stats(s, "  ");
        if a.rejects {
            for r in rj {
                println!("    reject {r}");
            }
        }
    }
    if per_shard.len() > 1 {
        println!("total ({} shards)", per_shard.len());
        print_stats(&total, "  ");
    }
    Ok(())
}

/// Prints stats as indented lines.
pub fn print_stats(s: &ShardStats, indent: &str) {
    println!(
        "{indent}members {}  samples {}  accepted {}  rejected {}  bytes {}",
        s.members, s.samples, s.accepted, s.rejected, s.bytes
    );
    for (reason, n) in &s.rejected_by_reason {
        println!("{indent}  {reason}: {n}");
    }
}
