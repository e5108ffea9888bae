//! The `flyt curate` pipeline called from Rust: configure it in code, run it on N worker threads, read the
//! result. Size as arguments: `cargo run --release -p flyt-pipelines --example curate_from_rust -- SHARDS ROWS WORKERS`.

use flyt_pipelines::CurateConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (shards, rows, workers) =
        (args.first().copied().unwrap_or(8), args.get(1).copied().unwrap_or(1000), args.get(2).copied().unwrap_or(2));
    let dir = tempfile::tempdir()?;
    // A pool with precomputed embeddings (DataComp sidecars), 5 % of rows repeating earlier uids.
    flyt::synth::SynthSidecars { shards, rows_per_shard: rows, dim: 64, duplicates: 0.05, ..Default::default() }
        .write(&dir.path().join("pool"))?;

    let mut config = CurateConfig::default();
    config.input.shards = vec![dir.path().join("pool")];
    config.output.dir = dir.path().join("out");
    config.sample.alpha = 0.15;
    config.sample.target_ratio = Some(0.5);
    config.sample.seed = 1;
    let summary = flyt_pipelines::curate(config, timely::Config::process(workers))?;

    let m = &summary.manifest;
    println!("{}", summary.line);
    println!(
        "subset: {} uids, {} samples (max count {}) from {} uids",
        m["subset"]["uids"], m["subset"]["samples"], m["subset"]["max_count"], m["pool"]["uids"]
    );
    let subset = flyt::SubsetCounts::read(dir.path().join("out/subset.npy"))?;
    assert_eq!(subset.total(), m["subset"]["samples"].as_u64().unwrap_or(0));
    Ok(())
}
