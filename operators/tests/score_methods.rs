//! The scoring operators on 1 and 2 workers give, per uid, exactly what the `flyt::methods` functions give.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use flyt::Uid;
use flyt::clip::Embeddings;
use flyt::methods::{
    ImageClusters, KMeans, KMeansConfig, NegClipLossConfig, NormSimTarget, clip_score, neg_clip_loss, norm_sim,
};
use flyt::rng::SplitMix64;
use flyt_operators::{ScoreClip, ScoreImageClusters, ScoreNegClipLoss, ScoreNormSim};
use timely::dataflow::InputHandle;
use timely::dataflow::operators::{Concatenate, Input, Inspect};

const DIM: usize = 8;

fn batch(b: u64, rows: usize) -> Embeddings {
    let mut rng = SplitMix64::new(b);
    let mut v = || (rng.unit() * 2.0 - 1.0) as f32;
    let image: Vec<f32> = (0..rows * DIM).map(|_| v()).collect();
    let text: Vec<f32> = image.iter().map(|x| x + 0.5 * v()).collect();
    let ids = (0..rows as u64).map(|i| (Uid::from_parts(b, i), format!("{b}-{i}"))).collect();
    Embeddings { dim: DIM, image, text, ids, ..Default::default() }
}

type Scores = BTreeMap<(String, Uid), f32>;

fn run(workers: usize, batches: Vec<Embeddings>, target: Arc<Vec<f32>>, clusters: Arc<ImageClusters>) -> Scores {
    let got: Arc<Mutex<Scores>> = Arc::default();
    let sink = got.clone();
    let batches = Arc::new(batches);
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let sink = sink.clone();
        let (target, clusters) = (target.clone(), clusters.clone());
        let mut input = InputHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let s = scope.input_from(&mut input);
            let _: &timely::dataflow::Stream<_, Vec<Embeddings>> = &s;
            let cfg = NegClipLossConfig { batch_size: 16, repeats: 2, temperature: 0.05, seed: 3 };
            let cols = [
                s.clone().score_clip(),
                s.clone().score_neg_clip_loss(cfg, tch::Device::Cpu),
                s.clone().score_norm_sim(target, DIM, tch::Device::Cpu),
                s.score_image_clusters(clusters, 1),
            ];
            scope.concatenate(cols).inspect(move |c| {
                let mut g = sink.lock().unwrap();
                for (u, v) in c.uids.iter().zip(&c.values) {
                    assert!(g.insert((c.name.clone(), *u), *v).is_none(), "{} scored twice for {u}", c.name);
                }
            });
        });
        for (i, b) in batches.iter().enumerate() {
            if i % peers == index {
                input.send(b.clone());
            }
            input.advance_to(i as u64 + 1);
            worker.step();
        }
    })
    .unwrap();
    Arc::try_unwrap(got).unwrap().into_inner().unwrap()
}

#[test]
fn operators_match_the_functions_on_any_worker_count() {
    let batches: Vec<Embeddings> = (0..6).map(|b| batch(b, 20 + b as usize * 7)).collect();
    let target: Vec<f32> = batch(99, 10).image;
    let all: Vec<f32> = batches.iter().flat_map(|b| b.image.clone()).collect();
    let km = KMeans::fit(&all, DIM, &KMeansConfig { k: 4, seed: 1, threads: 1, ..Default::default() }).unwrap();
    let clusters = Arc::new(ImageClusters::new(km, &target, 1).unwrap());
    let target = Arc::new(target);
    // the oracle: the functions, batch by batch
    let mut want = Scores::new();
    let t = NormSimTarget::new(&target, DIM, tch::Device::Cpu).unwrap();
    let cfg = NegClipLossConfig { batch_size: 16, repeats: 2, temperature: 0.05, seed: 3 };
    for b in &batches {
        let uids: Vec<Uid> = b.ids.iter().map(|x| x.0).collect();
        let (p2, pinf) = norm_sim(&b.image, DIM, &t, 8192).unwrap();
        let (inside, sim) = clusters.score(&b.image, 1);
        let cols: Vec<(&str, Vec<f32>)> = vec![
            ("clip_score", clip_score(&b.image, &b.text, DIM).unwrap()),
            ("neg_clip_loss", neg_clip_loss(&uids, &b.image, &b.text, DIM, &cfg, tch::Device::Cpu).unwrap()),
            ("norm_sim_2", p2),
            ("norm_sim_inf", pinf),
            ("image_based", inside.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect()),
            ("image_based_sim", sim),
        ];
        for (name, v) in cols {
            for (u, x) in uids.iter().zip(v) {
                want.insert((name.to_string(), *u), x);
            }
        }
    }
    for workers in [1, 2] {
        let got = run(workers, batches.clone(), target.clone(), clusters.clone());
        assert_eq!(got.len(), want.len(), "{workers} workers");
        for (k, v) in &want {
            assert!((got[k] - v).abs() < 1e-6, "{workers} workers, {k:?}: {} vs {v}", got[k]);
        }
    }
}
