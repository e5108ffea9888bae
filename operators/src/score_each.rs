//! The shared shape of the scoring operators: each input container (a shard's or a batch's records) becomes
//! score columns, on the worker that holds it.

use flyt::methods::ScoreColumn;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::progress::Timestamp;

/// Applies `f` to every input container (moved out, so records are not copied) and emits its columns with the
/// container's timestamp. No exchange: records stay on their worker.
pub(crate) fn score_each<'scope, T, D, F>(
    stream: Stream<'scope, T, Vec<D>>,
    name: &str,
    mut f: F,
) -> Stream<'scope, T, Vec<ScoreColumn>>
where
    T: Timestamp,
    D: Clone + 'static,
    F: FnMut(Vec<D>) -> Vec<ScoreColumn> + 'static,
{
    stream.unary::<CapacityContainerBuilder<Vec<ScoreColumn>>, _, _, _>(Pipeline, name, move |_cap, _info| {
        move |input, output| {
            input.for_each(|cap, data| {
                let columns = f(std::mem::take(data));
                let mut session = output.session(&cap);
                for c in columns {
                    session.give(c);
                }
            });
        }
    })
}

/// Logs a scoring error (a configuration error such as a dimension mismatch: data errors are rejected before
/// scoring) and yields no columns for that container.
pub(crate) fn or_log(op: &str, r: flyt::Result<Vec<ScoreColumn>>) -> Vec<ScoreColumn> {
    r.unwrap_or_else(|e| {
        tracing::error!(operator = op, error = %e, "batch not scored");
        Vec::new()
    })
}

/// The uids of an embeddings batch.
pub(crate) fn uids(e: &flyt::clip::Embeddings) -> Vec<flyt::Uid> {
    e.uids()
}

/// The captions and sizes of an embeddings batch, one per row, or an error saying they were not kept with the
/// embeddings (stored by an older flyt: re-embed, or re-read the shard's own sidecar).
pub(crate) fn meta_of<'a>(e: &'a flyt::clip::Embeddings, op: &str) -> flyt::Result<&'a [flyt::RowMeta]> {
    if e.meta.len() == e.ids.len() {
        return Ok(&e.meta);
    }
    Err(flyt::Error::Config(format!(
        "{op}: {} rows but {} captions: these embeddings were stored without their captions and sizes",
        e.ids.len(),
        e.meta.len()
    )))
}
