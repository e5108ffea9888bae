//! Every scoring method inside the curation graph. `flyt curate --config` with all methods gives, for every uid,
//! the same columns (bit for bit) as the batch jobs on the same pool — `flyt scores` for DataComp's methods,
//! `flyt score` for the FLYT head — for 1 and 3 workers and a shuffled arrival; with an M-FLYT mixer over those
//! columns it gives the subset that `flyt sample` gives on `flyt scores`' output mixed by the same mixer; and a
//! changed input of a method re-scores the committed shards.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{flyt, manifest, ok, py, subset};
use flyt::rng::SplitMix64;
use flyt::{NpyArray, NpyData, Uid};
use tch::{Device, Tensor, nn};

/// Five DataComp-style files (float16 b32 embeddings, captions in English and not, image sizes), 20 uids of
/// file 0003 repeating file 0001's with other embeddings, a downstream set and class names.
const POOL: &str = r#"
import os, numpy as np, pyarrow as pa, pyarrow.parquet as pq
rng = np.random.default_rng(7)
n, d, k = 1200, 16, 5
os.makedirs("pool", exist_ok=True)
centers = rng.normal(size=(k, d)); centers /= np.linalg.norm(centers, axis=1, keepdims=True)
lab = rng.integers(0, k, n)
img = centers[lab] + 0.1 * rng.normal(size=(n, d)); img /= np.linalg.norm(img, axis=1, keepdims=True)
txt = img + rng.uniform(0.2, 2.0, size=(n, 1)) * rng.normal(size=(n, d)); txt /= np.linalg.norm(txt, axis=1, keepdims=True)
names = ["sandal", "ankle boot", "pullover", "dress", "bag"]
caps = [("a photo of a %s on a table" % names[lab[i]]) if i % 5 else "ein Foto von einem roten Kleid" for i in range(n)]
w = rng.choice([150, 256, 640, 1024], n); h = rng.choice([190, 300, 640, 2000], n)
uids = [f"{(i * 2654435761 + 99) % 2**127:032x}" for i in range(n)]
for f in range(5):
    sl = slice(f * 240, (f + 1) * 240)
    u = list(uids[sl])
    if f == 3:
        u[:20] = uids[240:260]
    pq.write_table(pa.table({"uid": u, "text": caps[sl], "original_width": w[sl].astype(np.int64),
                             "original_height": h[sl].astype(np.int64)}), f"pool/{f:04d}.parquet")
    np.savez(f"pool/{f:04d}.npz", b32_img=img[sl].astype(np.float16), b32_txt=txt[sl].astype(np.float16))
np.save("down.npy", (centers[[0, 2]][np.arange(30) % 2] + 0.1 * rng.normal(size=(30, d))).astype(np.float32))
open("classnames.txt", "w").write("Sandal\nAnkle boot\nPullover\nDress\nBag\n")
"#;

/// Every method flyt computes, with their inputs, for `flyt curate --config`.
const CONFIG: &str = r#"
[input]
embeddings = "sidecar"
[embed]
device = "cpu"
[score]
methods = ["clip_score", "neg_clip_loss", "norm_sim_2", "norm_sim_inf", "image_based", "text_based", "basic", "flyt"]
flyt = "head.safetensors"
downstream = ["down.npy"]
classnames = ["classnames.txt"]
centroids = "cent.npy"
[score.neg_clip_loss]
batch = 100
repeats = 3
temperature = 0.05
seed = 4
[sample]
seed = 5
"#;

/// The columns of `flyt scores` (all but `flyt`).
const COLUMNS: [&str; 13] = [
    "basic",
    "caption_chars",
    "caption_words",
    "clip_score",
    "english",
    "image_aspect",
    "image_based",
    "image_based_sim",
    "image_min_side",
    "neg_clip_loss",
    "norm_sim_2",
    "norm_sim_inf",
    "text_based",
];

type Columns = BTreeMap<Uid, Vec<u32>>;

/// Per uid, the columns' bits from score tables (`<dir>/*<suffix>`), the least file name winning.
fn tables(dir: &Path, suffix: &str, names: &[&str]) -> Columns {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    let mut out = Columns::new();
    for f in files.iter().rev() {
        let t = flyt::read_score_table(f, names).unwrap();
        for (i, (u, _)) in t.ids.iter().enumerate() {
            out.insert(*u, t.columns.iter().map(|c| c[i].to_bits()).collect());
        }
    }
    out
}

/// What the batch jobs computed: `flyt scores`' columns, then `flyt score`'s FLYT score.
fn batch_columns(p: &Path) -> Columns {
    let mut want = tables(p, "all.parquet", &COLUMNS);
    let flyt_col = tables(&p.join("fl"), "_scores.parquet", &["score"]);
    assert_eq!(want.len(), flyt_col.len());
    for (u, v) in want.iter_mut() {
        v.push(flyt_col[u][0]);
    }
    want
}

fn curated_columns(out: &Path) -> Columns {
    let mut names: Vec<&str> = COLUMNS.to_vec();
    names.push("flyt");
    tables(&out.join("shards"), ".scores.parquet", &names)
}

#[track_caller]
fn same_columns(got: &Columns, want: &Columns, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: uids");
    let mut names: Vec<&str> = COLUMNS.to_vec();
    names.push("flyt");
    for (u, w) in want {
        let g = got.get(u).unwrap_or_else(|| panic!("{what}: uid {u} missing"));
        for (i, n) in names.iter().enumerate() {
            assert_eq!(g[i], w[i], "{what}: uid {u}, column {n}: {} vs {}", f32::from_bits(g[i]), f32::from_bits(w[i]));
        }
    }
}

fn write_checkpoint(path: &Path, tensors: Vec<(String, Tensor)>, meta: serde_json::Value) {
    let named: Vec<(String, Tensor)> = tensors.into_iter().map(|(n, t)| (format!("model.{n}"), t)).collect();
    Tensor::write_safetensors(&named, path).unwrap();
    std::fs::write(path.with_extension("json"), serde_json::to_vec(&serde_json::json!({ "meta": meta })).unwrap())
        .unwrap();
}

/// Moves a shard's sidecars into `dir` as a writer should: a temporary name, then a rename.
fn deliver(from: &Path, stem: &str, dir: &Path) {
    for ext in ["npz", "parquet"] {
        let tmp = dir.join(format!(".{stem}.{ext}.tmp"));
        std::fs::copy(from.join(format!("{stem}.{ext}")), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(format!("{stem}.{ext}"))).unwrap();
    }
}

#[test]
fn every_method_in_the_graph_equals_the_batch_jobs_and_the_mix_equals_flyt_sample() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    py(POOL, p);
    std::fs::write(p.join("pipeline.toml"), CONFIG).unwrap();
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let head = flyt::train::GluHead::new(&vs.root(), 16);
    write_checkpoint(&p.join("head.safetensors"), head.parameters(), serde_json::json!({"kind": "flyt", "dim": 16}));

    // The batch jobs.
    ok(flyt(&["clusters", "--pool", "pool", "--k", "5", "--seed", "1", "--out", "cent.npy"], p));
    let inputs = ["--downstream", "down.npy", "--classnames", "classnames.txt", "--centroids", "cent.npy"];
    let ncl = ["--ncl-batch", "100", "--ncl-repeats", "3", "--ncl-temperature", "0.05", "--seed", "4"];
    let scores = |out: &str| {
        let mut a = vec!["scores", "--pool", "pool", "--device", "cpu", "--out", out];
        a.extend(inputs);
        a.extend(ncl);
        ok(flyt(&a, p));
    };
    scores("all.parquet");
    ok(flyt(&["score", "--model", "head.safetensors", "--pool", "pool", "--out", "fl", "--device", "cpu"], p));
    let want = batch_columns(p);
    assert_eq!(want.len(), 1200 - 20, "one row per uid");

    // The graph, in a batch run on 1 worker.
    ok(flyt(&["curate", "--config", "pipeline.toml", "--shards", "pool", "--out", "out1", "-w", "1"], p));
    same_columns(&curated_columns(&p.join("out1")), &want, "1 worker");
    assert_eq!(manifest(&p.join("out1"))["pool"]["uids"], 1180);

    // Following on 3 workers, the shards arriving in a shuffled order.
    let watched = p.join("watched");
    std::fs::create_dir_all(&watched).unwrap();
    let child = common::spawn(
        &[
            "curate",
            "--config",
            "pipeline.toml",
            "--shards",
            "watched",
            "--out",
            "out3",
            "-w",
            "3",
            "--follow",
            "--idle-exit",
            "4",
            "--poll-ms",
            "50",
        ],
        p,
    );
    let mut stems: Vec<String> = (0..5).map(|f| format!("{f:04}")).collect();
    let mut rng = SplitMix64::new(3);
    rng.shuffle(&mut stems);
    for stem in &stems {
        deliver(&p.join("pool"), stem, &watched);
        std::thread::sleep(Duration::from_millis(rng.below(400)));
    }
    ok(child.wait_with_output().unwrap());
    same_columns(&curated_columns(&p.join("out3")), &want, &format!("3 workers, arrival {stems:?}"));

    // An M-FLYT mixer over six of the graph's columns: the same subset as `flyt sample` on the batch output mixed
    // by the same mixer.
    let mixed = ["clip_score", "neg_clip_loss", "norm_sim_inf", "image_based_sim", "text_based", "flyt"];
    let vs = nn::VarStore::new(Device::Cpu);
    let mut m = flyt::train::Mixer::new(&vs.root(), mixed.len() as i64);
    let stats: Vec<f32> = (0..2 * mixed.len()).map(|i| (i as f32 * 0.37).sin()).collect();
    m.set_stats(&Tensor::from_slice(&stats).view([2, mixed.len() as i64]));
    let mut tensors = m.parameters();
    tch::no_grad(|| {
        tensors[0].1.copy_(&Tensor::from_slice(&[2.0f32, 1.5, 0.7, 0.4, 0.3, 0.9]).view([1, 6]));
        tensors[1].1.copy_(&Tensor::from_slice(&[0.2f32]));
    });
    tensors.extend(m.buffers());
    write_checkpoint(&p.join("mix.safetensors"), tensors, serde_json::json!({"kind": "mflyt", "columns": mixed}));
    ok(flyt(
        &["curate", "--config", "pipeline.toml", "--shards", "pool", "--out", "out1", "--mixer", "mix.safetensors"],
        p,
    ));
    let replayed = manifest(&p.join("out1"))["shards"].as_array().unwrap().iter().all(|s| s["replayed"] == true);
    assert!(replayed, "the same methods replay their committed columns");
    let weights = flyt::train::MixWeights::load(&p.join("mix.safetensors")).unwrap();
    let mut names: Vec<&str> = COLUMNS.to_vec();
    names.push("flyt");
    let at: Vec<usize> = mixed.iter().map(|c| names.iter().position(|n| n == c).unwrap()).collect();
    let uids: Vec<Uid> = want.keys().copied().collect(); // sorted, as a subset file holds them
    let values: Vec<f64> = want
        .values()
        .map(|v| weights.mix(&at.iter().map(|&i| f32::from_bits(v[i]) as f64).collect::<Vec<_>>()))
        .collect();
    flyt::write_subset(p.join("uids.npy"), &uids).unwrap();
    let arr = NpyArray { shape: vec![values.len()], data: NpyData::F64(values) };
    std::fs::write(p.join("values.npy"), flyt::npy_bytes(&arr)).unwrap();
    ok(flyt(
        &[
            "sample",
            "--scores",
            "uids.npy",
            "--values",
            "values.npy",
            "--method",
            "scs",
            "--alpha",
            "0.15",
            "--target-ratio",
            "1.0",
            "--seed",
            "5",
            "--out",
            "sampled.npy",
        ],
        p,
    ));
    let sampled = flyt::SubsetCounts::read(p.join("sampled.npy")).unwrap();
    let sampled: BTreeMap<Uid, u32> = sampled.iter().collect();
    assert!(sampled.values().any(|&c| c > 1), "the test wants repeats");
    assert!(subset(&p.join("out1")) == sampled, "the mixed subset differs from flyt sample on the batch columns");

    // A changed input of one method (the class names) re-scores every committed shard.
    std::fs::write(p.join("classnames.txt"), "Sandal\nPullover\n").unwrap();
    ok(flyt(&["curate", "--config", "pipeline.toml", "--shards", "pool", "--out", "out1"], p));
    let m = manifest(&p.join("out1"));
    assert!(m["shards"].as_array().unwrap().iter().all(|s| s["replayed"] == false), "{}", m["shards"]);
    scores("all.parquet");
    same_columns(&curated_columns(&p.join("out1")), &batch_columns(p), "after the class names changed");
}
