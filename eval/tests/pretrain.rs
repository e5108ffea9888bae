//! Training a CLIP from scratch on a multiset (`flyt_eval::pretrain_clip`) and zero-shot classification: the
//! loss falls, a learnable task is learnt, the same seed gives the same model, and the batch order covers each
//! pass of the multiset exactly.

use flyt::clip::ClipConfig;
use flyt_eval::{EpochOrder, ImageTextStore, PretrainConfig, pretrain_clip, zero_shot};
use tch::{Device, Tensor};

/// A CLIP small enough for a unit test: 8×8 images, 2×2 patches, a 12-token vocabulary, 6 tokens of context.
fn tiny() -> ClipConfig {
    serde_json::from_value(serde_json::json!({
        "text_config": {"vocab_size": 12, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "max_position_embeddings": 6, "eos_token_id": 2},
        "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "image_size": 8, "patch_size": 2},
        "projection_dim": 32,
    }))
    .unwrap()
}

/// Class c: an image of one colour (red, green, blue, white) with noise; its caption [start, 3 + c, end].
fn example(c: usize, noise: u64) -> (Vec<u8>, [i64; 6]) {
    let colour: [u64; 3] = [[220, 30, 30], [30, 220, 30], [30, 30, 220], [220, 220, 220]][c];
    let mut img = vec![0u8; 8 * 8 * 3];
    for (i, p) in img.iter_mut().enumerate() {
        let n = (noise.wrapping_mul(2654435761).wrapping_add(i as u64 * 40503) >> 7) % 30;
        *p = (colour[i % 3] + n).min(255) as u8;
    }
    // eos_token_id 2 means "the end token is the largest id" (argmax pooling), as in OpenAI's configs
    (img, [0, 3 + c as i64, 11, 11, 11, 11])
}

fn store(n: usize) -> (ImageTextStore, Vec<i64>) {
    let mut images = Vec::new();
    let mut ids = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let (img, t) = example(i % 4, i as u64);
        images.push(img);
        ids.extend(t);
        labels.push((i % 4) as i64);
    }
    (ImageTextStore { images, ids: Tensor::from_slice(&ids).view([n as i64, 6]), crop: 8 }, labels)
}

#[test]
fn a_learnable_task_is_learnt_and_the_same_seed_gives_the_same_model() {
    let (s, _) = store(64);
    let (test, labels) = store(40);
    let all: Vec<usize> = (0..64).collect();
    let cfg = PretrainConfig { steps: 150, batch: 16, lr: 2e-3, warmup: 10, weight_decay: 0.1, seed: 7 };
    let a = pretrain_clip(&tiny(), &s, &all, &cfg, Device::Cpu, |_, _| {}).unwrap();
    let first: f64 = a.losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = a.losses[145..].iter().sum::<f64>() / 5.0;
    assert!(last < 0.8 * first, "loss {first:.3} → {last:.3}");
    assert_eq!(a.epochs, 150 * 16 / 64, "completed passes (37.5 passes seen)");
    let prompts = Tensor::from_slice(&[
        0i64, 3, 11, 11, 11, 11, 0, 4, 11, 11, 11, 11, 0, 5, 11, 11, 11, 11, 0, 6, 11, 11, 11, 11,
    ])
    .view([4, 1, 6]);
    let z = zero_shot(&a.model, &test.images, 8, &labels, &prompts, Device::Cpu, 16).unwrap();
    assert!(z.accuracy > 0.9, "zero-shot accuracy {}", z.accuracy);
    assert_eq!(z.per_class.len(), 4);
    assert_eq!(z.predictions.len(), 40);

    let b = pretrain_clip(&tiny(), &s, &all, &cfg, Device::Cpu, |_, _| {}).unwrap();
    assert_eq!(a.losses, b.losses, "same seed, same run");
    let c =
        pretrain_clip(&tiny(), &s, &all, &PretrainConfig { seed: 8, ..cfg.clone() }, Device::Cpu, |_, _| {}).unwrap();
    assert_ne!(a.losses, c.losses, "another seed, another run");
}

#[test]
fn bad_inputs_are_errors() {
    let (s, labels) = store(8);
    let cfg = PretrainConfig { steps: 1, batch: 4, ..PretrainConfig::default() };
    let e = pretrain_clip(&tiny(), &s, &[], &cfg, Device::Cpu, |_, _| {}).err().unwrap().to_string();
    assert!(e.contains("empty subset"), "{e}");
    let e = pretrain_clip(&tiny(), &s, &[8], &cfg, Device::Cpu, |_, _| {}).err().unwrap().to_string();
    assert!(e.contains("outside the store"), "{e}");
    let one = PretrainConfig { batch: 1, ..cfg };
    assert!(pretrain_clip(&tiny(), &s, &[0], &one, Device::Cpu, |_, _| {}).is_err());
    let p = pretrain_clip(
        &tiny(),
        &s,
        &[0, 1],
        &PretrainConfig { steps: 1, batch: 2, ..PretrainConfig::default() },
        Device::Cpu,
        |_, _| {},
    )
    .unwrap();
    let prompts = Tensor::zeros([4, 1, 6], (tch::Kind::Int64, Device::Cpu));
    let mut bad = labels.clone();
    bad[0] = 9;
    assert!(zero_shot(&p.model, &s.images, 8, &bad, &prompts, Device::Cpu, 4).is_err());
    assert!(zero_shot(&p.model, &s.images[..3], 8, &labels, &prompts, Device::Cpu, 4).is_err());
}

#[test]
fn each_pass_covers_the_multiset_exactly() {
    let items = [0usize, 1, 1, 2, 5, 5, 5];
    let mut o = EpochOrder::new(&items, 3);
    let mut seen: Vec<usize> = Vec::new();
    for _ in 0..7 {
        seen.extend(o.next_batch(3)); // 21 = three passes
    }
    for pass in seen.chunks(7) {
        let mut p = pass.to_vec();
        p.sort_unstable();
        assert_eq!(p, items);
    }
    assert_ne!(seen[..7], seen[7..14], "each pass is reshuffled");
    let mut again = EpochOrder::new(&items, 3);
    assert_eq!(again.next_batch(21), seen, "seeded");
}
