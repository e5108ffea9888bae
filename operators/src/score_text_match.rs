//! `ScoreTextMatch`: samples in, the `text_based` column out.

use std::sync::Arc;

use flyt::Sample;
use flyt::methods::{ClassNameMatcher, ScoreColumn};
use timely::dataflow::Stream;
use timely::progress::Timestamp;

use crate::score_each::score_each;

/// Scores sample batches by the number of downstream classes their caption names (`text_based`).
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
///     vec![vec![sample]].to_stream(s).score_text_match(m).inspect(move |c| sink.lock().unwrap().push(c.clone()));
/// });
/// let cols = got.lock().unwrap().clone();
/// assert_eq!(cols[0].values, vec![2.0]);
/// ```
pub trait ScoreTextMatch<'scope, T: Timestamp> {
    /// One `text_based` column per input batch.
    fn score_text_match(self, matcher: Arc<ClassNameMatcher>) -> Stream<'scope, T, Vec<ScoreColumn>>;
}

impl<'scope, T: Timestamp> ScoreTextMatch<'scope, T> for Stream<'scope, T, Vec<Vec<Sample>>> {
    fn score_text_match(self, matcher: Arc<ClassNameMatcher>) -> Stream<'scope, T, Vec<ScoreColumn>> {
        score_each(self, "ScoreTextMatch", move |batches: Vec<Vec<Sample>>| {
            batches
                .into_iter()
                .map(|batch| ScoreColumn {
                    name: "text_based".into(),
                    uids: batch.iter().map(|s| s.uid).collect(),
                    values: batch
                        .iter()
                        .map(|s| s.caption.as_deref().map_or(0.0, |c| matcher.count(c) as f32))
                        .collect(),
                })
                .collect()
        })
    }
}
