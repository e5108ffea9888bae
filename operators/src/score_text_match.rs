//! `ScoreTextMatch`: samples or embedded rows in, the `text_based` column out.

use std::sync::Arc;

use flyt::clip::Embeddings;
use flyt::methods::{ClassNameMatcher, ScoreColumn};
use flyt::{Sample, Uid};
use timely::dataflow::Stream;
use timely::progress::Timestamp;

use crate::score_each::{meta_of, or_log, score_each};

/// Scores sample batches — or embedded rows, by their captions ([`Embeddings::meta`]) — by the number of
/// downstream classes their caption names (`text_based`).
///
/// ```
/// use std::sync::Arc;
/// use flyt::methods::ClassNameMatcher;
/// use flyt_operators::ScoreTextMatch;
/// use std::sync::{Arc as Shared, Mutex};
/// use timely::dataflow::operators::{Inspect, ToStream};
///
/// let sample = flyt::SampleBuilder::new("k").caption("two sandals and a bag").build();
/// let m = Arc::new(ClassNameMatcher::new(&["sandal", "bag", "coat"]));
/// let got = Shared::new(Mutex::new(Vec::new()));
/// let sink = got.clone();
/// timely::example(move |s| {
///     let samples = vec![vec![sample]].to_stream(s).container::<Vec<Vec<flyt::Sample>>>();
///     samples.score_text_match(m).inspect(move |c| sink.lock().unwrap().push(c.clone()));
/// });
/// let cols = got.lock().unwrap().clone();
/// assert_eq!(cols[0].values, vec![2.0]);
/// ```
pub trait ScoreTextMatch<'scope, T: Timestamp> {
    /// One `text_based` column per input batch.
    fn score_text_match(self, matcher: Arc<ClassNameMatcher>) -> Stream<'scope, T, Vec<ScoreColumn>>;
}

fn column<'a>(m: &ClassNameMatcher, uids: Vec<Uid>, captions: impl Iterator<Item = Option<&'a str>>) -> ScoreColumn {
    ScoreColumn {
        name: "text_based".into(),
        uids,
        values: captions.map(|c| c.map_or(0.0, |c| m.count(c) as f32)).collect(),
    }
}

impl<'scope, T: Timestamp> ScoreTextMatch<'scope, T> for Stream<'scope, T, Vec<Vec<Sample>>> {
    fn score_text_match(self, matcher: Arc<ClassNameMatcher>) -> Stream<'scope, T, Vec<ScoreColumn>> {
        score_each(self, "ScoreTextMatch", move |batches: Vec<Vec<Sample>>| {
            batches
                .into_iter()
                .map(|b| column(&matcher, b.iter().map(|s| s.uid).collect(), b.iter().map(|s| s.caption.as_deref())))
                .collect()
        })
    }
}

impl<'scope, T: Timestamp> ScoreTextMatch<'scope, T> for Stream<'scope, T, Vec<Embeddings>> {
    fn score_text_match(self, matcher: Arc<ClassNameMatcher>) -> Stream<'scope, T, Vec<ScoreColumn>> {
        score_each(self, "ScoreTextMatch", move |batches: Vec<Embeddings>| {
            let mut out = Vec::new();
            for e in batches {
                let r = meta_of(&e, "ScoreTextMatch")
                    .map(|meta| vec![column(&matcher, e.uids(), meta.iter().map(|m| m.text.as_deref()))]);
                out.extend(or_log("ScoreTextMatch", r));
            }
            out
        })
    }
}
