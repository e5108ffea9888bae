//! `SoftCapSample` partitions the pool across workers: at every completed timestamp its output equals the batch
//! sampler over the pool as it then is, for 1, 2, 3 and 4 workers, with shards arriving, leaving and changing
//! score, and with a first batch large enough for the coordinator's bracket search (more than its gather window).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use differential_dataflow::input::InputSession;
use flyt::Uid;
use flyt::rng::SplitMix64;
use flyt::sampling::{Target, scs};
use flyt_operators::{ScsCounters, SoftCapSample};
use timely::dataflow::operators::Inspect;

const ALPHA: f64 = 0.15;
const SEED: u64 = 21;

/// The pool's changes per timestamp: a big first batch, then shards in and out, and a rescored shard.
fn timeline() -> Vec<Vec<((Uid, f64), isize)>> {
    let mut r = SplitMix64::new(4);
    let mut score = move || (r.unit() - 0.5) * 10.0;
    let shard = |s: u64, n: u64, score: &mut dyn FnMut() -> f64| -> Vec<(Uid, f64)> {
        (0..n).map(|i| (Uid::from_parts(s, i), score())).collect()
    };
    let big = shard(0, 70_000, &mut score);
    let a = shard(1, 3_000, &mut score);
    let b = shard(2, 2_500, &mut score);
    let c = shard(3, 4_000, &mut score);
    let rescored: Vec<(Uid, f64)> = a.iter().map(|(u, s)| (*u, s * 0.5 + 1.0)).collect();
    let add = |v: &[(Uid, f64)]| v.iter().map(|p| (*p, 1)).collect::<Vec<_>>();
    let del = |v: &[(Uid, f64)]| v.iter().map(|p| (*p, -1)).collect::<Vec<_>>();
    vec![
        add(&big),
        add(&a),
        [add(&b), add(&c)].concat(),
        del(&b),
        [del(&a), add(&rescored)].concat(),
        del(&big[..50_000]),
        add(&b),
    ]
}

fn run(workers: usize, target: Target) -> BTreeMap<u64, BTreeMap<Uid, isize>> {
    let got: Arc<Mutex<Vec<(Uid, u64, isize)>>> = Arc::default();
    let sink = got.clone();
    let steps = Arc::new(timeline());
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let sink = sink.clone();
        let mut input: InputSession<u64, (Uid, u64), isize> = InputSession::new();
        worker.dataflow::<u64, _, _>(|scope| {
            input
                .to_collection(scope)
                .soft_cap_sample(ALPHA, target, SEED, Arc::new(ScsCounters::default()))
                .inner
                .inspect(move |(u, t, d)| sink.lock().unwrap().push((*u, *t, *d)));
        });
        for (t, changes) in steps.iter().enumerate() {
            input.advance_to(t as u64);
            // Each worker feeds a slice of the changes: where an update enters must not matter.
            for (i, ((u, s), d)) in changes.iter().enumerate() {
                if i % peers == index {
                    input.update((*u, s.to_bits()), *d);
                }
            }
        }
        input.close();
    })
    .unwrap();
    let mut by_time: BTreeMap<u64, BTreeMap<Uid, isize>> = BTreeMap::new();
    let mut acc: BTreeMap<Uid, isize> = BTreeMap::new();
    let mut updates = got.lock().unwrap().clone();
    updates.sort_by_key(|(_, t, _)| *t);
    for t in 0..timeline().len() as u64 {
        for (u, _, d) in updates.iter().filter(|(_, ut, _)| *ut == t) {
            *acc.entry(*u).or_default() += d;
        }
        acc.retain(|_, c| *c != 0);
        by_time.insert(t, acc.clone());
    }
    by_time
}

#[test]
fn every_worker_count_equals_the_batch_sampler_at_every_time() {
    for target in [Target::Ratio(1.2), Target::Fixed(30_000)] {
        // The oracle: the live pool at each time, sampled from scratch.
        let mut live: BTreeMap<Uid, f64> = BTreeMap::new();
        let mut want: Vec<BTreeMap<Uid, isize>> = Vec::new();
        for changes in timeline() {
            for ((u, s), d) in &changes {
                if *d < 0 {
                    assert_eq!(live.remove(u), Some(*s));
                }
            }
            for ((u, s), d) in &changes {
                if *d > 0 {
                    live.insert(*u, *s);
                }
            }
            let pool: Vec<(Uid, f64)> = live.iter().map(|(u, s)| (*u, *s)).collect();
            let counts = scs(&pool, ALPHA, target.for_pool(pool.len()), SEED).unwrap();
            want.push(pool.iter().zip(counts).filter(|(_, c)| *c > 0).map(|(p, c)| (p.0, c as isize)).collect());
        }
        for workers in [1, 2, 3, 4] {
            let got = run(workers, target);
            for (t, w) in want.iter().enumerate() {
                let g = &got[&(t as u64)];
                let differ = w.iter().filter(|(u, c)| g.get(u) != Some(c)).count() + g.len().saturating_sub(w.len());
                assert!(differ == 0 && g == w, "{target:?}, {workers} workers, time {t}: {differ} uids differ");
            }
        }
    }
}

/// A second row for a uid already in the pool is refused on its own and counted; the other rows of its
/// timestamp are sampled as if it were absent.
#[test]
fn a_repeated_uid_is_refused_alone() {
    let pool: Vec<(Uid, f64)> = (0..3000u64).map(|i| (Uid::from_parts(9, i), (i % 17) as f64 * 0.3)).collect();
    let counters = Arc::new(ScsCounters::default());
    let got: Arc<Mutex<BTreeMap<Uid, isize>>> = Arc::default();
    let (sink, c) = (got.clone(), counters.clone());
    let input = pool.clone();
    timely::execute(timely::Config::process(2), move |worker| {
        let (sink, c) = (sink.clone(), c.clone());
        let mut session: InputSession<u64, (Uid, u64), isize> = InputSession::new();
        worker.dataflow::<u64, _, _>(|scope| {
            session.to_collection(scope).soft_cap_sample(ALPHA, Target::Fixed(2000), SEED, c).inner.inspect(
                move |(u, _, d)| {
                    *sink.lock().unwrap().entry(*u).or_default() += d;
                },
            );
        });
        if worker.index() == 0 {
            for (u, s) in &input {
                session.update((*u, s.to_bits()), 1);
            }
            // The same uid as row 5 with another score, at the same time.
            session.update((input[5].0, 99.0f64.to_bits()), 1);
        }
        session.close();
    })
    .unwrap();
    assert_eq!(counters.refused.load(std::sync::atomic::Ordering::Relaxed), 1);
    // Of the two rows, the one with the smaller score bits stays (updates are consolidated in order).
    let want = scs(&pool, ALPHA, 2000, SEED).unwrap();
    let got = got.lock().unwrap();
    for ((u, _), w) in pool.iter().zip(want) {
        assert_eq!(got.get(u).copied().unwrap_or(0), w as isize, "{u}");
    }
}
