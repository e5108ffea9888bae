//! `DedupUids` keeps each worker's uids in a compact table instead of a differential reduce: at every completed
//! timestamp its output must still be, for every uid, the least live row — for 1 to 4 workers, with rows fed on
//! any worker, shards delivered twice, a uid in several shards, re-scored shards, retractions of kept and of
//! shadowed rows, rows of another width, content digests, and an insert and its retraction at one time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use differential_dataflow::input::InputSession;
use flyt::Uid;
use flyt::rng::SplitMix64;
use flyt_operators::{DedupUids, PoolRow};
use timely::dataflow::operators::Inspect;

type Update = ((Uid, PoolRow), isize);
type Timed = ((Uid, PoolRow), u64, isize);

/// A random history of pool updates per timestamp.
fn timeline(seed: u64, times: usize) -> Vec<Vec<Update>> {
    let mut r = SplitMix64::new(seed);
    let mut live: BTreeMap<(Uid, PoolRow), isize> = BTreeMap::new();
    let mut out = Vec::new();
    for t in 0..times {
        let mut step: Vec<Update> = Vec::new();
        // A shard arrives: uids mostly new, some already in the pool (another shard's copy).
        let shard = format!("{:08}", r.below(40));
        let n = 1 + r.below(60);
        for _ in 0..n {
            let uid = Uid::from_parts(r.below(3), r.below(150));
            let width = if r.unit() < 0.05 { 2 } else { 1 };
            let row = PoolRow {
                shard: shard.clone(),
                values: (0..width).map(|_| (r.below(5) as f32).to_bits()).collect(),
                bytes: (r.unit() < 0.3).then(|| r.below(20) as u128),
                pixels: (r.unit() < 0.1).then(|| r.below(20) as u128),
            };
            let copies = if r.unit() < 0.1 { 2 } else { 1 };
            step.push(((uid, row.clone()), copies));
            if r.unit() < 0.05 {
                // In and out at the same time.
                step.push(((uid, row), -copies));
            }
        }
        // Retractions of live rows: a shard withdrawn, or rows one by one (kept ones and shadowed ones).
        let keys: Vec<(Uid, PoolRow)> = live.keys().cloned().collect();
        if !keys.is_empty() && t % 3 == 2 {
            let gone = keys[r.below(keys.len() as u64) as usize].1.shard.clone();
            for k in keys.iter().filter(|k| k.1.shard == gone) {
                step.push((k.clone(), -live[k]));
            }
        }
        for _ in 0..r.below(8) {
            if keys.is_empty() {
                break;
            }
            let k = &keys[r.below(keys.len() as u64) as usize];
            if !step.iter().any(|(s, _)| s == k) {
                step.push((k.clone(), -1));
            }
        }
        for (k, d) in &step {
            *live.entry(k.clone()).or_default() += d;
        }
        live.retain(|_, c| *c != 0);
        out.push(step);
    }
    out
}

/// For every uid, its least row with a positive count.
fn oracle(steps: &[Vec<Update>]) -> Vec<BTreeMap<Uid, PoolRow>> {
    let mut live: BTreeMap<(Uid, PoolRow), isize> = BTreeMap::new();
    steps
        .iter()
        .map(|step| {
            for (k, d) in step {
                *live.entry(k.clone()).or_default() += d;
            }
            live.retain(|_, c| *c != 0);
            let mut kept: BTreeMap<Uid, PoolRow> = BTreeMap::new();
            for ((u, row), c) in &live {
                if *c > 0 {
                    kept.entry(*u).or_insert_with(|| row.clone());
                }
            }
            kept
        })
        .collect()
}

fn run(workers: usize, steps: Arc<Vec<Vec<Update>>>) -> Vec<BTreeMap<(Uid, PoolRow), isize>> {
    let got: Arc<Mutex<Vec<Timed>>> = Arc::default();
    let sink = got.clone();
    let times = steps.len();
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let sink = sink.clone();
        let mut input: InputSession<u64, (Uid, PoolRow), isize> = InputSession::new();
        worker.dataflow::<u64, _, _>(|scope| {
            input.to_collection(scope).dedup_uids().inner.inspect(move |u| sink.lock().unwrap().push(u.clone()));
        });
        for (t, changes) in steps.iter().enumerate() {
            input.advance_to(t as u64);
            for (i, (row, d)) in changes.iter().enumerate() {
                if i % peers == index {
                    input.update(row.clone(), *d);
                }
            }
        }
        input.close();
    })
    .unwrap();
    let updates = got.lock().unwrap().clone();
    let mut acc: BTreeMap<(Uid, PoolRow), isize> = BTreeMap::new();
    (0..times as u64)
        .map(|t| {
            for (row, _, d) in updates.iter().filter(|(_, ut, _)| *ut == t) {
                *acc.entry(row.clone()).or_default() += d;
            }
            acc.retain(|_, c| *c != 0);
            acc.clone()
        })
        .collect()
}

#[test]
fn every_worker_count_keeps_the_least_live_row_of_every_uid_at_every_time() {
    for seed in [1, 2, 3] {
        let steps = Arc::new(timeline(seed, 40));
        let want = oracle(&steps);
        assert!(want.iter().any(|k| k.len() > 100), "the history builds a pool");
        for workers in 1..=4 {
            let got = run(workers, steps.clone());
            for (t, (g, w)) in got.iter().zip(&want).enumerate() {
                let w: BTreeMap<(Uid, PoolRow), isize> = w.iter().map(|(u, r)| ((*u, r.clone()), 1)).collect();
                assert_eq!(g, &w, "seed {seed}, {workers} workers, time {t}");
            }
        }
    }
}
