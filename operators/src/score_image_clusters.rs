//! `ScoreImageClusters`: embeddings in, the `image_based` and `image_based_sim` columns out.

use std::sync::Arc;

use flyt::clip::Embeddings;
use flyt::methods::{ImageClusters, ScoreColumn};
use timely::dataflow::Stream;
use timely::progress::Timestamp;

use crate::score_each::{score_each, uids};

/// Scores embedding batches by DataComp's image-based clustering: `image_based` is 1 when the image's nearest
/// centroid is one of the downstream set's, `image_based_sim` the cosine to the nearest such centroid.
///
/// ```
/// use std::sync::Arc;
/// use flyt::clip::Embeddings;
/// use flyt::methods::{ImageClusters, KMeans};
/// use flyt_operators::ScoreImageClusters;
/// use std::sync::{Arc as Shared, Mutex};
/// use timely::dataflow::operators::{Inspect, ToStream};
///
/// let km = KMeans::from_centroids(&[1.0, 0.0, 0.0, 1.0], 2).unwrap();
/// let clusters = Arc::new(ImageClusters::new(km, &[0.9, 0.1], 1).unwrap());
/// let batch = Embeddings {
///     dim: 2,
///     image: vec![1.0, 0.1, 0.1, 1.0],
///     text: vec![0.0; 4],
///     ids: vec![(flyt::Uid::from_parts(0, 1), "a".into()), (flyt::Uid::from_parts(0, 2), "b".into())],
///     ..Default::default()
/// };
/// let got = Shared::new(Mutex::new(Vec::new()));
/// let sink = got.clone();
/// timely::example(move |s| {
///     vec![batch].to_stream(s).score_image_clusters(clusters, 1).inspect(move |c| sink.lock().unwrap().push(c.clone()));
/// });
/// let cols = got.lock().unwrap().clone();
/// assert_eq!(cols[0].values, vec![1.0, 0.0]);
/// ```
pub trait ScoreImageClusters<'scope, T: Timestamp> {
    /// Two columns per input batch: `image_based`, `image_based_sim`.
    fn score_image_clusters(self, clusters: Arc<ImageClusters>, threads: usize) -> Stream<'scope, T, Vec<ScoreColumn>>;
}

impl<'scope, T: Timestamp> ScoreImageClusters<'scope, T> for Stream<'scope, T, Vec<Embeddings>> {
    fn score_image_clusters(self, clusters: Arc<ImageClusters>, threads: usize) -> Stream<'scope, T, Vec<ScoreColumn>> {
        score_each(self, "ScoreImageClusters", move |batches: Vec<Embeddings>| {
            let mut out = Vec::new();
            for e in batches {
                if e.dim != clusters.kmeans().dim() {
                    tracing::error!(
                        operator = "ScoreImageClusters",
                        "batch is {}-d, centroids {}-d",
                        e.dim,
                        clusters.kmeans().dim()
                    );
                    continue;
                }
                let (inside, sim) = clusters.score(&e.image, threads);
                let ids = uids(&e);
                let mask = inside.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect();
                out.push(ScoreColumn { name: "image_based".into(), uids: ids.clone(), values: mask });
                out.push(ScoreColumn { name: "image_based_sim".into(), uids: ids, values: sim });
            }
            out
        })
    }
}
