//! `SoftCapSample`: a scored pool collection in, the SCS training multiset out, kept up to date incrementally.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::{AsCollection, VecCollection};
use flyt::Uid;
use flyt::sampling::{ScsAsk, ScsCoordinator, ScsPart, ScsReply, Target};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Capability, ConnectLoop, Enter, InputCapability, Leave, LoopVariable, OkErr};
use timely::order::{Product, TotalOrder};
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
    /// Rows refused because their uid was already in the pool (or came twice at one time).
    pub refused: AtomicU64,
    /// Microseconds spent applying changes.
    pub micros: AtomicU64,
}

/// Soft Cap Sampling over a changing pool: the output collection holds each selected uid with its count as
/// multiplicity, equal at every completed timestamp to [`flyt::sampling::scs`] over the pool as it then is
/// (so it does not depend on arrival order, worker count or process count).
///
/// The pool is partitioned: `(uid, score)` updates are exchanged by uid, and each worker keeps the clocks of its
/// own uids in an [`ScsPart`] (about N / W examples per worker). Global worker 0 runs the [`ScsCoordinator`],
/// which finds the global threshold τ in rounds of a loop (an iterative scope): after a timestamp's updates
/// every worker that changed reports its selected firings and pool size; the coordinator asks every worker
/// questions whose answers are counts or a bounded list of firing times, then tells them τ. What crosses the
/// network per timestamp is O(workers × the change), never the pool. Timestamps are settled one at a time.
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

/// What a worker of the sampler sends on: an answer for the coordinator, or a count change of the sample.
#[derive(Clone)]
enum Out<T> {
    Reply(T, u32, ScsReply),
    Change(Uid, T, isize),
}

/// Messages held until their round, by key, with the capability to answer at it.
type Rounds<T, K, D> = BTreeMap<K, (Capability<Product<T, u32>>, Vec<D>)>;

/// Holds `item` under `key` until its round, with a capability for the round's time `at`.
fn hold<T: Timestamp, K: Ord, D>(
    rounds: &mut Rounds<T, K, D>,
    key: K,
    at: Product<T, u32>,
    cap: &InputCapability<Product<T, u32>>,
    item: D,
) {
    rounds.entry(key).or_insert_with(|| (cap.delayed(&at, 0), Vec::new())).1.push(item);
}

/// The worker that holds `uid`'s clock (and, upstream, its rows: [`crate::DedupUids`]).
pub(crate) fn route(uid: &Uid) -> u64 {
    (uid.high() ^ uid.low().rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32
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
        let outer = self.inner.scope();
        let peers = outer.peers();
        let changes = outer.iterative::<u32, _, _>(|inner| {
            // Questions and answers carry their round, (outer time, round), in the data.
            let (handle, asks) = inner.loop_variable::<Vec<(T, u32, ScsAsk)>>(1);
            let updates = self.inner.enter(inner);
            let out = updates.binary_frontier::<_, CapacityContainerBuilder<Vec<Out<T>>>, _, _, _, _>(
                asks.broadcast(),
                Exchange::new(|((u, _), _, _): &((Uid, u64), T, isize)| route(u)),
                Pipeline,
                "SoftCapSamplePart",
                |_cap, info| {
                    let activator = inner.activator_for(info.address);
                    let index = inner.index();
                    let counters = counters.clone();
                    let mut part = ScsPart::new(alpha, seed).ok();
                    if part.is_none() {
                        tracing::error!(alpha, "SoftCapSample: bad parameters; nothing will be sampled");
                    }
                    let mut stash: Rounds<T, T, ((Uid, u64), isize)> =
                        BTreeMap::new();
                    let mut questions: Rounds<T, (T, u32), ScsAsk> =
                        BTreeMap::new();
                    move |(input, frontier), (asked, asked_frontier), output| {
                        input.for_each(|cap, data| {
                            for (d, t, r) in data.drain(..) {
                                hold(&mut stash, t.clone(), Product::new(t, 0), &cap, (d, r));
                            }
                        });
                        asked.for_each(|cap, data| {
                            for (t, r, ask) in data.drain(..) {
                                hold(&mut questions, (t.clone(), r), Product::new(t, r), &cap, ask);
                            }
                        });
                        let Some(part) = part.as_mut() else {
                            stash.clear();
                            questions.clear();
                            return;
                        };
                        let started = std::time::Instant::now();
                        // The coordinator's questions, in round order.
                        while let Some(((t, r), (cap, list))) = questions.pop_first() {
                            let mut session = output.session(&cap);
                            for ask in list {
                                session.give(Out::Reply(t.clone(), r, part.answer(index, ask)));
                                if matches!(ask, ScsAsk::Set { .. }) {
                                    for (uid, delta) in part.changes() {
                                        session.give(Out::Change(uid, t.clone(), delta as isize));
                                    }
                                }
                            }
                        }
                        // The next timestamp's updates, once they are complete and every earlier timestamp's
                        // rounds are over.
                        let ready = |t: &T| {
                            !frontier.less_equal(&Product::new(t.clone(), 0))
                                && asked_frontier.frontier().iter().all(|f| !f.outer.less_than(t))
                        };
                        let next = stash.keys().next().cloned().filter(ready);
                        if let Some(t) = next {
                            let (cap, mut updates) = stash.remove(&t).expect("first key");
                            consolidate(&mut updates);
                            let removed: Vec<Uid> =
                                updates.iter().filter(|(_, r)| *r < 0).map(|((u, _), _)| *u).collect();
                            part.remove(&removed);
                            // Inserted in pieces, so a big first batch needs no second copy of itself. A row whose
                            // uid is already in the pool, or comes twice, is refused on its own (upstream keeps one
                            // row per uid, so this is never expected).
                            let mut inserted: Vec<(Uid, f64)> = Vec::new();
                            let mut rows = updates.iter().filter(|(_, r)| *r > 0).peekable();
                            let mut previous: Option<Uid> = None;
                            while rows.peek().is_some() {
                                inserted.clear();
                                for ((u, bits), _) in rows.by_ref().take(1 << 16) {
                                    let s = f64::from_bits(*bits);
                                    let repeated = previous == Some(*u) || part.contains(*u);
                                    previous = Some(*u);
                                    if !s.is_finite() {
                                        counters.non_finite.fetch_add(1, Ordering::Relaxed);
                                        tracing::warn!(uid = %u, score = s, "SoftCapSample: non-finite score; uid left out");
                                    } else if repeated {
                                        counters.refused.fetch_add(1, Ordering::Relaxed);
                                        tracing::error!(uid = %u, "SoftCapSample: a second row for a uid in the pool; refused");
                                    } else {
                                        inserted.push((*u, s));
                                    }
                                }
                                if let Err(e) = part.insert(&inserted) {
                                    tracing::error!(error = %e, "SoftCapSample: insert refused");
                                }
                            }
                            drop(updates);
                            let mut session = output.session(&cap);
                            session.give(Out::Reply(t.clone(), 0, part.state(index)));
                            for (uid, delta) in part.changes() {
                                session.give(Out::Change(uid, t.clone(), delta as isize));
                            }
                        }
                        counters.micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                        if stash.keys().next().is_some_and(ready) {
                            activator.activate();
                        }
                    }
                },
            );
            let (replies, changes) = out.ok_err::<Vec<_>, _, Vec<_>, _, _>(|o| match o {
                Out::Reply(t, r, reply) => Ok((t, r, reply)),
                Out::Change(uid, t, d) => Err((uid, t, d)),
            });
            replies
                .unary_frontier::<CapacityContainerBuilder<Vec<(T, u32, ScsAsk)>>, _, _, _>(
                    Exchange::new(|_: &(T, u32, ScsReply)| 0u64),
                    "SoftCapSampleCoordinator",
                    |_cap, info| {
                        let activator = inner.activator_for(info.address);
                        let mut coordinator = ScsCoordinator::new(alpha, target, peers).ok();
                        let mut stash: Rounds<T, (T, u32), ScsReply> =
                            BTreeMap::new();
                        let done = |frontier: &timely::progress::frontier::MutableAntichain<Product<T, u32>>,
                                    (t, r): &(T, u32)| !frontier.less_equal(&Product::new(t.clone(), *r));
                        move |(input, frontier), output| {
                            input.for_each(|cap, data| {
                                for (t, r, reply) in data.drain(..) {
                                    hold(&mut stash, (t.clone(), r), Product::new(t, r), &cap, reply);
                                }
                            });
                            // One round per activation: the earliest whose answers are all in.
                            let Some(time) = stash.keys().next().cloned().filter(|p| done(frontier, p)) else {
                                return;
                            };
                            let (cap, replies) = stash.remove(&time).expect("first key");
                            let Some(coordinator) = coordinator.as_mut() else { return };
                            let started = std::time::Instant::now();
                            match coordinator.step(&replies) {
                                Ok(Some(ask)) => output.session(&cap).give((time.0.clone(), time.1 + 1, ask)),
                                Ok(None) => {}
                                Err(e) => tracing::error!(error = %e, "SoftCapSample: the sample could not be settled"),
                            }
                            counters.pool.store(coordinator.pool(), Ordering::Relaxed);
                            counters.target.store(coordinator.target(), Ordering::Relaxed);
                            counters.micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                            if stash.keys().next().is_some_and(|p| done(frontier, p)) {
                                activator.activate();
                            }
                        }
                    },
                )
                .connect_loop(handle);
            changes.leave(outer)
        });
        changes.as_collection()
    }
}
