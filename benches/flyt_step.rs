//! One FLYT step (the exact lookahead: reference gradient, AdamW step and Jacobian, downstream loss at θ',
//! embedding JVP, closed-form G, scoring-model step) against one plain CLIP training step of the same reference
//! model (forward, standard CLIP loss, backward, AdamW step), in the same process.
//!
//! `cargo bench --bench flyt_step -- [BATCH] [DOWN_BATCH] [CLASSES] [DIM] [cpu|cuda]`
//! Default: 4096 / 3072 / 1000 classes / 512-d (the paper's batch sizes, ImageNet's classes, B/32's width),
//! embedding reference mode (trainable projections over frozen embeddings). Under `cargo test` it runs once at
//! a tiny size as a smoke test.

use std::time::Instant;

use flyt::train::{
    AdamW, EmbeddingReference, FlytConfig, FlytState, GluHead, ParamAdamW, ScoringModel, clip_loss, train_flyt,
};
use flyt::train::{DownstreamTask, UpstreamPool};
use tch::{Device, Kind, Tensor};

fn main() {
    flyt::init_torch_runtime();
    let bench = std::env::args().any(|a| a == "--bench");
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let num =
        |i: usize, d: i64, tiny: i64| if bench { args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d) } else { tiny };
    let (n, m, c, d) = (num(0, 4096, 64), num(1, 3072, 48), num(2, 1000, 10), num(3, 512, 32));
    let dev = match args.get(4).map(String::as_str) {
        Some("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    };
    let reps = if bench { 5 } else { 1 };
    println!(
        "upstream batch {n}, downstream batch {m}, {c} classes, {d}-d, device {dev:?}, libtorch threads {}",
        tch::get_num_threads()
    );
    tch::manual_seed(0);
    let opts = (Kind::Float, dev);
    let norm = |x: Tensor| &x / x.norm_scalaropt_dim(2, [1i64].as_slice(), true);
    let pool = UpstreamPool {
        image: norm(Tensor::randn([n * 2, d], opts)),
        text: norm(Tensor::randn([n * 2, d], opts)),
        features: Tensor::zeros([1], opts),
    };
    let pool = UpstreamPool { features: Tensor::cat(&[&pool.image, &pool.text], 1), ..pool };
    let task = DownstreamTask {
        image: norm(Tensor::randn([m * 2, d], opts)),
        labels: Tensor::randint(c, [m * 2], (Kind::Int64, dev)),
        prompts: norm(Tensor::randn([c, 4, d], opts)),
    };
    let sync = || {
        if let Device::Cuda(i) = dev {
            tch::Cuda::synchronize(i as i64);
        }
    };

    // plain CLIP step on the same reference model
    let mut reference = EmbeddingReference::new(d, d, 0.01, AdamW::default(), Kind::Float, dev);
    let img = pool.image.narrow(0, 0, n);
    let txt = pool.text.narrow(0, 0, n);
    let mut plain = Vec::new();
    for _ in 0..reps + 1 {
        sync();
        let t = Instant::now();
        let u = EmbeddingReference::encode_image(&reference.params, &img);
        let v = EmbeddingReference::encode_text(&reference.params, &txt);
        let loss = clip_loss(&(u.matmul(&v.transpose(0, 1)) * reference.params[2].exp()));
        let grads = Tensor::run_backward(&[&loss], &reference.params, false, false);
        let mut params: Vec<Tensor> = reference.params.iter().map(|p| p.shallow_clone()).collect();
        reference.opt.step(&mut params, &grads, 5e-5);
        sync();
        plain.push(t.elapsed().as_secs_f64());
    }
    // FLYT steps
    let vs = tch::nn::VarStore::new(dev);
    let head = GluHead::new(&vs.root(), d);
    let config =
        FlytConfig { steps: reps + 1, batch: n as usize, down_batch: m as usize, warmup: 1, ..Default::default() };
    let mut state = FlytState {
        reference: EmbeddingReference::new(d, d, 0.01, config.adam, Kind::Float, dev),
        score_opt: ParamAdamW::new(config.adam, &head.named_parameters()),
        step: 0,
    };
    let mut flyt = Vec::new();
    let mut t = Instant::now();
    train_flyt(&head, &mut state, &pool, std::slice::from_ref(&task), &config, |_| {
        sync();
        flyt.push(t.elapsed().as_secs_f64());
        t = Instant::now();
        Ok(true)
    })
    .unwrap();
    // the first of each is a warm-up
    let med = |v: &mut Vec<f64>| {
        v.remove(0);
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (p, f) = (med(&mut plain), med(&mut flyt));
    println!("plain CLIP step {:.1} ms, FLYT step {:.1} ms: FLYT / plain = {:.2}×", p * 1e3, f * 1e3, f / p);
}
