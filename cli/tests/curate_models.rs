//! `flyt curate` with models: tars embedded by a CLIP model (a tiny random one with the real tokenizer), a
//! FLYT head that changes between runs (re-scored from the stored embeddings, not re-embedded), and an M-FLYT
//! mixer joining external score files that arrive after the shards.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{flyt, manifest, ok, subset, tiny_clip};
use flyt::Uid;
use flyt::sampling::{Target, scs};
use flyt::synth::{SynthImage, SynthPool, SynthSidecars};
use tch::{Device, Tensor, nn};

fn write_checkpoint(path: &Path, tensors: Vec<(String, Tensor)>, meta: serde_json::Value) {
    let named: Vec<(String, Tensor)> = tensors.into_iter().map(|(n, t)| (format!("model.{n}"), t)).collect();
    Tensor::write_safetensors(&named, path).unwrap();
    std::fs::write(path.with_extension("json"), serde_json::to_vec(&serde_json::json!({ "meta": meta })).unwrap())
        .unwrap();
}

fn flyt_head(path: &Path, dim: i64, seed: i64) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let h = flyt::train::GluHead::new(&vs.root(), dim);
    // PyTorch's init gives scores too alike for two random heads to pick different subsets of a small pool; a
    // wider output layer makes them differ as trained heads do
    tch::no_grad(|| {
        for (n, mut t) in h.parameters() {
            if n.starts_with("w2") {
                let _ = t.g_mul_scalar_(20.0);
            }
        }
    });
    write_checkpoint(path, h.parameters(), serde_json::json!({"kind": "flyt", "dim": dim}));
}

fn vias(out: &Path) -> Vec<String> {
    manifest(out)["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| if s["replayed"] == true { "replayed".to_string() } else { s["via"].as_str().unwrap().to_string() })
        .collect()
}

#[test]
fn clip_model_then_a_changed_flyt_head_rescores_from_stored_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    tiny_clip(&p.join("clip"));
    flyt_head(&p.join("a.safetensors"), 8, 1);
    flyt_head(&p.join("b.safetensors"), 8, 2);
    SynthPool { shards: 3, samples_per_shard: 40, image: SynthImage::Png(20), seed: 4, dirt: 0.1 }
        .write(&p.join("pool"))
        .unwrap();
    let base = ["curate", "--shards", "pool", "--model", "clip", "--device", "cpu", "--batch-size", "16"];
    let run = |out: &str, extra: &[&str]| ok(flyt(&[&base[..], &["--out", out], extra].concat(), p));

    run("out", &[]);
    assert_eq!(vias(&p.join("out")), ["model"; 3]);
    let m = manifest(&p.join("out"));
    let inspect: serde_json::Value = serde_json::from_str(&ok(flyt(&["inspect", "--json", "pool"], p))).unwrap();
    for k in ["members", "samples", "accepted", "rejected"] {
        assert_eq!(m["ingest"][k], inspect["total"][k], "{k}: the curation ingest counts equal inspect's");
    }
    assert!(m["ingest"]["rejected"].as_u64().unwrap() > 0, "the pool has dirt");
    assert_eq!(m["pool"]["rows"], m["ingest"]["accepted"]);
    assert!(p.join("out/embeddings/00000000.npz").exists());

    // A FLYT head now: the scores change, the embeddings are reused.
    run("out", &["--flyt", "a.safetensors"]);
    assert_eq!(vias(&p.join("out")), ["stored"; 3]);
    let rescored = manifest(&p.join("out"));
    assert_eq!(rescored["ingest"], m["ingest"], "a re-score keeps the tar read's ingest counts and rejects");
    let rejects = |d: &str| -> usize {
        (0..3)
            .map(|i| {
                std::fs::read_to_string(p.join(format!("{d}/shards/{i:08}.rejects.jsonl"))).unwrap().lines().count()
            })
            .sum()
    };
    assert_eq!(rejects("out") as u64, m["ingest"]["rejected"].as_u64().unwrap());
    run("fresh_a", &["--flyt", "a.safetensors"]);
    assert_eq!(subset(&p.join("out")), subset(&p.join("fresh_a")), "re-scored equals a fresh run");
    // The same head again: nothing to do.
    run("out", &["--flyt", "a.safetensors"]);
    assert_eq!(vias(&p.join("out")), ["replayed"; 3]);
    assert_eq!(subset(&p.join("out")), subset(&p.join("fresh_a")));
    // Another head: re-scored again, and a different subset.
    run("out", &["--flyt", "b.safetensors"]);
    assert_eq!(vias(&p.join("out")), ["stored"; 3]);
    run("fresh_b", &["--flyt", "b.safetensors"]);
    assert_eq!(subset(&p.join("out")), subset(&p.join("fresh_b")));
    assert_ne!(subset(&p.join("fresh_a")), subset(&p.join("fresh_b")));

    // Without a model, tar shards fail with a message saying why; the run reports them and exits non-zero.
    let o = flyt(&["curate", "--shards", "pool", "--out", "nomodel"], p);
    assert!(!o.status.success());
    let m = manifest(&p.join("nomodel"));
    assert_eq!(m["failed"].as_array().unwrap().len(), 3);
    assert!(m["failed"][0]["error"].as_str().unwrap().contains("no CLIP model"), "{}", m["failed"]);
}

#[test]
fn mixer_joins_external_scores_that_arrive_later() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let pool = p.join("pool");
    SynthSidecars { shards: 4, rows_per_shard: 200, dim: 16, duplicates: 0.05, seed: 6, ..Default::default() }
        .write(&pool)
        .unwrap();
    // M-FLYT mixer over [clip_score, quality]: 1.0·clip + 0.5·(quality − 1)/2 + 0.1.
    let vs = nn::VarStore::new(Device::Cpu);
    let mut m = flyt::train::Mixer::new(&vs.root(), 2);
    m.set_stats(&Tensor::from_slice(&[-1.0f32, -1.0, 1.0, 3.0]).view([2, 2]));
    let mut tensors = m.parameters();
    tch::no_grad(|| {
        tensors[0].1.copy_(&Tensor::from_slice(&[1.0f32, 0.5]).view([1, 2]));
        tensors[1].1.copy_(&Tensor::from_slice(&[0.1f32]));
    });
    tensors.extend(m.buffers());
    write_checkpoint(
        &p.join("mix.safetensors"),
        tensors,
        serde_json::json!({"kind": "mflyt", "columns": ["clip_score", "quality"]}),
    );
    let weights = flyt::train::MixWeights::load(&p.join("mix.safetensors")).unwrap();

    let ext = p.join("ext");
    std::fs::create_dir_all(&ext).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_flyt"))
        .args(["curate", "--shards", "pool", "--out", "out", "--mixer", "mix.safetensors", "--scores", "ext"])
        .args(["--follow", "--idle-exit", "3", "--poll-ms", "50", "-w", "2", "--seed", "2"])
        .current_dir(p)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Until the scores arrive nothing is scored: the subset is empty.
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while !(p.join("out/manifest.json").exists() && manifest(&p.join("out"))["shards"].as_array().unwrap().len() == 4) {
        assert!(std::time::Instant::now() < until, "the shards were not committed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(manifest(&p.join("out"))["pool"]["scored"], 0);
    assert!(subset(&p.join("out")).is_empty());

    let clip = common::sidecar_clip_scores(&pool);
    let uids: Vec<Uid> = clip.keys().copied().collect();
    let value = |u: &Uid, salt: u64| ((u.low().wrapping_mul(2654435761).wrapping_add(salt) % 1000) as f32) / 250.0;
    // b.parquet: the second half of the uids and a tenth of the first; a.parquet: the first half (it wins where
    // both score a uid: the least file name); bad.parquet: a NaN, refused whole.
    let half = uids.len() / 2;
    let b: Vec<(Uid, String)> =
        uids[half..].iter().chain(uids[..half].iter().step_by(10)).map(|u| (*u, String::new())).collect();
    let a: Vec<(Uid, String)> = uids[..half].iter().map(|u| (*u, String::new())).collect();
    let put = |name: &str, ids: &[(Uid, String)], salt: u64| {
        let v: Vec<f32> = ids.iter().map(|(u, _)| value(u, salt)).collect();
        let tmp = p.join(format!("{name}.tmp"));
        flyt::write_score_table(&tmp, ids, &[], &[("quality", &v)]).unwrap();
        std::fs::rename(&tmp, ext.join(name)).unwrap();
    };
    put("b.parquet", &b, 7);
    std::thread::sleep(Duration::from_millis(300));
    put("a.parquet", &a, 1);
    let mut bad = vec![f32::NAN];
    bad.extend(std::iter::repeat_n(1.0, 9));
    let bad_ids: Vec<(Uid, String)> = uids[..10].iter().map(|u| (*u, String::new())).collect();
    let tmp = p.join("bad.tmp");
    flyt::write_score_table(&tmp, &bad_ids, &[], &[("quality", &bad)]).unwrap();
    std::fs::rename(&tmp, ext.join("bad.parquet")).unwrap();
    ok(child.wait_with_output().unwrap());

    let quality: BTreeMap<Uid, f32> =
        b.iter().map(|(u, _)| (*u, value(u, 7))).chain(a.iter().map(|(u, _)| (*u, value(u, 1)))).collect();
    let pool: Vec<(Uid, f64)> = clip.iter().map(|(u, c)| (*u, weights.mix(&[*c as f64, quality[u] as f64]))).collect();
    let want = scs(&pool, 0.15, Target::Ratio(1.0).for_pool(pool.len()), 2).unwrap();
    let want: BTreeMap<Uid, u32> = pool.iter().zip(want).filter(|(_, c)| *c > 0).map(|((u, _), c)| (*u, c)).collect();
    assert!(subset(&p.join("out")) == want, "the mixed subset differs from the batch computation");
    let m = manifest(&p.join("out"));
    assert_eq!(m["pool"]["scored"].as_u64().unwrap() as usize, pool.len());
    let ext_files = m["external_scores"].as_array().unwrap();
    let bad = ext_files.iter().find(|f| f["file"].as_str().unwrap().ends_with("bad.parquet")).unwrap();
    assert!(bad["error"].as_str().unwrap().contains("not a finite number"), "{bad}");
}
