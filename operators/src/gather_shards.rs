//! `GatherShards`: embedding batches in, one batch per shard out (all of a timestamp's rows, in order), for
//! methods whose result depends on the whole shard (negCLIPLoss) and so that every method sees the same rows
//! whatever the embedder's batch boundaries.

use std::collections::BTreeMap;

use flyt::clip::Embeddings;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

/// Concatenates each timestamp's embedding batches once the timestamp is complete (one per activation), on the
/// worker that holds them. Batches of one timestamp arrive in row order from one upstream operator per worker
/// ([`crate::EmbedClip`] or [`crate::ReadSidecars`]), so the rows keep their shard order.
///
/// ```
/// use flyt::clip::Embeddings;
/// use flyt_operators::GatherShards;
/// use std::sync::{Arc, Mutex};
/// use timely::dataflow::operators::{Inspect, ToStream};
///
/// let batch = |u: u128| Embeddings {
///     dim: 1, image: vec![1.0], text: vec![1.0], ids: vec![(flyt::Uid::from_u128(u), u.to_string())],
///     ..Default::default()
/// };
/// let got = Arc::new(Mutex::new(Vec::new()));
/// let sink = got.clone();
/// timely::example(move |scope| {
///     vec![batch(1), batch(2), batch(3)].to_stream(scope).gather_shards().inspect(move |e| sink.lock().unwrap().push(e.ids.len()));
/// });
/// assert_eq!(*got.lock().unwrap(), vec![3]);
/// ```
pub trait GatherShards<'scope> {
    /// One [`Embeddings`] per timestamp.
    fn gather_shards(self) -> Stream<'scope, u64, Vec<Embeddings>>;
}

impl<'scope> GatherShards<'scope> for Stream<'scope, u64, Vec<Embeddings>> {
    fn gather_shards(self) -> Stream<'scope, u64, Vec<Embeddings>> {
        let scope = self.scope();
        self.unary_frontier::<CapacityContainerBuilder<Vec<Embeddings>>, _, _, _>(
            Pipeline,
            "GatherShards",
            move |_, info| {
                let activator = scope.activator_for(info.address);
                let mut stash: BTreeMap<u64, (Capability<u64>, Embeddings)> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        let Some(c) = cap.retain_least(0) else { return };
                        let e = &mut stash.entry(*c.time()).or_insert_with(|| (c, Embeddings::default())).1;
                        for batch in data.drain(..) {
                            e.append(batch);
                        }
                    });
                    let Some(t) = stash.keys().next().copied().filter(|t| !frontier.less_equal(t)) else { return };
                    let (cap, shard) = stash.remove(&t).expect("first key");
                    if !shard.ids.is_empty() {
                        output.session(&cap).give(shard);
                    }
                    if stash.keys().next().is_some_and(|t| !frontier.less_equal(t)) {
                        activator.activate();
                    }
                }
            },
        )
    }
}
