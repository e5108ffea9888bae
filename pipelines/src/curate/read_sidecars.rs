//! `read_sidecars`: shard jobs whose embeddings are a DataComp sidecar pair (`<stem>.parquet` + `<stem>.npz`)
//! in, embeddings and the read's counts out. One file pair per activation.

use std::collections::VecDeque;

use flyt::clip::Embeddings;
use flyt_operators::ShardEvent;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::Operator;

use super::commit::Part;
use super::records::read_sidecar;
use super::source::{Job, Via};

#[derive(Clone, Debug)]
enum Out {
    Emb(Embeddings),
    Part(Part),
}

/// Reads sidecar jobs (other jobs are ignored); returns (embeddings, parts for the commit step).
pub fn read_sidecars<'s>(
    jobs: Stream<'s, u64, Vec<Job>>,
    prefix: Option<String>,
    progress: std::sync::Arc<super::Progress>,
) -> (Stream<'s, u64, Vec<Embeddings>>, Stream<'s, u64, Vec<Part>>) {
    let scope = jobs.scope();
    let out = jobs.unary::<CapacityContainerBuilder<Vec<Out>>, _, _, _>(Pipeline, "ReadSidecars", move |_, info| {
        let activator = scope.activator_for(info.address);
        let mut queue: VecDeque<(Capability<u64>, String, std::path::PathBuf, std::path::PathBuf)> = VecDeque::new();
        move |input, output| {
            input.for_each(|cap, data| {
                let Some(c) = cap.retain_least(0) else { return };
                for j in data.drain(..) {
                    if let Job::Shard { name, via: Via::Sidecar { parquet, npz, .. }, .. } = j {
                        queue.push_back((c.clone(), name, parquet, npz));
                    }
                }
            });
            if let Some((cap, name, parquet, npz)) = queue.pop_front() {
                let mut session = output.session(&cap);
                let started = std::time::Instant::now();
                let read = read_sidecar(&name, &parquet, &npz, prefix.as_deref());
                progress
                    .read_micros
                    .fetch_add(started.elapsed().as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
                match read {
                    Ok((emb, stats, rejects, prefix)) => {
                        if !emb.ids.is_empty() {
                            session.give(Out::Emb(emb));
                        }
                        session.give(Out::Part(Part::Sidecar(Box::new((stats, rejects, prefix)))));
                    }
                    Err(e) => session
                        .give(Out::Part(Part::Event(ShardEvent::Failed { path: parquet, error: format!("{e:#}") }))),
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
