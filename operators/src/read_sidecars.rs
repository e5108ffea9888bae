//! `ReadSidecars`: shard jobs whose embeddings are a DataComp sidecar pair (`<stem>.parquet` + `<stem>.npz`),
//! or only a metadata parquet, in; their embeddings and the read's counts out. One file pair per activation.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use flyt::clip::Embeddings;
use flyt::curation::{SidecarRead, read_metadata_only, read_sidecar};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::Operator;

use crate::{Counters, Job, Part, ShardEvent, Via};

#[derive(Clone, Debug)]
enum Out {
    Emb(Embeddings),
    Part(Part),
}

/// Reads the sidecars of [`Via::Sidecar`] and [`Via::Metadata`] jobs (other jobs are ignored), on the worker
/// that holds the job; returns (embeddings, one per shard; parts for [`crate::AssembleShards`]: the read's
/// counts and rejects, or its failure). A metadata-only read gives rows with captions and sizes and no
/// embedding values (`dim` 0).
///
/// ```
/// use flyt_operators::{Job, Part, ReadSidecars, Via};
/// use std::sync::{Arc, Mutex};
/// use timely::dataflow::operators::{Inspect, ToStream};
///
/// let dir = tempfile::tempdir().unwrap();
/// flyt::synth::SynthSidecars { shards: 1, rows_per_shard: 4, dim: 8, ..Default::default() }.write(dir.path()).unwrap();
/// let (parquet, npz) = (dir.path().join("00000000.parquet"), dir.path().join("00000000.npz"));
/// let job = Job::Shard { name: "00000000".into(), inputs: vec![], via: Via::Sidecar { parquet, npz, stored: false } };
/// let got = Arc::new(Mutex::new(Vec::new()));
/// let sink = got.clone();
/// timely::example(move |scope| {
///     let (emb, _parts) = vec![job].to_stream(scope).read_sidecars(None, Default::default());
///     emb.inspect(move |e| sink.lock().unwrap().push((e.ids.len(), e.dim)));
/// });
/// assert_eq!(*got.lock().unwrap(), vec![(4, 8)]);
/// ```
pub trait ReadSidecars<'scope> {
    /// `prefix` picks the `.npz` arrays (default: found in each file).
    fn read_sidecars(
        self,
        prefix: Option<String>,
        counters: Arc<Counters>,
    ) -> (Stream<'scope, u64, Vec<Embeddings>>, Stream<'scope, u64, Vec<Part>>);
}

impl<'scope> ReadSidecars<'scope> for Stream<'scope, u64, Vec<Job>> {
    fn read_sidecars(
        self,
        prefix: Option<String>,
        counters: Arc<Counters>,
    ) -> (Stream<'scope, u64, Vec<Embeddings>>, Stream<'scope, u64, Vec<Part>>) {
        let scope = self.scope();
        let out =
            self.unary::<CapacityContainerBuilder<Vec<Out>>, _, _, _>(Pipeline, "ReadSidecars", move |_, info| {
                let activator = scope.activator_for(info.address);
                let mut queue: VecDeque<(Capability<u64>, String, PathBuf, Option<PathBuf>)> = VecDeque::new();
                move |input, output| {
                    input.for_each(|cap, data| {
                        let Some(c) = cap.retain_least(0) else { return };
                        for j in data.drain(..) {
                            match j {
                                Job::Shard { name, via: Via::Sidecar { parquet, npz, .. }, .. } => {
                                    queue.push_back((c.clone(), name, parquet, Some(npz)))
                                }
                                Job::Shard { name, via: Via::Metadata { parquet }, .. } => {
                                    queue.push_back((c.clone(), name, parquet, None))
                                }
                                _ => {}
                            }
                        }
                    });
                    if let Some((cap, name, parquet, npz)) = queue.pop_front() {
                        let mut session = output.session(&cap);
                        let started = std::time::Instant::now();
                        let read = match &npz {
                            Some(npz) => read_sidecar(&name, &parquet, npz, prefix.as_deref()),
                            None => read_metadata_only(&name, &parquet),
                        };
                        counters.read_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                        match read {
                            Ok(SidecarRead { embeddings, stats, rejects, prefix }) => {
                                if !embeddings.ids.is_empty() {
                                    session.give(Out::Emb(embeddings));
                                }
                                session.give(Out::Part(Part::Sidecar(Box::new((stats, rejects, prefix)))));
                            }
                            Err(e) => session.give(Out::Part(Part::Event(ShardEvent::Failed {
                                path: parquet,
                                error: e.to_string(),
                            }))),
                        }
                    }
                    if !queue.is_empty() {
                        activator.activate();
                    }
                }
            });
        out.ok_err::<Vec<Embeddings>, Embeddings, Vec<Part>, Part, _>(|o| match o {
            Out::Emb(e) => Ok(e),
            Out::Part(p) => Err(p),
        })
    }
}
