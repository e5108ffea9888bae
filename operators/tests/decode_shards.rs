//! Oracle test: `DecodeShards` over 1, 2 and 3 workers, with the shards in any order and arriving over several
//! epochs, gives exactly what reading each shard alone gives.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use flyt::{ReaderConfig, Record, ShardReader, ShardStats};
use flyt_operators::{DecodeShards, ShardEvent};
use timely::dataflow::operators::{Input, Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

type Seen = (BTreeMap<String, ShardStats>, Vec<(String, String, String)>, Vec<(String, String, String)>, Vec<String>);

fn run(shards: Vec<PathBuf>, workers: usize, budget: usize) -> Seen {
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let out = seen.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        let mut input = InputHandle::new();
        let probe = ProbeHandle::new();
        let (s1, s2) = (out.clone(), out.clone());
        worker.dataflow::<u64, _, _>(|scope| {
            let (samples, events) = scope.input_from(&mut input).decode_shards(ReaderConfig::default(), budget);
            samples
                .inspect(move |s| s1.lock().unwrap().1.push((s.shard.to_string(), s.key.clone(), s.uid.to_string())))
                .probe_with(&probe);
            events
                .inspect(move |e| {
                    let mut g = s2.lock().unwrap();
                    match e {
                        ShardEvent::Done { path, stats } => {
                            g.0.insert(path.display().to_string(), stats.clone());
                        }
                        ShardEvent::Rejected(r) => {
                            g.2.push((r.shard.to_string(), r.key.clone(), r.reason.name().into()))
                        }
                        ShardEvent::Failed { path, .. } => g.3.push(path.display().to_string()),
                    }
                })
                .probe_with(&probe);
        });
        // Worker 0 feeds the shards over three epochs.
        for (epoch, chunk) in shards.chunks(shards.len().div_ceil(3)).enumerate() {
            if worker.index() == 0 {
                for p in chunk {
                    input.send(p.clone());
                }
            }
            input.advance_to(epoch as u64 + 1);
            while probe.less_than(input.time()) {
                worker.step();
            }
        }
    })
    .unwrap();
    let mut g = std::mem::take(&mut *seen.lock().unwrap());
    g.1.sort();
    g.2.sort();
    g.3.sort();
    g
}

#[test]
fn dataflow_equals_reading_each_shard_alone_for_any_workers_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut shards =
        flyt::synth::SynthPool { shards: 7, samples_per_shard: 40, dirt: 0.15, seed: 3, ..Default::default() }
            .write(dir.path())
            .unwrap();
    // A truncated shard and a missing one.
    let bytes = std::fs::read(&shards[0]).unwrap();
    let cut = dir.path().join("00000050.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    shards.push(cut);
    let missing = dir.path().join("00000051.tar");
    shards.push(missing.clone());

    // The oracle: each shard read alone.
    let mut want: Seen = Default::default();
    for p in &shards {
        let Ok(mut r) = ShardReader::open(p, ReaderConfig::default()) else {
            want.3.push(p.display().to_string());
            continue;
        };
        for rec in r.by_ref() {
            match rec.unwrap() {
                Record::Sample(s) => want.1.push((s.shard.to_string(), s.key.clone(), s.uid.to_string())),
                Record::Rejected(x) => want.2.push((x.shard.to_string(), x.key.clone(), x.reason.name().into())),
            }
        }
        want.0.insert(p.display().to_string(), r.stats().clone());
    }
    want.1.sort();
    want.2.sort();
    assert!(!want.2.is_empty() && want.0.values().all(|s| s.reconciles()));

    let mut order = shards.clone();
    for (workers, budget) in [(1, 1000), (2, 7), (3, 1)] {
        order.rotate_left(3);
        order.reverse();
        let got = run(order.clone(), workers, budget);
        assert_eq!(got.0, want.0, "stats, {workers} workers");
        assert_eq!(got.1, want.1, "samples, {workers} workers");
        assert_eq!(got.2, want.2, "rejects, {workers} workers");
        assert_eq!(got.3, want.3, "failures, {workers} workers");
    }
}
