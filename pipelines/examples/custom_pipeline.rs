//! A custom curation pipeline built from flyt's operators: decode WebDataset shards, score each sample with
//! DataComp's basic-filter features, turn them into one score of our own (longer English captions score
//! higher; the rest are left out), keep one row per uid, and sample with Soft Cap Sampling. Size as arguments: `cargo run --release -p flyt-pipelines --example custom_pipeline -- SHARDS
//! SAMPLES_PER_SHARD WORKERS`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use differential_dataflow::AsCollection;
use flyt::Uid;
use flyt::sampling::Target;
use flyt_operators::{DecodeShards, DedupUids, Mix, MixScores, PoolRow, ScoreBasic, SoftCapSample};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{Inspect, ToStream};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (shards, per_shard, workers) =
        (args.first().copied().unwrap_or(4), args.get(1).copied().unwrap_or(500), args.get(2).copied().unwrap_or(2));
    let dir = tempfile::tempdir()?;
    let paths: Vec<PathBuf> =
        flyt::synth::SynthPool { shards, samples_per_shard: per_shard, dirt: 0.05, ..Default::default() }
            .write(dir.path())?;

    let counts: Arc<Mutex<HashMap<Uid, isize>>> = Default::default();
    let sink = counts.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        let (paths, sink) = (paths.clone(), sink.clone());
        let index = worker.index();
        worker.dataflow::<u64, _, _>(|scope| {
            // Worker 0 names the shards; DecodeShards spreads them over workers (pixels never move).
            let mine = if index == 0 { paths } else { Vec::new() };
            let (samples, _events) = mine.to_stream(scope).decode_shards(flyt::ReaderConfig::default(), 1024);
            // The basic-filter features, one batch per container.
            let batches = samples.unary::<CapacityContainerBuilder<Vec<Vec<flyt::Sample>>>, _, _, _>(
                Pipeline,
                "Batch",
                |_, _| move |input, output| input.for_each(|cap, data| output.session(&cap).give(std::mem::take(data))),
            );
            // Our own score: ln(1 + caption words) for English captions of two words or more.
            let rows =
                batches.score_basic().unary::<CapacityContainerBuilder<Vec<((Uid, PoolRow), u64, isize)>>, _, _, _>(
                    Pipeline,
                    "OurScore",
                    |_, _| {
                        move |input, output| {
                            input.for_each(|cap, data| {
                                let t = *cap.least().expect("a timestamped batch");
                                let mut words: HashMap<Uid, f32> = HashMap::new();
                                let mut keep: HashMap<Uid, f32> = HashMap::new();
                                for col in data.drain(..) {
                                    let target = match col.name.as_str() {
                                        "caption_words" => &mut words,
                                        "english" => &mut keep,
                                        _ => continue,
                                    };
                                    target.extend(col.uids.into_iter().zip(col.values));
                                }
                                let mut session = output.session(&cap);
                                for (uid, w) in words {
                                    if w >= 2.0 && keep.get(&uid).is_some_and(|k| *k > 0.5) {
                                        let row = PoolRow {
                                            shard: String::new(),
                                            values: vec![(1.0 + w).ln().to_bits()],
                                            ..Default::default()
                                        };
                                        session.give(((uid, row), t, 1));
                                    }
                                }
                            });
                        }
                    },
                );
            rows.as_collection()
                .dedup_uids()
                .mix_scores(&Mix::Column(0), None)
                .soft_cap_sample(0.15, Target::Ratio(0.5), 7, Default::default())
                .inner
                .inspect(move |(uid, _, d)| *sink.lock().unwrap().entry(*uid).or_insert(0) += d);
        });
    })?;

    let counts = counts.lock().unwrap();
    let selected: Vec<Uid> = counts.iter().flat_map(|(u, c)| std::iter::repeat_n(*u, (*c).max(0) as usize)).collect();
    let out = dir.path().join("subset.npy");
    flyt::write_subset(&out, &selected)?;
    println!(
        "{} shards × {per_shard} samples on {workers} workers: {} uids selected, {} samples, max count {}",
        shards,
        counts.len(),
        selected.len(),
        counts.values().max().copied().unwrap_or(0)
    );
    Ok(())
}
