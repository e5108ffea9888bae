//! `EmbedClip`: samples in, CLIP embedding batches out, undecodable images as rejects on a side stream.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flyt::clip::{Embedder, Embeddings};
use flyt::{Rejected, Sample};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::Operator;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

/// Counters an [`EmbedClip`] operator adds to (shared across workers of a process): batches run, rows embedded
/// and the rows a batch could have held, so `rows / capacity` is the batch fill.
#[derive(Debug, Default)]
pub struct EmbedCounters {
    /// Batches run.
    pub batches: AtomicU64,
    /// Rows embedded (after image decoding).
    pub rows: AtomicU64,
    /// Σ batch capacity over batches run.
    pub capacity: AtomicU64,
    /// Microseconds spent embedding.
    pub micros: AtomicU64,
}

/// Batches handed to the embedder per activation.
const CHUNK: usize = 4;

/// Records waiting per timestamp, with the capability to emit their results.
pub(crate) type Stash<T, D> = BTreeMap<T, (Capability<T>, Vec<D>)>;

#[derive(Clone, Debug)]
enum Out {
    Batch(Embeddings),
    Reject(Rejected),
}

/// Embeds samples with a loaded [`Embedder`], on the worker that holds them (pixels never move).
///
/// Samples are stashed per timestamp; batches of `batch` samples run as soon as that many are waiting (up to four
/// per activation, so preprocessing overlaps the model), and a partial batch once its timestamp is complete.
/// The operator re-activates itself while work is left, so a large shard never holds a worker for long. Output batches keep their
/// samples' timestamp and order.
pub trait EmbedClip<'scope, T: Timestamp> {
    /// Returns (embedding batches, rejected samples).
    fn embed_clip(
        self,
        embedder: Rc<Embedder>,
        batch: usize,
        counters: Arc<EmbedCounters>,
    ) -> (Stream<'scope, T, Vec<Embeddings>>, Stream<'scope, T, Vec<Rejected>>);
}

impl<'scope, T: Timestamp + TotalOrder> EmbedClip<'scope, T> for Stream<'scope, T, Vec<Sample>> {
    fn embed_clip(
        self,
        embedder: Rc<Embedder>,
        batch: usize,
        counters: Arc<EmbedCounters>,
    ) -> (Stream<'scope, T, Vec<Embeddings>>, Stream<'scope, T, Vec<Rejected>>) {
        let scope = self.scope();
        let batch = batch.max(1);
        let out = self.unary_frontier::<CapacityContainerBuilder<Vec<Out>>, _, _, _>(
            Pipeline,
            "EmbedClip",
            move |_cap, info| {
                let activator = scope.activator_for(info.address);
                let mut stash: Stash<T, Sample> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        if let Some(c) = cap.retain_least(0) {
                            let e = stash.entry(c.time().clone()).or_insert_with(|| (c, Vec::new()));
                            e.1.append(data);
                        }
                    });
                    // The earliest timestamp with a full batch, or complete with anything left.
                    let ready = stash
                        .iter()
                        .find(|(t, (_, v))| v.len() >= batch || (!frontier.less_equal(t) && !v.is_empty()))
                        .map(|(t, _)| t.clone());
                    if let Some(t) = ready {
                        let (cap, samples) = stash.get_mut(&t).expect("found above");
                        // Up to CHUNK full batches per activation: inside one call the embedder preprocesses the
                        // next batch on its worker pool while the model runs the current one.
                        let n = if samples.len() >= batch {
                            samples.len().min(CHUNK * batch) / batch * batch
                        } else {
                            samples.len()
                        };
                        let take: Vec<Sample> = samples.drain(..n).collect();
                        let started = std::time::Instant::now();
                        let (emb, rejects) = embedder.embed(take.into_iter());
                        counters.batches.fetch_add(1, Ordering::Relaxed);
                        counters.rows.fetch_add(emb.ids.len() as u64, Ordering::Relaxed);
                        counters.capacity.fetch_add(n.div_ceil(batch) as u64 * batch as u64, Ordering::Relaxed);
                        counters.micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                        let mut session = output.session(cap);
                        if !emb.ids.is_empty() {
                            session.give(Out::Batch(emb));
                        }
                        for r in rejects {
                            session.give(Out::Reject(r));
                        }
                    }
                    stash.retain(|t, (_, v)| !v.is_empty() || frontier.less_equal(t));
                    let more =
                        stash.iter().any(|(t, (_, v))| v.len() >= batch || (!frontier.less_equal(t) && !v.is_empty()));
                    if more {
                        activator.activate();
                    }
                }
            },
        );
        out.ok_err::<Vec<Embeddings>, Embeddings, Vec<Rejected>, Rejected, _>(|o| match o {
            Out::Batch(e) => Ok(e),
            Out::Reject(r) => Err(r),
        })
    }
}
