//! `ScoreFlyt`: embeddings in, the `flyt` column (a trained FLYT head's scores) out.

use std::rc::Rc;

use flyt::clip::Embeddings;
use flyt::methods::ScoreColumn;
use flyt::train::FlytScorer;
use timely::dataflow::Stream;
use timely::progress::Timestamp;

use crate::score_each::{or_log, score_each, uids};

/// Scores embedding batches with a FLYT head (loaded once per worker), on the worker that holds them.
pub trait ScoreFlyt<'scope, T: Timestamp> {
    /// One `flyt` column per input batch.
    fn score_flyt(self, head: Rc<FlytScorer>) -> Stream<'scope, T, Vec<ScoreColumn>>;
}

impl<'scope, T: Timestamp> ScoreFlyt<'scope, T> for Stream<'scope, T, Vec<Embeddings>> {
    fn score_flyt(self, head: Rc<FlytScorer>) -> Stream<'scope, T, Vec<ScoreColumn>> {
        score_each(self, "ScoreFlyt", move |batches: Vec<Embeddings>| {
            let mut out = Vec::new();
            for e in batches {
                let r = if e.dim != head.dim() {
                    Err(flyt::Error::Config(format!(
                        "embeddings are {}-d, the FLYT head {} takes {}-d",
                        e.dim,
                        head.path().display(),
                        head.dim()
                    )))
                } else {
                    head.score(&e.image, &e.text).and_then(|v| ScoreColumn::new("flyt", uids(&e), v)).map(|c| vec![c])
                };
                out.extend(or_log("ScoreFlyt", r));
            }
            out
        })
    }
}
