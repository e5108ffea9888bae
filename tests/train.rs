//! FLYT's hypergradient against finite differences (f64), and training behaviour on planted pools.

use flyt::train::{AdamW, DownstreamBatch, EmbeddingReference, Inner};
use tch::{Device, Kind, Tensor};

const OPTS: (Kind, Device) = (Kind::Double, Device::Cpu);

/// These tests seed libtorch's process-wide random generator (`tch::manual_seed`) and then draw from it; a test
/// running concurrently in another thread would draw from the same generator in between. They take turns (a
/// real run is one training per process).
static TORCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn torch_turn() -> std::sync::MutexGuard<'static, ()> {
    TORCH.lock().unwrap_or_else(|e| e.into_inner())
}

struct Setup {
    reference: EmbeddingReference,
    up_image: Tensor,
    up_text: Tensor,
    tasks: Vec<DownstreamBatch>,
    s: Tensor,
}

fn setup(seed: i64) -> Setup {
    tch::manual_seed(seed);
    let (din, dout, n) = (6, 5, 8);
    let reference = EmbeddingReference::new(din, dout, 0.3, AdamW::default(), Kind::Double, Device::Cpu);
    let up_image = Tensor::randn([n, din], OPTS);
    let up_text = &up_image * 0.5 + Tensor::randn([n, din], OPTS);
    let task = |m: i64, c: i64| DownstreamBatch {
        image: Tensor::randn([m, din], OPTS),
        labels: Tensor::randint(c, [m], (Kind::Int64, Device::Cpu)),
        prompts: Tensor::randn([c, din], OPTS),
        captions: None,
    };
    let tasks = vec![task(6, 3), task(5, 4)];
    let s = Tensor::randn([n], OPTS);
    Setup { reference, up_image, up_text, tasks, s }
}

/// ∂L_down/∂s by the closed-form pipeline vs central differences of L_down(θ'(softmax(s))).
fn check_against_finite_differences(x: &Setup, inner: Inner, lr: f64) {
    let look = x.reference.lookahead(&x.s, &x.up_image, &x.up_text, &x.tasks, inner, lr).unwrap();
    let n = x.s.size()[0];
    let h = 1e-6;
    let mut worst = 0f64;
    let mut scale = 0f64;
    for k in 0..n {
        let e = Tensor::zeros([n], OPTS).index_fill(0, &Tensor::from_slice(&[k]), h);
        let down =
            |s: &Tensor| x.reference.lookahead(s, &x.up_image, &x.up_text, &x.tasks, inner, lr).unwrap().down_loss;
        let fd = (down(&(&x.s + &e)) - down(&(&x.s - &e))) / (2.0 * h);
        let got = look.g_s.double_value(&[k]);
        worst = worst.max((fd - got).abs());
        scale = scale.max(fd.abs());
    }
    assert!(scale > 1e-5, "{inner:?}: the test is vacuous (gradient scale {scale})");
    assert!(worst < 1e-6, "{inner:?} lr {lr}: max |closed form − finite differences| = {worst} (scale {scale})");
    let sum = look.g_s.sum(Kind::Double).double_value(&[]);
    assert!(sum.abs() < 1e-12, "Σ_k ∂J/∂s_k = {sum}");
}

#[test]
fn hypergradient_matches_finite_differences_sgd() {
    let _turn = torch_turn();
    let x = setup(1);
    check_against_finite_differences(&x, Inner::Sgd, 0.5);
}

#[test]
fn hypergradient_matches_finite_differences_adamw() {
    let _turn = torch_turn();
    let mut x = setup(2);
    // one real step first, so the moments are not zero
    let first = x.reference.lookahead(&x.s, &x.up_image, &x.up_text, &x.tasks, Inner::AdamW, 0.05).unwrap();
    x.reference.apply(first, 0.05);
    x.s = Tensor::randn([8], OPTS);
    check_against_finite_differences(&x, Inner::AdamW, 0.05);
}

#[test]
fn hypergradient_matches_finite_differences_with_the_downstream_clip_loss() {
    let _turn = torch_turn();
    let mut x = setup(4);
    // notes §2.4 (b): one task scored by the CLIP loss of its (image, caption) pairs, one by the classifier
    x.tasks[0].captions = Some(&x.tasks[0].image * 0.5 + Tensor::randn([6, 6], OPTS));
    check_against_finite_differences(&x, Inner::Sgd, 0.5);
    check_against_finite_differences(&x, Inner::AdamW, 0.05);
}

#[test]
fn hypergradient_vanishes_with_the_reference_lr_and_ignores_a_score_shift() {
    let _turn = torch_turn();
    let x = setup(3);
    let g = |lr: f64, s: &Tensor| {
        x.reference
            .lookahead(s, &x.up_image, &x.up_text, &x.tasks, Inner::Sgd, lr)
            .unwrap()
            .g_w
            .abs()
            .max()
            .double_value(&[])
    };
    let (big, small) = (g(1e-2, &x.s), g(1e-9, &x.s));
    assert!(big > 0.0 && small < 1e-6 * big, "G at lr 1e-2: {big}, at 1e-9: {small}");
    // G is linear in the lr to first order
    let ratio = g(2e-6, &x.s) / g(1e-6, &x.s);
    assert!((ratio - 2.0).abs() < 1e-3, "G(2η)/G(η) = {ratio}");
    // adding a constant to every score changes nothing
    let a = x.reference.lookahead(&x.s, &x.up_image, &x.up_text, &x.tasks, Inner::AdamW, 1e-2).unwrap().g_s;
    let b = x.reference.lookahead(&(&x.s + 3.0), &x.up_image, &x.up_text, &x.tasks, Inner::AdamW, 1e-2).unwrap().g_s;
    assert!((a - b).abs().max().double_value(&[]) < 1e-12);
}

/// A planted pool over synthetic frozen "CLIP" embeddings: per class c an image direction a_c and a text
/// direction b_c. Downstream: images a_c + noise with labels, prompts b_c + noise (3 templates). Upstream thirds:
/// duplicates of downstream pairs (image + a prompt of its class), clean but weaker pairs
/// (0.6·a_c + 0.8·r, 0.6·b_c + 0.8·r'), and caption-shuffled pairs (a_c + noise, b_{c'≠c} + noise).
struct Planted {
    pool: flyt::train::UpstreamPool,
    scores_in: Tensor,
    kind: Vec<u8>,
    task: flyt::train::DownstreamTask,
    din: i64,
}

fn planted(seed: i64, scale: i64) -> Planted {
    tch::manual_seed(seed);
    let opts = (Kind::Float, Device::Cpu);
    let (din, classes) = (16i64, 4i64);
    let (n_dup, n_clean, n_sh) = (40 * scale, 100 * scale, 100 * scale);
    let norm = |x: Tensor| &x / x.norm_scalaropt_dim(2, [1i64].as_slice(), true);
    // a "pretrained" frozen CLIP: a class's text direction is close to its image direction
    let a = norm(Tensor::randn([classes, din], opts));
    let b = norm(&a + Tensor::randn([classes, din], opts) * 0.15);
    let noise = |n: i64| Tensor::randn([n, din], opts) * 0.15;
    let m = classes * 40 * scale;
    let labels = Tensor::arange(m, (Kind::Int64, Device::Cpu)).remainder(classes);
    let down_img = norm(a.index_select(0, &labels) + noise(m));
    let prompts = norm(b.unsqueeze(1).repeat([1, 3, 1]) + Tensor::randn([classes, 3, din], opts) * 0.1);
    // duplicates: downstream images with their class's first prompt
    let dl = labels.narrow(0, 0, n_dup);
    let dup_img = down_img.narrow(0, 0, n_dup);
    let dup_txt = prompts.select(1, 0).index_select(0, &dl);
    let cl = Tensor::randint(classes, [n_clean], (Kind::Int64, Device::Cpu));
    let clean_img = norm(a.index_select(0, &cl) * 0.6 + norm(Tensor::randn([n_clean, din], opts)) * 0.8);
    let clean_txt = norm(b.index_select(0, &cl) * 0.6 + norm(Tensor::randn([n_clean, din], opts)) * 0.8);
    let sl = Tensor::randint(classes, [n_sh], (Kind::Int64, Device::Cpu));
    let other = (&sl + Tensor::randint_low(1, classes, [n_sh], (Kind::Int64, Device::Cpu))).remainder(classes);
    let sh_img = norm(a.index_select(0, &sl) + noise(n_sh));
    let sh_txt = norm(b.index_select(0, &other) + noise(n_sh));
    let image = Tensor::cat(&[dup_img, clean_img, sh_img], 0);
    let text = Tensor::cat(&[dup_txt, clean_txt, sh_txt], 0);
    let features = Tensor::cat(&[&image, &text], 1);
    let kind: Vec<u8> =
        [(0u8, n_dup), (1, n_clean), (2, n_sh)].iter().flat_map(|&(k, n)| std::iter::repeat_n(k, n as usize)).collect();
    // M-FLYT inputs: [good, noise, −good]; good = 2/1/0 by kind plus noise; the noise column is made exactly
    // uncorrelated with good in this sample, so any weight it gets is the method's, not the sample's
    let total = n_dup + n_clean + n_sh;
    let quality = Tensor::from_slice(&kind.iter().map(|&k| 2.0 - k as f32).collect::<Vec<_>>());
    let good = &quality + Tensor::randn([total], opts) * 0.3;
    let gc = &good - good.mean(Kind::Float);
    let r = Tensor::randn([total], opts);
    let r = &r - r.mean(Kind::Float);
    let r = &r - &gc * ((&r * &gc).sum(Kind::Float) / (&gc * &gc).sum(Kind::Float));
    let scores_in = Tensor::stack(&[&good, &r, &(-&good)], 1);
    let task = flyt::train::DownstreamTask { image: down_img, labels, prompts, captions: None };
    Planted { pool: flyt::train::UpstreamPool { image, text, features }, scores_in, kind, task, din }
}

fn toy_config(steps: usize) -> flyt::train::FlytConfig {
    flyt::train::FlytConfig {
        steps,
        batch: 64,
        down_batch: 64,
        ref_lr: 2e-2,
        score_lr: 1e-2,
        warmup: 10,
        seed: 5,
        ..Default::default()
    }
}

fn mean_by_kind(s: &Tensor, kind: &[u8]) -> [f64; 3] {
    let v: Vec<f32> = Vec::try_from(s).unwrap();
    let mut sum = [0f64; 3];
    let mut n = [0f64; 3];
    for (x, &k) in v.iter().zip(kind) {
        sum[k as usize] += *x as f64;
        n[k as usize] += 1.0;
    }
    [sum[0] / n[0], sum[1] / n[1], sum[2] / n[2]]
}

#[test]
fn flyt_scores_duplicates_over_clean_over_shuffled() {
    let _turn = torch_turn();
    use flyt::train::{FlytState, GluHead, ParamAdamW, ScoringModel, train_flyt};
    let x = planted(11, 1);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let head = GluHead::new(&vs.root(), x.din);
    let cfg = toy_config(300);
    let mut state = FlytState {
        reference: EmbeddingReference::new(x.din, x.din, 0.1, cfg.adam, Kind::Float, Device::Cpu),
        score_opt: ParamAdamW::new(cfg.adam, &head.named_parameters()),
        step: 0,
    };
    let mut downs = Vec::new();
    train_flyt(&head, &mut state, &x.pool, std::slice::from_ref(&x.task), &cfg, |l| {
        downs.push(l.down_loss);
        Ok(true)
    })
    .unwrap();
    let s = tch::no_grad(|| head.forward(&x.pool.features));
    let [dup, clean, shuffled] = mean_by_kind(&s, &x.kind);
    assert!(dup > clean && clean > shuffled, "mean scores: duplicates {dup}, clean {clean}, shuffled {shuffled}");
    let first: f64 = downs[..20].iter().sum::<f64>() / 20.0;
    let last: f64 = downs[downs.len() - 20..].iter().sum::<f64>() / 20.0;
    assert!(last < first, "downstream loss did not fall: {first} → {last}");
}

#[test]
fn mflyt_weights_good_noise_and_negated_good() {
    let _turn = torch_turn();
    use flyt::train::{FlytState, Mixer, ParamAdamW, ScoringModel, UpstreamPool, train_flyt};
    let x = planted(12, 5);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let mut mixer = Mixer::new(&vs.root(), 3);
    mixer.set_stats(&x.scores_in);
    mixer.zero_init();
    let cfg = toy_config(300);
    let pool =
        UpstreamPool { image: x.pool.image.shallow_clone(), text: x.pool.text.shallow_clone(), features: x.scores_in };
    let mut state = FlytState {
        reference: EmbeddingReference::new(x.din, x.din, 0.1, cfg.adam, Kind::Float, Device::Cpu),
        score_opt: ParamAdamW::new(cfg.adam, &mixer.named_parameters()),
        step: 0,
    };
    train_flyt(&mixer, &mut state, &pool, std::slice::from_ref(&x.task), &cfg, |_| Ok(true)).unwrap();
    let (w, _) = mixer.weights();
    let w: Vec<f32> = Vec::try_from(&w).unwrap();
    assert!(w[0] > 0.0 && w[2] < 0.0, "weights {w:?}");
    // the z-scoring statistics travel with the model: a fresh mixer loaded from the checkpoint scores the same
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("m.safetensors");
    flyt::train::save_checkpoint(&ckpt, &mixer, &state, &serde_json::Value::Null).unwrap();
    let vs2 = tch::nn::VarStore::new(Device::Cpu);
    let fresh = Mixer::new(&vs2.root(), 3);
    let mut st2 = FlytState {
        reference: EmbeddingReference::new(x.din, x.din, 0.1, cfg.adam, Kind::Float, Device::Cpu),
        score_opt: ParamAdamW::new(cfg.adam, &fresh.named_parameters()),
        step: 0,
    };
    flyt::train::load_checkpoint(&ckpt, &fresh, &mut st2).unwrap();
    let (a, b) = tch::no_grad(|| (mixer.forward(&pool.features), fresh.forward(&pool.features)));
    assert_eq!((a - b).abs().max().double_value(&[]), 0.0);
    // ≈ 0 relative to the others: Adam moves even a pure-noise weight by about lr·√steps (a random walk;
    // seeds 20–27 gave |w_noise| / w_good ≤ 0.29), while the informative weights grow with the steps
    assert!(w[1].abs() < 0.4 * w[0].abs().min(w[2].abs()), "noise weight not ≈ 0: {w:?}");
}

#[test]
fn a_run_resumed_from_a_checkpoint_equals_an_uninterrupted_one() {
    let _turn = torch_turn();
    use flyt::train::{FlytState, GluHead, ParamAdamW, ScoringModel, load_checkpoint, save_checkpoint, train_flyt};
    let x = planted(13, 1);
    let cfg = toy_config(40);
    let fresh = |seed: i64| {
        tch::manual_seed(seed);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let head = GluHead::new(&vs.root(), x.din);
        let state = FlytState {
            reference: EmbeddingReference::new(x.din, x.din, 0.1, cfg.adam, Kind::Float, Device::Cpu),
            score_opt: ParamAdamW::new(cfg.adam, &head.named_parameters()),
            step: 0,
        };
        (vs, head, state)
    };
    let tasks = std::slice::from_ref(&x.task);
    // uninterrupted
    let (_vs, head, mut state) = fresh(1);
    train_flyt(&head, &mut state, &x.pool, tasks, &cfg, |_| Ok(true)).unwrap();
    let want = tch::no_grad(|| head.forward(&x.pool.features));
    // 25 steps, checkpoint, a new process-like start from other random weights, load, finish
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("checkpoint.safetensors");
    let (_vs1, head1, mut state1) = fresh(1);
    // interrupted after step 24 (the callback says stop)
    train_flyt(&head1, &mut state1, &x.pool, tasks, &cfg, |l| Ok(l.step < 24)).unwrap();
    save_checkpoint(&ckpt, &head1, &state1, &serde_json::json!({"pool": "planted"})).unwrap();
    let (_vs2, head2, mut state2) = fresh(99);
    let meta = load_checkpoint(&ckpt, &head2, &mut state2).unwrap();
    assert_eq!(meta["pool"], "planted");
    assert_eq!(state2.step, 25);

    train_flyt(&head2, &mut state2, &x.pool, tasks, &cfg, |_| Ok(true)).unwrap();
    let got = tch::no_grad(|| head2.forward(&x.pool.features));
    let diff = (got - want).abs().max().double_value(&[]);
    assert_eq!(diff, 0.0, "resumed run differs by {diff}");
    // batch size 0 and a task without templates are refused up front, not a libtorch error mid-step
    let zero = flyt::train::FlytConfig { batch: 0, ..cfg.clone() };
    let e = train_flyt(&head2, &mut state2, &x.pool, tasks, &zero, |_| Ok(true)).unwrap_err().to_string();
    assert!(e.contains("batch sizes"), "{e}");
    let empty = flyt::train::DownstreamTask {
        image: x.task.image.shallow_clone(),
        labels: x.task.labels.shallow_clone(),
        prompts: x.task.prompts.narrow(1, 0, 0),
        captions: None,
    };
    let e = train_flyt(&head2, &mut state2, &x.pool, &[empty], &cfg, |_| Ok(true)).unwrap_err().to_string();
    assert!(e.contains("1 class × 1 template"), "{e}");
    // a checkpoint of another shape is refused, naming the tensor
    let vs3 = tch::nn::VarStore::new(Device::Cpu);
    let other = GluHead::new(&vs3.root(), x.din + 1);
    let (_v, _h, mut st) = fresh(2);
    let e = load_checkpoint(&ckpt, &other, &mut st).unwrap_err().to_string();
    assert!(e.contains("model.w1.weight") && e.contains("shape"), "{e}");
}

fn tiny_clip() -> flyt::clip::ClipConfig {
    serde_json::from_value(serde_json::json!({
        "text_config": {"vocab_size": 100, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "max_position_embeddings": 8, "eos_token_id": 2},
        "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                          "image_size": 8, "patch_size": 4},
        "projection_dim": 8
    }))
    .unwrap()
}

fn token_ids(rows: i64) -> Tensor {
    // random tokens, the highest id (the end token under eos_token_id = 2's argmax rule) last
    let body = Tensor::randint_low(3, 90, [rows, 5], (Kind::Int64, Device::Cpu));
    Tensor::cat(&[body, Tensor::full([rows, 1], 99, (Kind::Int64, Device::Cpu))], 1)
}

/// Two downstream tasks of random 8-px images: a 3-class prompt classifier, and one scored by the downstream
/// CLIP loss over captions (notes §2.4 (b)).
fn pixel_tasks() -> Vec<flyt::train::PixelTaskBatch> {
    use flyt::train::PixelTaskBatch;
    vec![
        PixelTaskBatch {
            pixels: Tensor::randn([5, 3, 8, 8], OPTS),
            labels: Tensor::from_slice(&[0i64, 1, 2, 0, 1]),
            prompts: token_ids(3),
            captions: None,
        },
        PixelTaskBatch {
            pixels: Tensor::randn([4, 3, 8, 8], OPTS),
            labels: Tensor::zeros([4], (Kind::Int64, Device::Cpu)),
            prompts: token_ids(1),
            captions: Some(token_ids(4)),
        },
    ]
}

#[test]
fn hypergradient_matches_finite_differences_full_mode() {
    use flyt::train::FullReference;
    let _turn = torch_turn();
    tch::manual_seed(21);
    let mut reference = FullReference::new(&tiny_clip(), None, AdamW::default(), Kind::Double, Device::Cpu).unwrap();
    let n = 6;
    let pixels = Tensor::randn([n, 3, 8, 8], OPTS);
    let ids = token_ids(n);
    let tasks = pixel_tasks();
    let s = Tensor::randn([n], OPTS);
    for (inner, lr) in [(Inner::Sgd, 0.5), (Inner::AdamW, 0.01)] {
        if inner == Inner::AdamW {
            // one real step first, so the moments are not zero
            let first = reference.lookahead(&s, &pixels, &ids, &tasks, inner, lr).unwrap();
            reference.apply(first, lr);
        }
        let look = reference.lookahead(&s, &pixels, &ids, &tasks, inner, lr).unwrap();
        let h = 1e-6;
        let (mut worst, mut scale) = (0f64, 0f64);
        for k in 0..n {
            let e = Tensor::zeros([n], OPTS).index_fill(0, &Tensor::from_slice(&[k]), h);
            let mut down = |s: &Tensor| reference.lookahead(s, &pixels, &ids, &tasks, inner, lr).unwrap().down_loss;
            let fd = (down(&(&s + &e)) - down(&(&s - &e))) / (2.0 * h);
            worst = worst.max((fd - look.g_s.double_value(&[k])).abs());
            scale = scale.max(fd.abs());
        }
        assert!(scale > 1e-6, "{inner:?}: vacuous (scale {scale})");
        assert!(worst < 1e-6, "{inner:?}: max |closed form − finite differences| = {worst} (scale {scale})");
        assert!(look.g_s.sum(Kind::Double).double_value(&[]).abs() < 1e-12);
    }
}

#[test]
fn full_mode_training_runs_and_resumes_bit_identically() {
    use flyt::train::{FlytState, FullPool, FullReference, FullTask, GluHead, ParamAdamW, ScoringModel};
    use flyt::train::{load_checkpoint, save_checkpoint, train_flyt_full};
    let _turn = torch_turn();
    let mut rng = flyt::rng::SplitMix64::new(3);
    let mut images = |n: usize| -> Vec<Vec<u8>> {
        (0..n)
            .map(|_| flyt::clip::preprocess::preprocess(&flyt::synth::png_image(12, &mut rng), 8, 8).unwrap())
            .collect()
    };
    tch::manual_seed(5);
    let pool = FullPool {
        images: images(20),
        sources: None,
        ids: token_ids(20),
        features: Tensor::randn([20, 16], (Kind::Float, Device::Cpu)),
    };
    let tasks = vec![FullTask {
        images: images(9),
        sources: None,
        labels: (0..9).map(|i| i % 3).collect(),
        prompts: Tensor::stack(&[token_ids(3), token_ids(3)], 1),
        captions: None,
    }];
    let cfg =
        flyt::train::FlytConfig { steps: 8, batch: 6, down_batch: 5, ref_lr: 1e-3, warmup: 2, ..Default::default() };
    let fresh = |seed: i64| {
        tch::manual_seed(seed);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let head = GluHead::new(&vs.root(), 8);
        let reference = FullReference::new(&tiny_clip(), None, cfg.adam, Kind::Float, Device::Cpu).unwrap();
        let state = FlytState { reference, score_opt: ParamAdamW::new(cfg.adam, &head.named_parameters()), step: 0 };
        (vs, head, state)
    };
    let (_v, head, mut state) = fresh(1);
    let mut losses = Vec::new();
    train_flyt_full(&head, &mut state, &pool, &tasks, &cfg, |l| {
        losses.push((l.up_loss, l.down_loss));
        Ok(true)
    })
    .unwrap();
    assert_eq!(losses.len(), 8);
    assert!(losses.iter().all(|(u, d)| u.is_finite() && d.is_finite()), "{losses:?}");
    let want = tch::no_grad(|| head.forward(&pool.features));
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("full.safetensors");
    let (_v1, head1, mut state1) = fresh(1);
    train_flyt_full(&head1, &mut state1, &pool, &tasks, &cfg, |l| Ok(l.step < 3)).unwrap();
    save_checkpoint(&ckpt, &head1, &state1, &serde_json::Value::Null).unwrap();
    let (_v2, head2, mut state2) = fresh(7);
    load_checkpoint(&ckpt, &head2, &mut state2).unwrap();
    assert_eq!(state2.step, 4);
    train_flyt_full(&head2, &mut state2, &pool, &tasks, &cfg, |_| Ok(true)).unwrap();
    let got = tch::no_grad(|| head2.forward(&pool.features));
    assert_eq!((got - want).abs().max().double_value(&[]), 0.0, "resumed full-mode run differs");
}

#[test]
fn chunked_full_mode_lookahead_equals_the_unchunked_one() {
    use flyt::train::FullReference;
    let _turn = torch_turn();
    tch::manual_seed(31);
    let mut reference = FullReference::new(&tiny_clip(), None, AdamW::default(), Kind::Double, Device::Cpu).unwrap();
    let n = 7;
    let pixels = Tensor::randn([n, 3, 8, 8], OPTS);
    let ids = token_ids(n);
    let tasks = pixel_tasks();
    let s = Tensor::randn([n], OPTS);
    let first = reference.lookahead(&s, &pixels, &ids, &tasks, Inner::AdamW, 0.01).unwrap();
    reference.apply(first, 0.01);
    for inner in [Inner::Sgd, Inner::AdamW] {
        reference.set_chunk(None);
        let a = reference.lookahead(&s, &pixels, &ids, &tasks, inner, 0.05).unwrap();
        for chunk in [1, 2, 3] {
            reference.set_chunk(Some(chunk));
            let b = reference.lookahead(&s, &pixels, &ids, &tasks, inner, 0.05).unwrap();
            let dg = (&a.g_w - &b.g_w).abs().max().double_value(&[]);
            let scale = a.g_w.abs().max().double_value(&[]);
            assert!(dg < 1e-10 * scale.max(1.0), "{inner:?} chunk {chunk}: G differs by {dg} (scale {scale})");
            assert!((a.up_loss - b.up_loss).abs() < 1e-12 && (a.down_loss - b.down_loss).abs() < 1e-12);
            assert!((a.grad_norm - b.grad_norm).abs() < 1e-10 * a.grad_norm, "{} vs {}", a.grad_norm, b.grad_norm);
        }
    }
}

#[test]
fn chunked_plain_clip_step_equals_the_unchunked_one() {
    use flyt::train::FullReference;
    let _turn = torch_turn();
    let make = || {
        tch::manual_seed(41);
        FullReference::new(&tiny_clip(), None, AdamW::default(), Kind::Double, Device::Cpu).unwrap()
    };
    tch::manual_seed(42);
    let pixels = Tensor::randn([5, 3, 8, 8], OPTS);
    let ids = token_ids(5);
    let (mut a, mut b) = (make(), make());
    b.set_chunk(Some(2));
    let (la, lb) = (a.plain_step(&pixels, &ids, 1e-2), b.plain_step(&pixels, &ids, 1e-2));
    assert!((la - lb).abs() < 1e-12);
    let pa = a.var_store().variables();
    let pb = b.var_store().variables();
    // The key projections' biases have a true gradient of 0 (softmax is shift-invariant), so what AdamW sees
    // there is rounding noise g ~ 1e-15 in f64, which it turns into a step of lr·g/(√v + ε): up to 1e-2 · 1e-15 /
    // 1e-8 = 1e-9, differently for the chunked and the unchunked sums (seen: 1.5e-12 on one CPU). Every other
    // parameter is held to 1e-12.
    for (name, t) in &pa {
        let d = (t - &pb[name]).abs().max().double_value(&[]);
        let tol = if name.ends_with("k_proj.bias") { 1e-9 } else { 1e-12 };
        assert!(d < tol, "{name} differs by {d}");
    }
}

/// A small f64 FLYT setup: a planted pool (in f64), a head and a reference from `seed`.
fn f64_run(seed: i64) -> (Planted, tch::nn::VarStore, flyt::train::GluHead, flyt::train::FlytState) {
    use flyt::train::{FlytState, GluHead, ParamAdamW, ScoringModel};
    let mut x = planted(21, 1);
    let d = |t: &Tensor| t.to_kind(Kind::Double);
    x.pool =
        flyt::train::UpstreamPool { image: d(&x.pool.image), text: d(&x.pool.text), features: d(&x.pool.features) };
    x.task.image = d(&x.task.image);
    x.task.prompts = d(&x.task.prompts);
    tch::manual_seed(seed);
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    let head = GluHead::new(&vs.root(), x.din);
    vs.double();
    let cfg = toy_config(4);
    let state = FlytState {
        reference: EmbeddingReference::new(x.din, x.din, 0.1, cfg.adam, Kind::Double, Device::Cpu),
        score_opt: ParamAdamW::new(cfg.adam, &head.named_parameters()),
        step: 0,
    };
    (x, vs, head, state)
}

fn read_trace(path: &std::path::Path) -> std::collections::BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

#[test]
fn a_traced_step_holds_the_checked_hypergradient_and_a_replay_reproduces_it_bit_for_bit() {
    let _turn = torch_turn();
    use flyt::train::{BatchPlan, TraceSpec, train_flyt};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let traced = dir.path().join("a");
    let (x, _vs, head, mut state) = f64_run(3);
    let trace = TraceSpec { dir: traced.clone(), steps: [0, 1, 2, 3].into() };
    let cfg = flyt::train::FlytConfig { trace: Some(Arc::new(trace)), ..toy_config(4) };
    let tasks = std::slice::from_ref(&x.task);
    train_flyt(&head, &mut state, &x.pool, tasks, &cfg, |_| Ok(true)).unwrap();

    // step 0 from its trace: the batch, the scores, G and ∂J/∂s
    let t0 = read_trace(&traced.join("step000000.safetensors"));
    for name in [
        "scores",
        "weights",
        "up_loss",
        "G",
        "dJ_ds",
        "d_rho",
        "g.w_img",
        "g.logit_scale",
        "theta_next.w_txt",
        "v.w_img",
        "down_loss.0",
        "head_grad.w1.weight",
        "theta.w_img",
        "m.w_img",
        "adam_v.w_txt",
        "t",
        "rho",
        "phi.w2.bias",
        "batch.upstream",
        "batch.task0.rows",
        "batch.task0.templates",
    ] {
        assert!(t0.contains_key(name), "the trace has no {name}: {:?}", t0.keys().collect::<Vec<_>>());
    }
    assert_eq!(t0["G"].kind(), Kind::Double);
    assert_eq!(t0["t"].int64_value(&[]), 1);
    let rows = &t0["batch.upstream"];
    let (img, txt) = (x.pool.image.index_select(0, rows), x.pool.text.index_select(0, rows));
    let tr = &t0["batch.task0.rows"];
    let classes = Tensor::arange(x.task.prompts.size()[0], (Kind::Int64, Device::Cpu));
    let down = vec![DownstreamBatch {
        image: x.task.image.index_select(0, tr),
        labels: x.task.labels.index_select(0, tr),
        prompts: x.task.prompts.index(&[Some(classes), Some(t0["batch.task0.templates"].shallow_clone())]),
        captions: None,
    }];
    // the reference as it was before step 0 (same seed, same draws)
    let (_, _vs0, _, fresh) = f64_run(3);
    let s = &t0["scores"];
    let lr = flyt::train::cosine_lr(cfg.ref_lr, 0, cfg.warmup, cfg.steps);
    let look = |s: &Tensor| fresh.reference.lookahead(s, &img, &txt, &down, Inner::AdamW, lr).unwrap();
    let again = look(s);
    assert_eq!((&again.g_w - &t0["G"]).abs().max().double_value(&[]), 0.0, "traced G is not the lookahead's");
    assert_eq!(again.down_loss, t0["down_loss.0"].double_value(&[]));
    // ∂J/∂s against central differences of L_down(θ′(softmax(s)))
    let n = s.size()[0];
    let h = 1e-6;
    let (mut worst, mut scale) = (0f64, 0f64);
    for k in 0..n {
        let e = Tensor::zeros([n], OPTS).index_fill(0, &Tensor::from_slice(&[k]), h);
        let fd = (look(&(s + &e)).down_loss - look(&(s - &e)).down_loss) / (2.0 * h);
        worst = worst.max((fd - t0["dJ_ds"].double_value(&[k])).abs());
        scale = scale.max(fd.abs());
    }
    assert!(scale > 1e-7, "vacuous: ∂J/∂s scale {scale}");
    assert!(worst < 1e-6 * scale.max(1.0), "traced ∂J/∂s vs finite differences: {worst} (scale {scale})");
    // ∂J/∂s = w ⊙ (G − ⟨w, G⟩)
    let w = &t0["weights"];
    let want = w * (&t0["G"] - (w * &t0["G"]).sum(Kind::Double));
    assert!((want - &t0["dJ_ds"]).abs().max().double_value(&[]) < 1e-15);

    // a replay from the trace's batches, with another seed (whose own draws would differ), traces the same bytes
    let plan = BatchPlan::read(&traced).unwrap();
    assert_eq!(plan.steps.len(), 4);
    let replayed = dir.path().join("b");
    let (x2, _vs2, head2, mut state2) = f64_run(3);
    let cfg2 = flyt::train::FlytConfig {
        seed: 999,
        batches: Some(Arc::new(plan.clone())),
        trace: Some(Arc::new(TraceSpec { dir: replayed.clone(), steps: [0, 1, 2, 3].into() })),
        ..toy_config(4)
    };
    train_flyt(&head2, &mut state2, &x2.pool, std::slice::from_ref(&x2.task), &cfg2, |_| Ok(true)).unwrap();
    for step in 0..4 {
        let f = format!("step{step:06}.safetensors");
        let (a, b) = (read_trace(&traced.join(&f)), read_trace(&replayed.join(&f)));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (k, ta) in &a {
            assert!(ta.equal(&b[k]), "step {step}: {k} differs in the replay");
        }
    }
    // a plan file round-trips; a plan whose rows fall outside the pool is refused naming the step
    let file = dir.path().join("plan.safetensors");
    plan.write(&file).unwrap();
    assert_eq!(BatchPlan::read(&file).unwrap(), plan);
    let mut bad = plan.clone();
    bad.steps[2].upstream[0] = x.pool.image.size()[0];
    let (x3, _vs3, head3, mut state3) = f64_run(3);
    let cfg3 = flyt::train::FlytConfig { batches: Some(Arc::new(bad)), ..toy_config(4) };
    let e = train_flyt(&head3, &mut state3, &x3.pool, std::slice::from_ref(&x3.task), &cfg3, |_| Ok(true))
        .unwrap_err()
        .to_string();
    assert!(e.contains("step 2") && e.contains("upstream rows"), "{e}");
    assert_eq!(state3.step, 2, "the steps before the bad one ran");
    let short = flyt::train::FlytConfig {
        batches: Some(Arc::new(BatchPlan { steps: plan.steps[..1].to_vec() })),
        ..toy_config(4)
    };
    let (x4, _vs4, head4, mut state4) = f64_run(3);
    let e = train_flyt(&head4, &mut state4, &x4.pool, std::slice::from_ref(&x4.task), &short, |_| Ok(true))
        .unwrap_err()
        .to_string();
    assert!(e.contains("1 steps") && e.contains("step 1"), "{e}");
}

/// Two references from the same draws, the second combining tasks as the official code does.
fn mean_and_official(seed: i64, tasks: usize) -> (Setup, EmbeddingReference) {
    use flyt::train::Multitask;
    let mut x = setup(seed);
    x.tasks.truncate(tasks);
    tch::manual_seed(seed);
    let mut official = EmbeddingReference::new(6, 5, 0.3, AdamW::default(), Kind::Double, Device::Cpu);
    official.settings.multitask = Multitask::Official;
    assert!(official.params[0].equal(&x.reference.params[0]));
    (x, official)
}

#[test]
fn official_multitask_with_one_task_equals_the_mean_but_for_the_step_counter() {
    let _turn = torch_turn();
    use flyt::train::ReferenceState;
    let (mut x, mut official) = mean_and_official(31, 1);
    let lr = 0.05;
    let a = x.reference.lookahead(&x.s, &x.up_image, &x.up_text, &x.tasks, Inner::AdamW, lr).unwrap();
    let b = official.lookahead(&x.s, &x.up_image, &x.up_text, &x.tasks, Inner::AdamW, lr).unwrap();
    assert!(a.g_w.equal(&b.g_w) && a.g_s.equal(&b.g_s));
    assert_eq!(a.down_loss, b.down_loss);
    x.reference.apply(a, lr);
    official.apply(b, lr);
    for i in 0..3 {
        assert!(x.reference.params[i].equal(&official.params[i]), "θ[{i}] differs");
    }
    let ((ma, va, ta), (mb, vb, tb)) = (x.reference.opt.state(), official.opt.state());
    for i in 0..3 {
        assert!(ma[i].equal(&mb[i]) && va[i].equal(&vb[i]), "moments of θ[{i}] differ");
    }
    // official: one counter, advanced by the task's θ′ and again by ρ's step
    assert_eq!((ta, tb), (1, 2));
    assert_eq!(official.rho_opt.t, 2);
    assert_eq!(x.reference.rho_opt.t, 1);

    // without a learned downstream logit scale the counters agree, and whole runs are identical
    let (mut x, mut official) = mean_and_official(32, 1);
    x.reference.set_downstream_logit_scale(None);
    official.set_downstream_logit_scale(None);
    for step in 0..5 {
        x.s = Tensor::randn([8], OPTS);
        let a = x.reference.lookahead(&x.s, &x.up_image, &x.up_text, &x.tasks, Inner::AdamW, lr).unwrap();
        let b = official.lookahead(&x.s, &x.up_image, &x.up_text, &x.tasks, Inner::AdamW, lr).unwrap();
        assert!(a.g_s.equal(&b.g_s), "step {step}: ∂J/∂s differs");
        x.reference.apply(a, lr);
        official.apply(b, lr);
    }
    for i in 0..3 {
        assert!(x.reference.params[i].equal(&official.params[i]), "θ[{i}] differs after 5 steps");
    }
    assert_eq!((x.reference.opt.t, official.opt.t), (5, 5));
    assert_eq!(official.rho.double_value(&[]), 0.0, "ρ stays 0 (a scale of 1) when not learned");
}

#[test]
fn official_multitask_chains_the_moments_once_per_task() {
    let _turn = torch_turn();
    let (x, mut official) = mean_and_official(33, 2);
    let lr = 0.05;
    let look = official.lookahead(&x.s, &x.up_image, &x.up_text, &x.tasks, Inner::AdamW, lr).unwrap();
    assert_eq!(look.task_losses.len(), 2);
    let g: Vec<Tensor> = look.grads.iter().map(|g| g.shallow_clone()).collect();
    official.apply(look, lr);
    let (b1, b2) = (AdamW::default().beta1, AdamW::default().beta2);
    let (m, v, t) = official.opt.state();
    for i in 0..3 {
        // from zero moments, two updates with the same g: m = (1 − β₁²) g, v = (1 − β₂²) g²
        let want_m = &g[i] * (1.0 - b1 * b1);
        let want_v = g[i].square() * (1.0 - b2 * b2);
        assert!((&m[i] - want_m).abs().max().double_value(&[]) < 1e-15, "m[{i}]");
        assert!((&v[i] - want_v).abs().max().double_value(&[]) < 1e-15, "v[{i}]");
    }
    assert_eq!(t, 3, "two tasks and ρ share one counter");
    // the default (mean) moves the moments once
    let mut mean = mean_and_official(33, 2).0.reference;
    let look = mean.lookahead(&x.s, &x.up_image, &x.up_text, &x.tasks, Inner::AdamW, lr).unwrap();
    let g0 = look.grads[0].shallow_clone();
    mean.apply(look, lr);
    let (m, _, t) = mean.opt.state();
    assert!((&m[0] - &g0 * (1.0 - b1)).abs().max().double_value(&[]) < 1e-15);
    assert_eq!(t, 1);
}

#[test]
fn a_frozen_reference_keeps_theta_and_rho_and_its_learning_rate() {
    let _turn = torch_turn();
    use flyt::train::{FlytState, GluHead, ParamAdamW, RefSettings, ScoringModel, train_flyt};
    let x = planted(14, 1);
    let cfg = toy_config(12);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let head = GluHead::new(&vs.root(), x.din);
    let mut reference = EmbeddingReference::new(x.din, x.din, 0.1, cfg.adam, Kind::Float, Device::Cpu);
    reference.settings = RefSettings { update: false, ..Default::default() };
    let before: Vec<Tensor> = reference.params.iter().map(|p| p.detach().copy()).collect();
    let rho = reference.rho.double_value(&[]);
    let mut state = FlytState { reference, score_opt: ParamAdamW::new(cfg.adam, &head.named_parameters()), step: 0 };
    let w_before = head.named_parameters()[0].1.detach().copy();
    let mut lrs = Vec::new();
    train_flyt(&head, &mut state, &x.pool, std::slice::from_ref(&x.task), &cfg, |l| {
        lrs.push((l.ref_lr, l.score_lr));
        Ok(true)
    })
    .unwrap();
    for (b, p) in before.iter().zip(&state.reference.params) {
        assert!(b.equal(&p.detach()), "a frozen reference moved");
    }
    assert_eq!(state.reference.rho.double_value(&[]), rho);
    let (m, _, t) = state.reference.opt.state();
    assert_eq!(t, 12, "the optimiser's counter still moves");
    assert!(m[0].abs().sum(Kind::Double).double_value(&[]) > 0.0, "and its moments");
    assert!(lrs.iter().all(|&(r, _)| r == cfg.ref_lr), "the reference's schedule is not stepped: {lrs:?}");
    assert!(lrs[0].1 < lrs[9].1, "the head's schedule still warms up");
    assert!(!w_before.equal(&head.named_parameters()[0].1.detach()), "the head trains");
}

#[test]
fn heads_and_mixers_start_as_pytorch_linear_layers() {
    let _turn = torch_turn();
    use flyt::train::{GluHead, Mixer, ScoringModel};
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let head = GluHead::new(&vs.root(), 32);
    let mixer = Mixer::new(&(vs.root() / "mix"), 4);
    for (name, p) in head.named_parameters().into_iter().chain(mixer.named_parameters()) {
        let fan_in = if name.starts_with("linear") { 4.0 } else { 64.0 };
        let bound = 1.0 / f64::sqrt(fan_in);
        let max = p.abs().max().double_value(&[]);
        // uniform in ±1/√fan_in: the largest of many draws is close to the bound, never above it
        assert!(max <= bound, "{name}: max |x| = {max} > 1/√{fan_in}");
        if p.numel() >= 64 {
            assert!(max > 0.9 * bound, "{name}: max |x| = {max}, far below 1/√{fan_in}");
            let std = p.std(false).double_value(&[]);
            assert!((std / (bound / 3f64.sqrt()) - 1.0).abs() < 0.1, "{name}: std {std} is not U(±{bound})'s");
        }
    }
}

#[test]
fn the_loss_scaler_halves_on_overflow_and_doubles_after_2000_clean_updates() {
    use flyt::train::LossScaler;
    let mut s = LossScaler::new(1024.0);
    for _ in 0..1999 {
        s.update(false);
    }
    assert_eq!(s, LossScaler { scale: 1024.0, growth_tracker: 1999 });
    s.update(false);
    assert_eq!(s, LossScaler { scale: 2048.0, growth_tracker: 0 });
    s.update(false);
    s.update(true);
    assert_eq!(s, LossScaler { scale: 1024.0, growth_tracker: 0 });
    let mut top = LossScaler { scale: f64::MAX, growth_tracker: 1999 };
    top.update(false);
    assert_eq!(top, LossScaler { scale: f64::MAX, growth_tracker: 0 }, "a growth that would overflow is not taken");
}

/// A small full-mode run (f32): its pool, one task, and a fresh head and reference per call.
struct FullRun {
    pool: flyt::train::FullPool,
    tasks: Vec<flyt::train::FullTask>,
    cfg: flyt::train::FlytConfig,
}

impl FullRun {
    fn new() -> Self {
        use flyt::train::{FullPool, FullTask};
        let mut rng = flyt::rng::SplitMix64::new(3);
        let mut images = |n: usize| -> Vec<Vec<u8>> {
            (0..n)
                .map(|_| flyt::clip::preprocess::preprocess(&flyt::synth::png_image(12, &mut rng), 8, 8).unwrap())
                .collect()
        };
        tch::manual_seed(5);
        let pool = FullPool {
            images: images(20),
            sources: None,
            ids: token_ids(20),
            features: Tensor::randn([20, 16], (Kind::Float, Device::Cpu)),
        };
        let tasks = vec![FullTask {
            images: images(9),
            sources: None,
            labels: (0..9).map(|i| i % 3).collect(),
            prompts: Tensor::stack(&[token_ids(3), token_ids(3)], 1),
            captions: None,
        }];
        let cfg = flyt::train::FlytConfig {
            steps: 6,
            batch: 6,
            down_batch: 5,
            ref_lr: 1e-3,
            warmup: 2,
            ..Default::default()
        };
        FullRun { pool, tasks, cfg }
    }

    /// Trains from seed 1 with `scaler` and `chunk`; returns the head's scores of the pool, the reference's
    /// parameters after each step, and the state.
    fn train(
        &self,
        scaler: Option<flyt::train::LossScaler>,
        chunk: Option<usize>,
    ) -> (Tensor, Vec<Vec<Tensor>>, flyt::train::FlytState<flyt::train::FullReference>) {
        use flyt::train::{FlytState, FullReference, GluHead, ParamAdamW, ReferenceState, ScoringModel};
        tch::manual_seed(1);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let head = GluHead::new(&vs.root(), 8);
        let mut reference = FullReference::new(&tiny_clip(), None, self.cfg.adam, Kind::Float, Device::Cpu).unwrap();
        reference.set_amp(scaler);
        reference.set_chunk(chunk);
        let mut state =
            FlytState { reference, score_opt: ParamAdamW::new(self.cfg.adam, &head.named_parameters()), step: 0 };
        let mut thetas = Vec::new();
        let snapshot =
            |st: &FlytState<FullReference>| st.reference.parts().0.iter().map(|p| p.detach().copy()).collect();
        thetas.push(snapshot(&state));
        let mut st = state;
        loop {
            let before = st.step;
            flyt::train::train_flyt_full(&head, &mut st, &self.pool, &self.tasks, &self.cfg, |_| Ok(false)).unwrap();
            if st.step == before {
                break;
            }
            thetas.push(snapshot(&st));
        }
        state = st;
        (tch::no_grad(|| head.forward(&self.pool.features)), thetas, state)
    }
}

#[test]
fn loss_scaling_changes_no_bit_and_an_overflow_skips_the_step() {
    use flyt::train::{LossScaler, ReferenceState};
    let _turn = torch_turn();
    let run = FullRun::new();
    for chunk in [None, Some(4)] {
        let (plain, _, _) = run.train(None, chunk);
        let (scaled, _, state) = run.train(Some(LossScaler::new(1024.0)), chunk);
        assert!(plain.equal(&scaled), "chunk {chunk:?}: a power-of-two loss scale changed the run");
        // three updates a step (θ′, the downstream gradients, the JVP), none overflowing
        assert_eq!(state.reference.scaler(), Some(LossScaler { scale: 1024.0, growth_tracker: 18 }));
    }
    // a scale that overflows f32: the first steps are skipped (θ unchanged) and the scale halves until it fits
    let (_, thetas, state) = run.train(Some(LossScaler::new(2f64.powi(127))), None);
    let same = |a: &[Tensor], b: &[Tensor]| a.iter().zip(b).all(|(x, y)| x.equal(y));
    assert!(same(&thetas[0], &thetas[1]), "an overflowing step moved the reference");
    assert!(!same(&thetas[5], &thetas[6]), "the run never recovered");
    let sc = state.reference.scaler().unwrap();
    assert!(sc.scale < 2f64.powi(127) && sc.scale >= 2f64.powi(100), "{sc:?}");
    assert!(thetas[6].iter().all(|p| p.isfinite().all().int64_value(&[]) == 1));
    // the scaler travels with a checkpoint
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("amp.safetensors");
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let head = flyt::train::GluHead::new(&vs.root(), 8);
    flyt::train::save_checkpoint(&ckpt, &head, &state, &serde_json::Value::Null).unwrap();
    let (_, _, mut other) = run.train(Some(LossScaler::new(8.0)), None);
    flyt::train::load_checkpoint(&ckpt, &head, &mut other).unwrap();
    assert_eq!(other.reference.scaler(), Some(sc));
}
