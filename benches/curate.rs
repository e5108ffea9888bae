//! The curation dataflow (`flyt curate`) end to end, against baselines measured in the same run.
//!
//! `cargo bench -p flyt-pipelines --bench curate -- e2e [SHARDS] [PER_SHARD] [tiny|b32] [cpu|cuda] [BATCH] [WORKERS]`
//!   generated JPEG shards through decode → embed (a randomly initialised CLIP with the real tokenizer) →
//!   score → SCS → subset; prints end-to-end samples/s, the time per stage, and the ratio to decoding alone,
//!   to embedding alone (`Embedder` over the same samples) and to the image tower alone. Default 4 × 500,
//!   tiny, CPU.
//! `cargo bench -p flyt-pipelines --bench curate -- incremental [SHARDS] [PER_SHARD] [DIM]`
//!   a pool with precomputed embeddings (DataComp sidecars): the latency from one new shard landing in a
//!   followed directory to the republished subset, against a from-scratch batch run over the same pool.
//!   Default 100 × 10,000 (10⁶ samples) × 64-d.
//! Under `cargo test` each mode runs once at a tiny size as a smoke test.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flyt_pipelines::{CurateConfig, STOP};
use tch::{Device, Kind, Tensor};

fn main() {
    flyt::init_torch_runtime();
    let bench = std::env::args().any(|a| a == "--bench");
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let mode = args.first().cloned();
    let rest: Vec<String> = args.iter().skip(1).cloned().collect();
    if mode.as_deref() != Some("incremental") {
        e2e(bench, &rest);
    }
    if mode.as_deref() != Some("e2e") {
        incremental(bench, &rest);
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, bench: bool, full: T, smoke: T) -> T {
    if !bench {
        return smoke;
    }
    args.get(i).and_then(|s| s.parse().ok()).unwrap_or(full)
}

fn bpe() -> Option<PathBuf> {
    let p = std::env::var("FLYT_CLIP_BPE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/clip/bpe_simple_vocab_16e6.txt.gz"));
    p.exists().then_some(p)
}

fn clip_config(arch: &str) -> flyt::clip::ClipConfig {
    match arch {
        "b32" => flyt::clip::ClipConfig::vit_b32(),
        _ => serde_json::from_value(serde_json::json!({
            "text_config": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4},
            "vision_config": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "image_size": 64, "patch_size": 16},
            "projection_dim": 64
        }))
        .expect("a valid config"),
    }
}

fn e2e(bench: bool, args: &[String]) {
    let shards = arg(args, 0, bench, 4usize, 2);
    let per_shard = arg(args, 1, bench, 500usize, 20);
    let arch = arg(args, 2, bench, "tiny".to_string(), "tiny".to_string());
    let device = arg(args, 3, bench, "cpu".to_string(), "cpu".to_string());
    let batch = arg(args, 4, bench, 256usize, 8);
    let workers = arg(args, 5, bench, 1usize, 1);
    let Some(bpe) = bpe() else {
        println!("e2e: skipped (no CLIP BPE vocabulary: run ./x setup, or set FLYT_CLIP_BPE)");
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (pool, model) = (dir.path().join("pool"), dir.path().join("clip"));
    let config = clip_config(&arch);
    let side = config.vision_config.image_size as u32 * 8 / 7;
    let paths = flyt::synth::SynthPool {
        shards,
        samples_per_shard: per_shard,
        image: flyt::synth::SynthImage::Jpeg(side),
        seed: 1,
        dirt: 0.0,
    }
    .write(&pool)
    .expect("writing shards");
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let clip = flyt::clip::Clip::new(&vs.root(), &config).expect("a CLIP");
    clip.save(&vs, &model).expect("saving the model");
    flyt::clip::ClipTokenizer::write_hf_vocab(&bpe, &model).expect("writing the vocabulary");
    let dev = if device == "cuda" { Device::Cuda(0) } else { Device::Cpu };
    let n = (shards * per_shard) as f64;

    // Baseline 1: decoding alone.
    let t = Instant::now();
    let mut samples = Vec::new();
    let mut ingest = flyt::Ingest::new(flyt::ReaderConfig::default());
    for p in &paths {
        ingest
            .read_shard(p, |r| {
                if let flyt::Record::Sample(s) = r {
                    samples.push(*s)
                }
            })
            .expect("reading a shard");
    }
    let decode_s = t.elapsed().as_secs_f64();
    // Baseline 2: embedding alone (preprocessing on the worker pool, both towers), the same samples.
    let ec = flyt::clip::EmbedderConfig { batch_size: batch, device: dev, ..Default::default() };
    let embedder = flyt::clip::Embedder::load(&model, ec).expect("loading the model");
    let warm: Vec<flyt::Sample> = samples.iter().take(batch).cloned().collect();
    let _ = embedder.embed(warm.into_iter());
    let t = Instant::now();
    let (emb, _) = embedder.embed(samples.into_iter());
    let embed_s = t.elapsed().as_secs_f64();
    assert_eq!(emb.ids.len() as f64, n);
    drop(embedder);
    // Baseline 3: the image tower alone on ready pixels.
    let (vs2, clip2) = flyt::clip::Clip::load(&model, dev).expect("loading the model");
    let mut vs2 = vs2;
    if dev.is_cuda() {
        vs2.bfloat16();
    }
    let kind = if dev.is_cuda() { Kind::BFloat16 } else { Kind::Float };
    let size = config.vision_config.image_size;
    let px = Tensor::randn([batch as i64, 3, size, size], (kind, dev));
    let _ = tch::no_grad(|| clip2.image_features(&px));
    let iters = (n / batch as f64).ceil() as usize;
    let t = Instant::now();
    for _ in 0..iters {
        let f = tch::no_grad(|| clip2.image_features(&px));
        let _ = f.sum(Kind::Float).double_value(&[]);
    }
    let tower_s = t.elapsed().as_secs_f64() * n / (iters * batch) as f64;
    drop((vs2, clip2));

    // The pipeline.
    let mut cfg = CurateConfig::default();
    cfg.input.shards = vec![pool.clone()];
    cfg.output.dir = dir.path().join("out");
    cfg.embed.model = Some(model.clone());
    cfg.embed.device = device.parse().expect("a device");
    cfg.embed.batch_size = batch;
    let timely = if workers > 1 { timely::Config::process(workers) } else { timely::Config::thread() };
    let t = Instant::now();
    let summary = flyt_pipelines::curate(cfg, timely).expect("the pipeline");
    let e2e_s = t.elapsed().as_secs_f64();
    assert_eq!(summary.manifest["pool"]["rows"].as_f64(), Some(n));
    println!(
        "e2e {arch} on {device}, {shards} × {per_shard} JPEG samples ({side} px), batch {batch}, {workers} worker(s): \
         {:.1} samples/s end to end",
        n / e2e_s
    );
    println!(
        "  alone: decode {:.0}/s, embed (preprocess + towers) {:.1}/s, image tower {:.1}/s; end to end = {:.2}× embed alone, {:.2}× tower alone",
        n / decode_s,
        n / embed_s,
        n / tower_s,
        embed_s / e2e_s,
        tower_s / e2e_s
    );
    let stages: Vec<String> = summary.stages.iter().map(|(k, s)| format!("{k} {s:.2} s")).collect();
    println!("  stages (summed over workers): {}; wall {e2e_s:.2} s", stages.join(", "));
}

fn incremental(bench: bool, args: &[String]) {
    let shards = arg(args, 0, bench, 100usize, 4);
    let per_shard = arg(args, 1, bench, 10_000usize, 200);
    let dim = arg(args, 2, bench, 64usize, 16);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let p = dir.path();
    let synth = |out: &Path, n: usize, first: usize| {
        flyt::synth::SynthSidecars {
            shards: n,
            rows_per_shard: per_shard,
            dim,
            duplicates: 0.01,
            first_shard: first,
            seed: 3,
            ..Default::default()
        }
        .write(out)
        .expect("writing sidecars")
    };
    synth(&p.join("pool"), shards, 0);
    synth(&p.join("extra"), 1, shards);
    let config = |input: &str, out: &str, follow: bool| {
        let mut c = CurateConfig::default();
        c.input.shards = vec![p.join(input)];
        c.output.dir = p.join(out);
        c.follow = follow;
        c.input.poll_ms = 10;
        c.output.publish_ms = 0;
        c
    };
    let timed = |c: CurateConfig| {
        let t = Instant::now();
        let s = flyt_pipelines::curate(c, timely::Config::thread()).expect("the pipeline");
        (t.elapsed().as_secs_f64(), s)
    };
    let (base_s, _) = timed(config("pool", "batch0", false));
    // Follow the same pool, then drop one more shard in.
    let follower = {
        let c = config("pool", "follow", true);
        std::thread::spawn(move || flyt_pipelines::curate(c, timely::Config::thread()).expect("the pipeline"))
    };
    let shards_in = |out: &Path| -> usize {
        std::fs::read(out.join("manifest.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|m| m["shards"].as_array().map(|a| a.len()))
            .unwrap_or(0)
    };
    while shards_in(&p.join("follow")) < shards {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stem = format!("{shards:08}");
    let t = Instant::now();
    for ext in ["npz", "parquet"] {
        std::fs::rename(p.join(format!("extra/{stem}.{ext}")), p.join(format!("pool/{stem}.{ext}"))).expect("moving");
    }
    while shards_in(&p.join("follow")) < shards + 1 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let inc_s = t.elapsed().as_secs_f64();
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = follower.join();
    STOP.store(false, std::sync::atomic::Ordering::SeqCst);
    let (full_s, _) = timed(config("pool", "batch1", false));
    let a = flyt::SubsetCounts::read(p.join("follow/subset.npy")).expect("the followed subset");
    let b = flyt::SubsetCounts::read(p.join("batch1/subset.npy")).expect("the batch subset");
    assert!(a == b, "the followed subset differs from the batch run's");
    println!(
        "incremental: pool {} × {per_shard} samples, {dim}-d sidecars: one new {per_shard}-sample shard republished in {:.3} s \
         (poll 10 ms); a from-scratch batch run over the {} shards takes {full_s:.2} s ({base_s:.2} s without it): {:.0}× faster",
        shards,
        inc_s,
        shards + 1,
        full_s / inc_s
    );
}
