//! `replay_shards`: committed shards re-enter the pool from their score tables (no decoding, no embedding),
//! and retracted shards leave it. One shard per activation.

use std::collections::VecDeque;
use std::sync::Arc;

use flyt::Uid;
use flyt_operators::PoolRow;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::Operator;

use super::records::{Layout, ShardScores, replay};
use super::source::Job;
use super::{ShardSummary, SinkEvent};

/// Pool updates: `((uid, row), time, ±1)`.
pub type PoolUpdate = ((Uid, PoolRow), u64, isize);

#[derive(Clone, Debug)]
enum Out {
    Update(PoolUpdate),
    Sink(SinkEvent),
}

/// Replays and retractions; returns (pool updates, publisher events).
pub fn replay_shards<'s>(
    jobs: Stream<'s, u64, Vec<Job>>,
    layout: Layout,
    columns: Arc<Vec<String>>,
    progress: Arc<super::Progress>,
) -> (Stream<'s, u64, Vec<PoolUpdate>>, Stream<'s, u64, Vec<SinkEvent>>) {
    let scope = jobs.scope();
    let out = jobs.unary::<CapacityContainerBuilder<Vec<Out>>, _, _, _>(Pipeline, "ReplayShards", move |_, info| {
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
                            .records_one(&name)
                            .ok_or_else(|| anyhow::anyhow!("{}: unreadable", layout.record(&name).display()))
                            .and_then(|r| Ok((replay(&layout, &r, &columns)?, r)));
                        match loaded {
                            Ok((scores, record)) => {
                                for u in super::pool_rows(&scores) {
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
                                session.give(Out::Sink(SinkEvent::Failed { name, error: format!("replay: {e:#}") }));
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

/// Pool updates for freshly committed shards.
pub fn commit_updates<'s>(rows: Stream<'s, u64, Vec<ShardScores>>) -> Stream<'s, u64, Vec<PoolUpdate>> {
    rows.unary::<CapacityContainerBuilder<Vec<PoolUpdate>>, _, _, _>(Pipeline, "PoolRows", |_, _| {
        move |input, output| {
            input.for_each(|cap, data| {
                let Some(t) = cap.least().copied() else { return };
                let mut session = output.session(&cap);
                for s in data.drain(..) {
                    for u in super::pool_rows(&s) {
                        session.give((u, t, 1));
                    }
                }
            });
        }
    })
}
