//! `ScoreClip`: embeddings in, the `clip_score` column out.

use flyt::clip::Embeddings;
use flyt::methods::{ScoreColumn, clip_score};
use timely::dataflow::Stream;
use timely::progress::Timestamp;

use crate::score_each::{or_log, score_each, uids};

/// Scores embedding batches by CLIP score (the cosine of image and caption embeddings).
///
/// ```
/// use flyt::clip::Embeddings;
/// use flyt_operators::ScoreClip;
/// use std::sync::{Arc as Shared, Mutex};
/// use timely::dataflow::operators::{Inspect, ToStream};
///
/// let batch = Embeddings {
///     dim: 2,
///     image: vec![1.0, 0.0, 0.0, 1.0],
///     text: vec![1.0, 0.0, 1.0, 0.0],
///     ids: vec![(flyt::Uid::from_parts(0, 1), "a".into()), (flyt::Uid::from_parts(0, 2), "b".into())],
///     ..Default::default()
/// };
/// let got = Shared::new(Mutex::new(Vec::new()));
/// let sink = got.clone();
/// timely::example(move |scope| {
///     vec![batch].to_stream(scope).score_clip().inspect(move |c| sink.lock().unwrap().push(c.clone()));
/// });
/// let cols = got.lock().unwrap().clone();
/// assert_eq!(cols[0].name, "clip_score");
/// assert_eq!(cols[0].values, vec![1.0, 0.0]);
/// ```
pub trait ScoreClip<'scope, T: Timestamp> {
    /// One `clip_score` column per input batch.
    fn score_clip(self) -> Stream<'scope, T, Vec<ScoreColumn>>;
}

impl<'scope, T: Timestamp> ScoreClip<'scope, T> for Stream<'scope, T, Vec<Embeddings>> {
    fn score_clip(self) -> Stream<'scope, T, Vec<ScoreColumn>> {
        score_each(self, "ScoreClip", |batches: Vec<Embeddings>| {
            let mut out = Vec::new();
            for e in batches {
                let r = clip_score(&e.image, &e.text, e.dim)
                    .and_then(|v| ScoreColumn::new("clip_score", uids(&e), v))
                    .map(|c| vec![c]);
                out.extend(or_log("ScoreClip", r));
            }
            out
        })
    }
}
