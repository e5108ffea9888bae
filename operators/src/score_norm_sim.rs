//! `ScoreNormSim`: embeddings in, the `norm_sim_2` and `norm_sim_inf` columns out.

use std::sync::Arc;

use flyt::clip::Embeddings;
use flyt::methods::{NormSimTarget, ScoreColumn, norm_sim};
use timely::dataflow::Stream;
use timely::progress::Timestamp;

use crate::score_each::{or_log, score_each, uids};

/// Scores embedding batches by NormSim₂ and NormSim∞ of their image embeddings against a downstream set
/// (`rows × dim`, shared by all workers; each worker prepares it on `device` once).
///
/// ```
/// use std::sync::Arc;
/// use flyt::clip::Embeddings;
/// use flyt_operators::ScoreNormSim;
/// use std::sync::{Arc as Shared, Mutex};
/// use timely::dataflow::operators::{Inspect, ToStream};
///
/// let batch = Embeddings {
///     dim: 2,
///     image: vec![1.0, 0.0, 0.6, 0.8],
///     text: vec![0.0; 4],
///     ids: vec![(flyt::Uid::from_parts(0, 1), "a".into()), (flyt::Uid::from_parts(0, 2), "b".into())],
///     ..Default::default()
/// };
/// let target = Arc::new(vec![1.0f32, 0.0]);
/// let got = Shared::new(Mutex::new(Vec::new()));
/// let sink = got.clone();
/// timely::example(move |s| {
///     vec![batch].to_stream(s).score_norm_sim(target, 2, tch::Device::Cpu).inspect(move |c| sink.lock().unwrap().push(c.clone()));
/// });
/// let cols = got.lock().unwrap().clone();
/// assert_eq!(cols[1].name, "norm_sim_inf");
/// assert!((cols[1].values[1] - 0.6).abs() < 1e-6);
/// ```
pub trait ScoreNormSim<'scope, T: Timestamp> {
    /// Two columns per input batch: `norm_sim_2`, `norm_sim_inf`.
    fn score_norm_sim(
        self,
        target: Arc<Vec<f32>>,
        dim: usize,
        device: tch::Device,
    ) -> Stream<'scope, T, Vec<ScoreColumn>>;
}

impl<'scope, T: Timestamp> ScoreNormSim<'scope, T> for Stream<'scope, T, Vec<Embeddings>> {
    fn score_norm_sim(
        self,
        target: Arc<Vec<f32>>,
        dim: usize,
        device: tch::Device,
    ) -> Stream<'scope, T, Vec<ScoreColumn>> {
        let mut prepared: Option<NormSimTarget> = None;
        score_each(self, "ScoreNormSim", move |batches: Vec<Embeddings>| {
            let mut out = Vec::new();
            for e in batches {
                let r = (|| {
                    if prepared.is_none() {
                        prepared = Some(NormSimTarget::new(&target, dim, device)?);
                    }
                    let t = prepared.as_ref().expect("prepared above");
                    let (p2, pinf) = norm_sim(&e.image, e.dim, t, 8192)?;
                    let ids = uids(&e);
                    Ok(vec![
                        ScoreColumn::new("norm_sim_2", ids.clone(), p2)?,
                        ScoreColumn::new("norm_sim_inf", ids, pinf)?,
                    ])
                })();
                out.extend(or_log("ScoreNormSim", r));
            }
            out
        })
    }
}
