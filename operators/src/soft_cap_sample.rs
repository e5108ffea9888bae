//! `SoftCapSample`: a scored pool collection in, the SCS training multiset out, kept up to date incrementally.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::{AsCollection, VecCollection};
use flyt::Uid;
use flyt::sampling::{IncrementalScs, Target};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

/// What a [`SoftCapSample`] operator has seen (shared with the caller, for stats).
#[derive(Debug, Default)]
pub struct ScsCounters {
    /// Examples in the sampler's pool now.
    pub pool: AtomicU64,
    /// The target T now (Σ counts).
    pub target: AtomicU64,
    /// Scores refused because they were not finite (NaN or ±∞); those uids stay out of the pool.
    pub non_finite: AtomicU64,
    /// Microseconds spent applying changes.
    pub micros: AtomicU64,
}

/// Soft Cap Sampling over a changing pool: the output collection holds each selected uid with its count as
/// multiplicity, equal at every completed timestamp to [`flyt::sampling::scs`] over the pool as it then is
/// (so it does not depend on arrival order or worker count).
///
/// All `(uid, score)` updates go to one worker (SCS is one global sample; 24 bytes per example), which applies
/// each completed timestamp's consolidated changes to an [`IncrementalScs`] — removals, then insertions — and
/// emits the count changes. One timestamp is applied per activation.
///
/// ```
/// use differential_dataflow::input::Input;
/// use flyt::{Uid, sampling::{scs, Target}};
/// use flyt_operators::SoftCapSample;
/// use std::sync::{Arc, Mutex};
///
/// let pool: Vec<(Uid, f64)> = (0..200).map(|i| (Uid::from_u128(i), (i % 9) as f64 * 0.4)).collect();
/// let want = scs(&pool, 0.15, 300, 5).unwrap();
/// let got = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
/// let sink = got.clone();
/// let input = pool.clone();
/// timely::example(move |scope| {
///     let (_, scores) = scope.new_collection_from(input.into_iter().map(|(u, s)| (u, s.to_bits())));
///     scores
///         .soft_cap_sample(0.15, Target::Fixed(300), 5, Default::default())
///         .inspect(move |(uid, _, d)| *sink.lock().unwrap().entry(*uid).or_insert(0) += *d);
/// });
/// let got = got.lock().unwrap();
/// assert!(pool.iter().zip(&want).all(|((u, _), &c)| got.get(u).copied().unwrap_or(0) == c as isize));
/// ```
pub trait SoftCapSample<'scope, T: Timestamp> {
    /// The multiset: uid with multiplicity = count.
    fn soft_cap_sample(
        self,
        alpha: f64,
        target: Target,
        seed: u64,
        counters: Arc<ScsCounters>,
    ) -> VecCollection<'scope, T, Uid>;
}

impl<'scope, T> SoftCapSample<'scope, T> for VecCollection<'scope, T, (Uid, u64)>
where
    T: Timestamp + TotalOrder + timely::ExchangeData,
{
    fn soft_cap_sample(
        self,
        alpha: f64,
        target: Target,
        seed: u64,
        counters: Arc<ScsCounters>,
    ) -> VecCollection<'scope, T, Uid> {
        let scope = self.inner.scope();
        self.inner
            .unary_frontier::<CapacityContainerBuilder<Vec<(Uid, T, isize)>>, _, _, _>(
                Exchange::new(|_: &((Uid, u64), T, isize)| 0u64),
                "SoftCapSample",
                move |_cap, info| {
                    let activator = scope.activator_for(info.address);
                    let mut scs = IncrementalScs::new(alpha, target, seed).ok();
                    if scs.is_none() {
                        tracing::error!(alpha, "SoftCapSample: bad parameters; nothing will be sampled");
                    }
                    let mut stash: crate::embed_clip::Stash<T, ((Uid, u64), isize)> = BTreeMap::new();
                    move |(input, frontier), output| {
                        input.for_each(|cap, data| {
                            for (d, t, r) in data.drain(..) {
                                let e = stash.entry(t.clone()).or_insert_with(|| (cap.delayed(&t, 0), Vec::new()));
                                e.1.push((d, r));
                            }
                        });
                        let Some(t) = stash.keys().next().cloned().filter(|t| !frontier.less_equal(t)) else {
                            return;
                        };
                        let (cap, mut updates) = stash.remove(&t).expect("first key");
                        let started = std::time::Instant::now();
                        consolidate(&mut updates);
                        if let Some(scs) = scs.as_mut() {
                            let removed: Vec<Uid> = updates.iter().filter(|(_, r)| *r < 0).map(|((u, _), _)| *u).collect();
                            scs.remove(&removed);
                            let mut inserted: Vec<(Uid, f64)> = Vec::new();
                            for ((u, bits), r) in &updates {
                                let s = f64::from_bits(*bits);
                                if *r > 0 {
                                    if s.is_finite() {
                                        inserted.push((*u, s));
                                    } else {
                                        counters.non_finite.fetch_add(1, Ordering::Relaxed);
                                        tracing::warn!(uid = %u, score = s, "SoftCapSample: non-finite score; uid left out");
                                    }
                                }
                            }
                            if let Err(e) = scs.insert(&inserted) {
                                tracing::error!(error = %e, "SoftCapSample: insert refused");
                            }
                            counters.pool.store(scs.len() as u64, Ordering::Relaxed);
                            counters.target.store(scs.target(), Ordering::Relaxed);
                            let mut session = output.session(&cap);
                            for (uid, delta) in scs.changes() {
                                session.give((uid, t.clone(), delta as isize));
                            }
                            counters.micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                        }
                        if stash.keys().next().is_some_and(|t| !frontier.less_equal(t)) {
                            activator.activate();
                        }
                    }
                },
            )
            .as_collection()
    }
}
