//! `ScoreBasic`: samples or embedded rows in, DataComp's basic-filter feature columns out.

use flyt::clip::Embeddings;
use flyt::methods::{BasicFeatures, BasicFilter, ImageSize, ScoreColumn};
use flyt::{Sample, Uid};
use timely::dataflow::Stream;
use timely::progress::Timestamp;

use crate::score_each::{meta_of, or_log, score_each};

/// Scores sample batches — or embedded rows, from their captions and sizes ([`Embeddings::meta`]) — with
/// DataComp's basic-filter features: `caption_words`, `caption_chars`, `english` (1/0), `image_min_side`,
/// `image_aspect` (from img2dataset's `original_width`/`original_height` in the `.json` or the metadata
/// parquet, else the image header), and `basic` (1 when [`BasicFilter::default`] keeps the sample).
///
/// ```
/// use flyt_operators::ScoreBasic;
/// use std::sync::{Arc as Shared, Mutex};
/// use timely::dataflow::operators::{Inspect, ToStream};
///
/// let dir = tempfile::tempdir().unwrap();
/// let shards = flyt::synth::SynthPool { shards: 1, samples_per_shard: 3, ..Default::default() }.write(dir.path()).unwrap();
/// let mut samples = Vec::new();
/// flyt::Ingest::new(flyt::ReaderConfig::default())
///     .read_shard(&shards[0], |r| if let flyt::Record::Sample(s) = r { samples.push(*s) })
///     .unwrap();
/// let got = Shared::new(Mutex::new(Vec::new()));
/// let sink = got.clone();
/// timely::example(move |s| {
///     let samples = vec![samples].to_stream(s).container::<Vec<Vec<flyt::Sample>>>();
///     samples.score_basic().inspect(move |c| sink.lock().unwrap().push(c.clone()));
/// });
/// let cols = got.lock().unwrap().clone();
/// assert_eq!(cols.len(), 6);
/// assert!(cols.iter().all(|c| c.values.len() == 3));
/// ```
pub trait ScoreBasic<'scope, T: Timestamp> {
    /// Six columns per input batch.
    fn score_basic(self) -> Stream<'scope, T, Vec<ScoreColumn>>;
}

/// The six columns of a batch of (uid, caption, image size) rows.
fn columns(uids: Vec<Uid>, rows: &[(Option<&str>, ImageSize)]) -> Vec<ScoreColumn> {
    let filter = BasicFilter::default();
    let f = BasicFeatures::batch(rows);
    let col = |name: &str, v: Vec<f32>| ScoreColumn { name: name.into(), uids: uids.clone(), values: v };
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    vec![
        col("caption_words", f.iter().map(|x| x.words as f32).collect()),
        col("caption_chars", f.iter().map(|x| x.chars as f32).collect()),
        col("english", f.iter().map(|x| flag(x.english)).collect()),
        col("image_min_side", f.iter().map(|x| x.min_side() as f32).collect()),
        col("image_aspect", f.iter().map(|x| x.aspect().min(f32::MAX as f64) as f32).collect()),
        col("basic", f.iter().map(|x| flag(filter.keeps(x))).collect()),
    ]
}

impl<'scope, T: Timestamp> ScoreBasic<'scope, T> for Stream<'scope, T, Vec<Vec<Sample>>> {
    fn score_basic(self) -> Stream<'scope, T, Vec<ScoreColumn>> {
        score_each(self, "ScoreBasic", move |batches: Vec<Vec<Sample>>| {
            let mut out = Vec::new();
            for batch in batches {
                let rows: Vec<_> = batch.iter().map(|s| (s.caption.as_deref(), s.original_size())).collect();
                out.extend(columns(batch.iter().map(|s| s.uid).collect(), &rows));
            }
            out
        })
    }
}

impl<'scope, T: Timestamp> ScoreBasic<'scope, T> for Stream<'scope, T, Vec<Embeddings>> {
    fn score_basic(self) -> Stream<'scope, T, Vec<ScoreColumn>> {
        score_each(self, "ScoreBasic", move |batches: Vec<Embeddings>| {
            let mut out = Vec::new();
            for e in batches {
                let r = meta_of(&e, "ScoreBasic").map(|meta| {
                    let rows: Vec<_> = meta.iter().map(|m| (m.text.as_deref(), m.original_size)).collect();
                    columns(e.uids(), &rows)
                });
                out.extend(or_log("ScoreBasic", r));
            }
            out
        })
    }
}
