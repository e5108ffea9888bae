//! One FLYT step (the exact lookahead: reference gradient, AdamW step and Jacobian, downstream loss at θ',
//! embedding JVP, closed-form G, scoring-model step) against one plain CLIP training step of the same reference
//! model (forward, standard CLIP loss, backward, AdamW step), in the same process.
//!
//! `cargo bench --bench flyt_step -- [BATCH] [DOWN_BATCH] [CLASSES] [DIM] [cpu|cuda]`
//!   embedding reference mode (trainable projections over frozen embeddings); default 4096 / 3072 / 1000
//!   classes / 512-d (the paper's batch sizes, ImageNet's classes, B/32's width).
//! `cargo bench --bench flyt_step -- full [BATCH] [DOWN_BATCH] [CLASSES] [tiny|b32] [cpu|cuda] [CHUNK|-] [amp]`
//!   full reference mode (the CLIP towers; JVP by double backward); default 32 / 24 / 10 / tiny on CPU;
//!   CHUNK runs the towers that many examples at a time (gradient caching) in both steps; `amp` also times the
//!   FLYT step under fp16 autocast with loss scaling (`--amp`) against the f32 one, in the same run.
//! Under `cargo test` each mode runs once at a tiny size as a smoke test.

use std::time::Instant;

use flyt::train::{
    AdamW, EmbeddingReference, FlytConfig, FlytState, GluHead, ParamAdamW, ScoringModel, clip_loss, train_flyt,
};
use flyt::train::{DownstreamTask, UpstreamPool};
use tch::{Device, Kind, Tensor};

fn main() {
    flyt::init_torch_runtime();
    let bench = std::env::args().any(|a| a == "--bench");
    let mut args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let full = args.first().is_some_and(|a| a == "full");
    if full {
        args.remove(0);
    }
    if full || !bench {
        full_mode(bench, &args);
    }
    if !full {
        embedding_mode(bench, &args);
    }
}

fn median(v: &mut Vec<f64>) -> f64 {
    v.remove(0); // warm-up
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn full_mode(bench: bool, args: &[String]) {
    use flyt::train::{FullReference, Inner, PixelTaskBatch};
    let num =
        |i: usize, d: i64, tiny: i64| if bench { args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d) } else { tiny };
    let (n, m, c) = (num(0, 32, 8), num(1, 24, 6), num(2, 10, 3));
    let arch = args.get(3).map(String::as_str).unwrap_or("tiny");
    let dev = match args.get(4).map(String::as_str) {
        Some("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    };
    let config: flyt::clip::ClipConfig = match arch {
        "b32" => flyt::clip::ClipConfig::vit_b32(),
        _ => serde_json::from_value(serde_json::json!({
            "text_config": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4},
            "vision_config": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "image_size": 64, "patch_size": 16},
            "projection_dim": 64
        }))
        .expect("tiny config"),
    };
    let side = config.vision_config.image_size;
    let chunk: Option<usize> = args.get(5).and_then(|s| s.parse().ok());
    println!(
        "full mode ({arch}): upstream batch {n}, downstream batch {m}, {c} classes, device {dev:?}, chunk {chunk:?}"
    );
    tch::manual_seed(0);
    let opts = (Kind::Float, dev);
    let mut reference = FullReference::new(&config, None, AdamW::default(), Kind::Float, dev).expect("reference");
    reference.set_chunk(chunk);
    let ids = |rows: i64| {
        let body = Tensor::randint_low(1, 40000, [rows, 76], (Kind::Int64, dev));
        Tensor::cat(&[body, Tensor::full([rows, 1], 49407, (Kind::Int64, dev))], 1)
    };
    let (pixels, text) = (Tensor::randn([n, 3, side, side], opts), ids(n));
    let tasks = vec![PixelTaskBatch {
        pixels: Tensor::randn([m, 3, side, side], opts),
        labels: Tensor::randint(c, [m], (Kind::Int64, dev)),
        prompts: ids(c),
        captions: None,
    }];
    let sync = || {
        if let Device::Cuda(i) = dev {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let reps = if bench { 4 } else { 1 };
    let (mut plain, mut flyt) = (Vec::new(), Vec::new());
    for _ in 0..=reps {
        sync();
        let t = Instant::now();
        reference.plain_step(&pixels, &text, 5e-5);
        sync();
        plain.push(t.elapsed().as_secs_f64());
    }
    let s = Tensor::randn([n], opts);
    for _ in 0..=reps {
        sync();
        let t = Instant::now();
        let look = reference.lookahead(&s, &pixels, &text, &tasks, Inner::AdamW, 5e-5).expect("lookahead");
        reference.apply(look, 5e-5);
        sync();
        flyt.push(t.elapsed().as_secs_f64());
    }
    let (p, f) = (median(&mut plain), median(&mut flyt));
    println!("plain CLIP step {:.1} ms, FLYT step {:.1} ms: FLYT / plain = {:.2}×", p * 1e3, f * 1e3, f / p);
    if args.get(6).is_some_and(|a| a == "amp") {
        reference.set_amp(Some(flyt::train::LossScaler::new(1024.0)));
        let mut amp = Vec::new();
        for _ in 0..=reps {
            sync();
            let t = Instant::now();
            let look = reference.lookahead(&s, &pixels, &text, &tasks, Inner::AdamW, 5e-5).expect("lookahead");
            let skipped = look.overflow;
            reference.apply(look, 5e-5);
            sync();
            amp.push(t.elapsed().as_secs_f64());
            if skipped {
                println!("(an amp step overflowed and was skipped)");
            }
        }
        let a = median(&mut amp);
        println!("FLYT step under amp {:.1} ms: amp / f32 = {:.2}×", a * 1e3, a / f);
    }
}

fn embedding_mode(bench: bool, args: &[String]) {
    let num =
        |i: usize, d: i64, tiny: i64| if bench { args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d) } else { tiny };
    let (n, m, c, d) = (num(0, 4096, 64), num(1, 3072, 48), num(2, 1000, 10), num(3, 512, 32));
    let dev = match args.get(4).map(String::as_str) {
        Some("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    };
    let reps = if bench { 5 } else { 1 };
    println!(
        "embedding mode: upstream batch {n}, downstream batch {m}, {c} classes, {d}-d, device {dev:?}, libtorch threads {}",
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
        captions: None,
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
    let (p, f) = (median(&mut plain), median(&mut flyt));
    println!("plain CLIP step {:.1} ms, FLYT step {:.1} ms: FLYT / plain = {:.2}×", p * 1e3, f * 1e3, f / p);
}
