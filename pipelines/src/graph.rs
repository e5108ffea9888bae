//! The front of every curation graph, shared by `flyt curate` and the batch jobs: shard jobs in, each shard
//! embedded (or read from its sidecars), scored by every configured method and assembled; and a runner for
//! finite inputs (the batch jobs are this graph over a fixed list of shards).

use std::rc::Rc;
use std::sync::Arc;

use flyt::clip::{Embedder, Embeddings};
use flyt::curation::round_to_f16;
use flyt::{ReaderConfig, RowMeta};
use flyt_operators::{
    AssembleShards, AssembledShard, Counters, DecodeShards, EmbedClip, GatherShards, Job, Part, ReadSidecars,
    ShardEvent, ShardFailure, Via,
};
use timely::dataflow::operators::core::{Concatenate, Exchange as _};
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::vec::Map as _;
use timely::dataflow::{Scope, Stream};

use crate::methods::Scorers;
use crate::{Error, Result};

/// Why a tar shard fails when no CLIP model is loaded.
pub(crate) const NO_MODEL: &str =
    "no sidecar embeddings (<stem>.parquet + <stem>.npz) and no CLIP model to embed the tar (give --model DIR)";

/// How one worker makes and scores shards' embeddings.
pub(crate) struct Front {
    /// The CLIP model for tar shards (without one, tar shards fail saying so, unless no method needs
    /// embeddings: then they are only decoded).
    pub embedder: Option<Rc<Embedder>>,
    /// Largest embedding batch.
    pub batch_size: usize,
    /// Records read per decode activation.
    pub decode_budget: usize,
    /// How tars are read.
    pub reader: ReaderConfig,
    /// Round the model's embeddings to f16 before scoring (the precision they are stored at, so a re-score
    /// from the stored copy is bit-identical).
    pub round_f16: bool,
    /// The sidecars' `.npz` prefix (default: found in each file).
    pub prefix: Option<String>,
    /// The scoring methods.
    pub scorers: Scorers,
    /// The columns every shard must have, in order.
    pub columns: Vec<String>,
    /// The prefix of embeddings the model made.
    pub store_prefix: String,
    /// Counters.
    pub counters: Arc<Counters>,
}

impl Front {
    /// Jobs (on the workers that run them) in; assembled shards out. Replays, retractions and score files
    /// give nothing here.
    pub(crate) fn assemble<'s>(
        &self,
        jobs: Stream<'s, u64, Vec<Job>>,
    ) -> Stream<'s, u64, Vec<Result<AssembledShard, ShardFailure>>> {
        let scope = jobs.scope();
        let mut parts = vec![jobs.clone().flat_map(|j| matches!(j, Job::Shard { .. }).then_some(Part::Job(j)))];
        let mut embeddings = Vec::new();
        let tars = jobs.clone().flat_map(|j| match j {
            Job::Shard { via: Via::Model { tar }, .. } => Some(tar),
            _ => None,
        });
        match &self.embedder {
            Some(embedder) => {
                let (samples, events) = tars.decode_shards_local(self.reader.clone(), self.decode_budget);
                let (emb, unreadable) =
                    samples.embed_clip(embedder.clone(), self.batch_size, self.counters.embed.clone());
                let round = self.round_f16;
                embeddings.push(emb.map(move |mut e| {
                    if round {
                        round_to_f16(&mut e);
                    }
                    e
                }));
                parts.push(events.map(Part::Event));
                parts.push(unreadable.map(Part::Unreadable));
            }
            None if self.scorers.needs_embeddings() => {
                parts.push(tars.map(|path| Part::Event(ShardEvent::Failed { path, error: NO_MODEL.into() })))
            }
            None => {
                // Methods that read only captions and sizes: the tars are decoded, nothing is embedded.
                let (samples, events) = tars.decode_shards_local(self.reader.clone(), self.decode_budget);
                embeddings.push(samples.map(|s| Embeddings {
                    ids: vec![(s.uid, s.key.clone())],
                    meta: vec![RowMeta {
                        text: s.caption.clone(),
                        original_size: s.original_size(),
                        sha256: s.image().map(flyt::sha256_hex),
                        pixels_sha256: None,
                    }],
                    ..Default::default()
                }));
                parts.push(events.map(Part::Event));
            }
        }
        let (side_emb, side_parts) = jobs.read_sidecars(self.prefix.clone(), self.counters.clone());
        embeddings.push(side_emb);
        parts.push(side_parts);
        let shards = scope.concatenate(embeddings).gather_shards();
        parts.push(self.scorers.score(shards.clone()).map(Part::Col));
        parts.push(shards.map(|e| Part::Emb(Box::new(e))));
        scope.concatenate(parts).assemble_shards(self.columns.clone(), self.store_prefix.clone())
    }
}

/// What a worker wires behind the job source of a finite graph.
pub(crate) type Wire = Box<dyn for<'s> FnOnce(Scope<'s, u64>, Stream<'s, u64, Vec<Job>>)>;

/// Runs a finite graph: `jobs`, each at its own timestamp (1, 2, ...) and exchanged to the worker that runs it,
/// into what `build` wires on each worker (`build` gets the worker's index and loads what it needs first).
/// Returns once every job has passed through; an error of a worker's `build`, or a worker's panic, is the run's
/// error.
pub(crate) fn run_finite<B>(timely: timely::Config, jobs: Vec<Job>, build: B) -> Result<()>
where
    B: Fn(usize) -> Result<Wire> + Send + Sync + 'static,
{
    let jobs = Arc::new(jobs);
    let guards = timely::execute(timely, move |worker| {
        let wire = build(worker.index())?;
        let jobs = jobs.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            let index = scope.index();
            let stream = source::<u64, timely::container::CapacityContainerBuilder<Vec<Job>>, _, _>(
                scope,
                "Jobs",
                move |cap, _| {
                    let mut cap = (index == 0).then_some(cap);
                    move |output| {
                        if let Some(c) = cap.take() {
                            for (i, j) in jobs.iter().enumerate() {
                                output.session(&c.delayed(&(i as u64 + 1))).give(j.clone());
                            }
                        }
                    }
                },
            );
            wire(scope, stream.exchange(|j: &Job| j.route()));
        });
        Ok::<(), Error>(())
    })
    .map_err(|e| Error::Dataflow(e.to_string()))?;
    join(guards)
}

/// Waits for the workers; their errors (and panics) become one error.
pub(crate) fn join(guards: timely::communication::WorkerGuards<Result<()>>) -> Result<()> {
    let mut errors: Vec<Error> = Vec::new();
    for r in guards.join() {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(Error::Dataflow(format!("a worker panicked: {e}"))),
        }
    }
    // Workers usually fail alike (the same bad file): one error is the run's.
    errors.dedup_by(|a, b| a.report() == b.report());
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(Error::Dataflow(errors.iter().map(|e| e.report()).collect::<Vec<_>>().join("; "))),
    }
}
