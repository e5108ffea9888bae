//! `DecodeShards`: shard paths in, samples out, rejects and per-shard stats on a side stream.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use flyt::{ReaderConfig, Record, Rejected, Sample, ShardReader, ShardStats};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::Operator;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

/// What decoding produces besides samples: one event per reject, and one per shard when it is finished.
#[derive(Clone, Debug, PartialEq)]
pub enum ShardEvent {
    /// A rejected sample (data damage; the shard goes on).
    Rejected(Rejected),
    /// A shard was read to its end; its final counts.
    Done {
        /// The shard's path.
        path: PathBuf,
        /// Its counts (they reconcile).
        stats: ShardStats,
    },
    /// A shard could not be read at all (an infrastructure failure: missing file, I/O error).
    Failed {
        /// The shard's path.
        path: PathBuf,
        /// Why.
        error: String,
    },
}

#[derive(Clone, Debug)]
enum Decoded {
    Sample(Box<Sample>),
    Event(ShardEvent),
}

/// Decodes WebDataset shards named by a stream of paths.
///
/// Paths are spread over workers by a hash of the path, so each shard is read by one worker and its image
/// bytes never leave it. Output carries the timestamp of the path that produced it (an ingest epoch per shard or
/// per batch of shards). Each activation reads at most `budget` records and then re-activates itself, so one
/// large shard never holds a worker for long.
///
/// ```
/// use flyt_operators::{DecodeShards, ShardEvent};
/// use timely::dataflow::operators::{Inspect, ToStream};
///
/// let dir = tempfile::tempdir().unwrap();
/// let shards = flyt::synth::SynthPool { shards: 2, samples_per_shard: 5, ..Default::default() }
///     .write(dir.path())
///     .unwrap();
/// timely::example(move |scope| {
///     let (samples, events) = shards.to_stream(scope).decode_shards(flyt::ReaderConfig::default(), 1000);
///     samples.inspect(|s| assert!(s.caption.is_some()));
///     events.inspect(|e| if let ShardEvent::Done { stats, .. } = e { assert_eq!(stats.accepted, 5) });
/// });
/// ```
pub trait DecodeShards<'scope, T: Timestamp> {
    /// Reads the shards; returns (samples, events).
    fn decode_shards(
        self,
        config: ReaderConfig,
        budget: usize,
    ) -> (Stream<'scope, T, Vec<Sample>>, Stream<'scope, T, Vec<ShardEvent>>);

    /// As [`DecodeShards::decode_shards`], but each worker reads the paths it already holds (for pipelines
    /// that route shards to workers themselves).
    fn decode_shards_local(
        self,
        config: ReaderConfig,
        budget: usize,
    ) -> (Stream<'scope, T, Vec<Sample>>, Stream<'scope, T, Vec<ShardEvent>>);
}

impl<'scope, T: Timestamp + TotalOrder> DecodeShards<'scope, T> for Stream<'scope, T, Vec<PathBuf>> {
    fn decode_shards(
        self,
        config: ReaderConfig,
        budget: usize,
    ) -> (Stream<'scope, T, Vec<Sample>>, Stream<'scope, T, Vec<ShardEvent>>) {
        let pact = Exchange::new(|p: &PathBuf| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            p.hash(&mut h);
            h.finish()
        });
        decode(self, pact, config, budget)
    }

    fn decode_shards_local(
        self,
        config: ReaderConfig,
        budget: usize,
    ) -> (Stream<'scope, T, Vec<Sample>>, Stream<'scope, T, Vec<ShardEvent>>) {
        decode(self, Pipeline, config, budget)
    }
}

fn decode<'scope, T, P>(
    stream: Stream<'scope, T, Vec<PathBuf>>,
    pact: P,
    config: ReaderConfig,
    budget: usize,
) -> (Stream<'scope, T, Vec<Sample>>, Stream<'scope, T, Vec<ShardEvent>>)
where
    T: Timestamp + TotalOrder,
    P: timely::dataflow::channels::pact::ParallelizationContract<T, Vec<PathBuf>>,
{
    {
        let scope = stream.scope();
        let decoded =
            stream.unary::<CapacityContainerBuilder<Vec<Decoded>>, _, _, _>(pact, "DecodeShards", move |_cap, info| {
                let activator = scope.activator_for(info.address);
                let mut queue: VecDeque<(Capability<T>, PathBuf)> = VecDeque::new();
                let mut current: Option<(Capability<T>, PathBuf, ShardReader)> = None;
                move |input, output| {
                    input.for_each(|cap, data| {
                        if let Some(cap) = cap.retain_least(0) {
                            for p in data.drain(..) {
                                queue.push_back((cap.clone(), p));
                            }
                        }
                    });
                    let mut left = budget.max(1);
                    while left > 0 {
                        if current.is_none() {
                            let Some((cap, path)) = queue.pop_front() else { break };
                            match ShardReader::open(&path, config.clone()) {
                                Ok(r) => current = Some((cap, path, r)),
                                Err(e) => {
                                    output
                                        .session(&cap)
                                        .give(Decoded::Event(ShardEvent::Failed { path, error: e.to_string() }));
                                    continue;
                                }
                            }
                        }
                        let (cap, path, reader) = current.as_mut().expect("opened above");
                        let mut session = output.session(cap);
                        let mut finished = false;
                        while left > 0 {
                            left -= 1;
                            match reader.next() {
                                Some(Ok(Record::Sample(s))) => session.give(Decoded::Sample(s)),
                                Some(Ok(Record::Rejected(r))) => session.give(Decoded::Event(ShardEvent::Rejected(r))),
                                Some(Err(e)) => {
                                    session.give(Decoded::Event(ShardEvent::Failed {
                                        path: path.clone(),
                                        error: e.to_string(),
                                    }));
                                    finished = true;
                                    break;
                                }
                                None => {
                                    let stats = reader.stats().clone();
                                    session.give(Decoded::Event(ShardEvent::Done { path: path.clone(), stats }));
                                    finished = true;
                                    break;
                                }
                            }
                        }
                        drop(session);
                        if finished {
                            current = None;
                        }
                    }
                    if current.is_some() || !queue.is_empty() {
                        activator.activate();
                    }
                }
            });
        decoded.ok_err::<Vec<Sample>, Sample, Vec<ShardEvent>, ShardEvent, _>(|d| match d {
            Decoded::Sample(s) => Ok(*s),
            Decoded::Event(e) => Err(e),
        })
    }
}
