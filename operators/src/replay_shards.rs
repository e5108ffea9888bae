//! `ReplayShards`: committed shards re-enter the pool from their score tables (no decoding, no embedding),
//! and retracted shards leave it. One shard per activation.

use std::collections::VecDeque;
use std::sync::Arc;

use flyt::curation::Layout;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::Operator;

use crate::{Counters, Job, PoolUpdate, ShardSummary, SinkEvent, pool_rows};

#[derive(Clone, Debug)]
enum Out {
    Update(PoolUpdate),
    Sink(SinkEvent),
}

/// Replays ([`Job::Replay`]: the committed rows from the shard's score table, read with `columns`) and
/// retractions ([`Job::Retract`]: the rows as committed, taken back); returns (pool updates, events for
/// [`crate::PublishSubset`]). Other jobs are ignored.
pub trait ReplayShards<'scope> {
    /// Replays and retracts.
    fn replay_shards(
        self,
        layout: Layout,
        columns: Arc<Vec<String>>,
        counters: Arc<Counters>,
    ) -> (Stream<'scope, u64, Vec<PoolUpdate>>, Stream<'scope, u64, Vec<SinkEvent>>);
}

impl<'scope> ReplayShards<'scope> for Stream<'scope, u64, Vec<Job>> {
    fn replay_shards(
        self,
        layout: Layout,
        columns: Arc<Vec<String>>,
        progress: Arc<Counters>,
    ) -> (Stream<'scope, u64, Vec<PoolUpdate>>, Stream<'scope, u64, Vec<SinkEvent>>) {
        let scope = self.scope();
        let out = self.unary::<CapacityContainerBuilder<Vec<Out>>, _, _, _>(Pipeline, "ReplayShards", move |_, info| {
        let activator = scope.activator_for(info.address);
        let mut queue: VecDeque<(Capability<u64>, Job)> = VecDeque::new();
        move |input, output| {
            let started_all = std::time::Instant::now();
            input.for_each(|cap, data| {
                let Some(c) = cap.retain_least(0) else { return };
                for j in data.drain(..) {
                    if matches!(j, Job::Replay { .. } | Job::Retract { .. }) {
                        queue.push_back((c.clone(), j));
                    }
                }
            });
            if let Some((cap, job)) = queue.pop_front() {
                let t = *cap.time();
                let mut session = output.session(&cap);
                match job {
                    Job::Replay { name } => {
                        let loaded = layout
                            .record_of(&name)
                            .ok_or_else(|| format!("{}: unreadable", layout.record(&name).display()))
                            .and_then(|r| Ok((layout.replay(&r, &columns).map_err(|e| e.to_string())?, r)));
                        match loaded {
                            Ok((scores, record)) => {
                                for u in pool_rows(&scores) {
                                    session.give(Out::Update((u, t, 1)));
                                }
                                session.give(Out::Sink(SinkEvent::Committed(Box::new(ShardSummary {
                                    name,
                                    rows: scores.ids.len() as u64,
                                    stats: record.stats,
                                    replayed: true,
                                    via: record.via,
                                }))));
                            }
                            Err(e) => {
                                tracing::warn!(shard = %name, error = %e, "cannot replay a committed shard");
                                session.give(Out::Sink(SinkEvent::Failed { name, error: format!("replay: {e}") }));
                            }
                        }
                    }
                    Job::Retract { name, rows } => {
                        tracing::info!(shard = %name, rows = rows.len(), "retracting the replaced shard's rows");
                        for u in rows {
                            session.give(Out::Update((u, t, -1)));
                        }
                        session.give(Out::Sink(SinkEvent::Retracted { name }));
                    }
                    _ => {}
                }
            }
            progress
                .read_micros
                .fetch_add(started_all.elapsed().as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
            if !queue.is_empty() {
                activator.activate();
            }
        }
    });
        out.ok_err::<Vec<PoolUpdate>, PoolUpdate, Vec<SinkEvent>, SinkEvent, _>(|o| match o {
            Out::Update(u) => Ok(u),
            Out::Sink(s) => Err(s),
        })
    }
}
