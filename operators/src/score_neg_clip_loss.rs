//! `ScoreNegClipLoss`: embeddings in, the `neg_clip_loss` column out.

use flyt::clip::Embeddings;
use flyt::methods::{NegClipLossConfig, ScoreColumn, neg_clip_loss};
use timely::dataflow::Stream;
use timely::progress::Timestamp;

use crate::score_each::{or_log, score_each, uids};

/// Scores embedding batches by negCLIPLoss, each batch (a shard, as the authors' code does) partitioned into
/// its own random batches. The result depends only on the batch's uids and embeddings, not on their order.
///
/// ```
/// use flyt::clip::Embeddings;
/// use flyt::methods::NegClipLossConfig;
/// use flyt_operators::ScoreNegClipLoss;
/// use std::sync::{Arc as Shared, Mutex};
/// use timely::dataflow::operators::{Inspect, ToStream};
///
/// let batch = Embeddings {
///     dim: 2,
///     image: vec![1.0, 0.0, 0.0, 1.0],
///     text: vec![1.0, 0.0, 0.0, 1.0],
///     ids: vec![(flyt::Uid::from_parts(0, 1), "a".into()), (flyt::Uid::from_parts(0, 2), "b".into())],
///     ..Default::default()
/// };
/// let cfg = NegClipLossConfig { temperature: 1.0, ..Default::default() };
/// let got = Shared::new(Mutex::new(Vec::new()));
/// let sink = got.clone();
/// timely::example(move |scope| {
///     vec![batch].to_stream(scope).score_neg_clip_loss(cfg, tch::Device::Cpu).inspect(move |c| sink.lock().unwrap().push(c.clone()));
/// });
/// let cols = got.lock().unwrap().clone();
/// let want = 1.0 - (1f64.exp() + 1.0).ln(); // by hand: s = I, τ = 1
/// assert!((cols[0].values[0] as f64 - want).abs() < 1e-6);
/// ```
pub trait ScoreNegClipLoss<'scope, T: Timestamp> {
    /// One `neg_clip_loss` column per input batch.
    fn score_neg_clip_loss(self, config: NegClipLossConfig, device: tch::Device)
    -> Stream<'scope, T, Vec<ScoreColumn>>;
}

impl<'scope, T: Timestamp> ScoreNegClipLoss<'scope, T> for Stream<'scope, T, Vec<Embeddings>> {
    fn score_neg_clip_loss(
        self,
        config: NegClipLossConfig,
        device: tch::Device,
    ) -> Stream<'scope, T, Vec<ScoreColumn>> {
        score_each(self, "ScoreNegClipLoss", move |batches: Vec<Embeddings>| {
            let mut out = Vec::new();
            for e in batches {
                let ids = uids(&e);
                let r = neg_clip_loss(&ids, &e.image, &e.text, e.dim, &config, device)
                    .and_then(|v| ScoreColumn::new("neg_clip_loss", ids, v))
                    .map(|c| vec![c]);
                out.extend(or_log("ScoreNegClipLoss", r));
            }
            out
        })
    }
}
