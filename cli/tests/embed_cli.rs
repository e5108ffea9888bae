//! `flyt embed` end to end against transformers: a tiny random CLIP saved by transformers with the real CLIP
//! tokenizer, a shard of JPEG and PNG samples (and one undecodable image), embeddings compared with
//! `CLIPModel` + `CLIPImageProcessor` + `CLIPTokenizer` on the same samples.

mod common;

use common::{bpe, py_args};

use std::process::Command;

const MAKE_MODEL: &str = r##"
import sys, torch
from transformers import CLIPConfig, CLIPModel
out, bpe, scripts = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, scripts)
from clip_vocab import write
write(bpe, out)
torch.manual_seed(1)
cfg = CLIPConfig(
    text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4),
    vision_config=dict(hidden_size=48, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8),
    projection_dim=16)
model = CLIPModel(cfg).eval()
with torch.no_grad():
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.05)
model.save_pretrained(out, safe_serialization=True)
"##;

const REFERENCE: &str = r##"
import sys, io, json, numpy as np, torch, pyarrow.parquet as pq, webdataset as wds
from PIL import Image
from transformers import CLIPModel, CLIPImageProcessor, CLIPTokenizer
model_dir, shard, out, prefix = sys.argv[1:5]
model = CLIPModel.from_pretrained(model_dir).eval()
tok = CLIPTokenizer.from_pretrained(model_dir)
assert len(tok.get_vocab()) == 49408
proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
keys, imgs, caps = [], [], []
for s in wds.WebDataset(shard, shardshuffle=False):
    ext = "jpg" if "jpg" in s else "png"
    try:
        im = Image.open(io.BytesIO(s[ext])); im.load()
    except Exception:
        continue
    keys.append(s["__key__"]); imgs.append(im); caps.append(s["txt"].decode())
px = torch.from_numpy(proc(imgs, return_tensors="np")["pixel_values"])
ids = tok(caps, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
with torch.no_grad():
    o = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], pixel_values=px)
z = np.load(out + "/" + shard.rsplit("/", 1)[1].replace(".tar", ".npz"))
t = pq.read_table(out + "/" + shard.rsplit("/", 1)[1].replace(".tar", ".parquet")).to_pydict()
assert t["key"] == keys, (t["key"], keys)
ours_img, ours_txt = z[prefix + "_img"], z[prefix + "_txt"]
ref_img, ref_txt = o.image_embeds.numpy(), o.text_embeds.numpy()
score = (ref_img * ref_txt).sum(-1)
print(len(keys), float(np.abs(ours_img - ref_img).max()), float(np.abs(ours_txt - ref_txt).max()),
      float(np.abs(np.array(t[prefix + "_clip_score"]) - score).max()), ours_img.dtype)
"##;

#[test]
fn embed_matches_transformers_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    py_args(
        MAKE_MODEL,
        &[model.to_str().unwrap(), bpe().to_str().unwrap(), concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/py")],
    );
    // A shard: synthetic JPEGs and PNGs of several sizes, plus one sample whose image is not an image.
    let shards = dir.path().join("shards");
    let mut w = flyt::ShardWriter::new(&shards, 1000).unwrap();
    let mut rng = flyt::rng::SplitMix64::new(5);
    for i in 0..24u32 {
        let (ext, img) = if i % 2 == 0 {
            ("jpg", flyt::synth::jpeg_image(40 + i * 7, &mut rng))
        } else {
            ("png", flyt::synth::png_image(30 + i * 5, &mut rng))
        };
        let caption = flyt::synth::caption(&mut rng);
        w.write(
            &flyt::SampleBuilder::new(format!("{i:06}")).shard("00000000").image(ext, img).caption(caption).build(),
        )
        .unwrap();
    }
    w.write(
        &flyt::SampleBuilder::new("999999").image("jpg", b"\xff\xd8 not really".to_vec()).caption("broken").build(),
    )
    .unwrap();
    w.finish().unwrap();
    let shard = shards.join("00000000.tar");
    let out = dir.path().join("out");
    let flyt = env!("CARGO_BIN_EXE_flyt");
    let args = [
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--prefix",
        "b32",
        "--dtype",
        "f32",
        "--device",
        "cpu",
        "--batch-size",
        "5",
        "--exact-preprocessing",
        shard.to_str().unwrap(),
    ];
    let o = Command::new(flyt).args(args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report = py_args(REFERENCE, &[model.to_str().unwrap(), shard.to_str().unwrap(), out.to_str().unwrap(), "b32"]);
    let parts: Vec<&str> = report.split_whitespace().collect();
    assert_eq!(parts[0], "24", "{report}");
    for (what, v) in ["image", "text", "score"].iter().zip(&parts[1..4]) {
        let d: f64 = v.parse().unwrap();
        assert!(d < 1e-4, "{what} embeddings differ from transformers by {d}");
    }
    assert_eq!(parts[4], "float32");
    let rejects = std::fs::read_to_string(out.join("00000000.rejects.jsonl")).unwrap();
    assert_eq!(rejects.lines().count(), 1);
    assert!(rejects.contains("unreadable_image") && rejects.contains("999999"), "{rejects}");
    // Resumable: a second run skips the finished shard and leaves its outputs alone.
    let before = std::fs::metadata(out.join("00000000.npz")).unwrap().modified().unwrap();
    let o = Command::new(flyt).args(args).output().unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("skipped 1"), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(std::fs::metadata(out.join("00000000.npz")).unwrap().modified().unwrap(), before);
    // The output is a DataComp-style pool: CLIP-score filtering from images and captions, end to end.
    let table = flyt::read_metadata(out.join("00000000.parquet")).unwrap();
    assert!(table.rows.iter().all(|r| r.text.is_some() && r.original_width.is_some() && r.original_height.is_some()));
    let sub = dir.path().join("clip50.npy");
    let o = Command::new(flyt)
        .args(["filter", "--method", "clip-score", "--fraction", "0.5", "--device", "cpu", "--pool"])
        .args([out.to_str().unwrap(), "--out", sub.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let kept = flyt::read_subset(&sub).unwrap();
    let mut by_score = flyt::read_scores_parquet(out.join("00000000.parquet"), "b32_clip_score").unwrap();
    by_score.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut want: Vec<flyt::Uid> = by_score[..12].iter().map(|p| p.0).collect();
    want.sort();
    assert_eq!(kept, want, "the top half by the embedder's CLIP score");
    // A downstream task from a labelled shard, checked against transformers' text tower, then FLYT trained on
    // the embedded pool and the pool scored: the whole embedding-mode chain.
    let labelled = dir.path().join("labelled");
    let mut w = flyt::ShardWriter::new(&labelled, 1000).unwrap();
    for i in 0..12u32 {
        let img = flyt::synth::jpeg_image(40 + i * 3, &mut rng);
        w.write(&flyt::SampleBuilder::new(format!("{i:06}")).image("jpg", img).label((i % 3) as i64).build()).unwrap();
    }
    w.write(&flyt::SampleBuilder::new("999998").image("jpg", flyt::synth::jpeg_image(40, &mut rng)).label(7).build())
        .unwrap();
    w.finish().unwrap();
    std::fs::write(dir.path().join("classnames.txt"), "sandal\nbag\ncoat\n").unwrap();
    std::fs::write(dir.path().join("templates.txt"), "a photo of a {c}.\na {c} on a table.\n").unwrap();
    let task = dir.path().join("task.npz");
    let o = Command::new(flyt)
        .args(["downstream", "--model", model.to_str().unwrap(), "--device", "cpu", "--batch-size", "5"])
        .args(["--classnames", dir.path().join("classnames.txt").to_str().unwrap()])
        .args(["--templates", dir.path().join("templates.txt").to_str().unwrap()])
        .args(["--out", task.to_str().unwrap(), labelled.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("12 images of 3 classes, 2 templates"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("label Some(7)"), "{}", String::from_utf8_lossy(&o.stderr));
    let check = py_args(
        r#"
import sys, numpy as np, torch
from transformers import CLIPModel, CLIPTokenizer
z = np.load(sys.argv[2])
model = CLIPModel.from_pretrained(sys.argv[1]).eval(); tok = CLIPTokenizer.from_pretrained(sys.argv[1])
texts = [t.replace("{c}", c) for c in ["sandal", "bag", "coat"] for t in ["a photo of a {c}.", "a {c} on a table."]]
ids = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
with torch.no_grad():
    e = model.get_text_features(**ids)
e = getattr(e, "pooler_output", e)
e = (e / e.norm(dim=-1, keepdim=True)).numpy().reshape(3, 2, -1)
print(z["image"].shape, z["labels"].tolist(), z["prompts"].shape, float(np.abs(z["prompts"] - e).max()) < 1e-4)
"#,
        &[model.to_str().unwrap(), task.to_str().unwrap()],
    );
    assert_eq!(check.trim(), "(12, 16) [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2] (3, 2, 16) True");
    let train_out = dir.path().join("train");
    let o = Command::new(flyt)
        .args(["train", "flyt", "--pool", out.to_str().unwrap(), "--downstream", task.to_str().unwrap()])
        .args(["--out", train_out.to_str().unwrap(), "--steps", "6", "--batch", "8", "--down-batch", "6"])
        .args(["--warmup", "2", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let scored = dir.path().join("scored");
    let o = Command::new(flyt)
        .args(["score", "--model", train_out.join("checkpoint.safetensors").to_str().unwrap()])
        .args(["--pool", out.to_str().unwrap(), "--out", scored.to_str().unwrap(), "--device", "cpu"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let scores = flyt::read_scores_parquet(scored.join("00000000_scores.parquet"), "score").unwrap();
    assert_eq!(scores.len(), 24);
    // Full reference mode: the CLIP towers trained on the shard's images and captions, the labelled shard as
    // the downstream task; stopped, resumed, then its head scores the embedded pool.
    let full = dir.path().join("full");
    let full_args = |steps: &str| -> Vec<String> {
        [
            "train",
            "flyt",
            "--reference",
            "full",
            "--model",
            model.to_str().unwrap(),
            "--shards",
            shards.to_str().unwrap(),
            "--down-shards",
            labelled.to_str().unwrap(),
            "--classnames",
            dir.path().join("classnames.txt").to_str().unwrap(),
            "--templates",
            dir.path().join("templates.txt").to_str().unwrap(),
            "--out",
            full.to_str().unwrap(),
            "--steps",
            steps,
            "--batch",
            "6",
            "--down-batch",
            "5",
            "--warmup",
            "1",
            "--checkpoint-every",
            "2",
            "--device",
            "cpu",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let o = Command::new(flyt).args(full_args("4")).args(["--stop-after", "2"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let side = std::fs::read_to_string(full.join("checkpoint.json")).unwrap();
    assert!(side.contains("\"mode\": \"full\"") && side.contains("\"step\": 2"), "{side}");
    let o = Command::new(flyt).args(full_args("4")).arg("--resume").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("trained 2 steps 2..4"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(std::fs::read_to_string(full.join("losses.csv")).unwrap().lines().count(), 5);
    let o = Command::new(flyt)
        .args(["score", "--model", full.join("checkpoint.safetensors").to_str().unwrap()])
        .args([
            "--pool",
            out.to_str().unwrap(),
            "--out",
            dir.path().join("scored_full").to_str().unwrap(),
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let side = std::fs::read_to_string(full.join("checkpoint.json")).unwrap();
    assert!(side.contains("\"augment\": true"), "full mode augments by default: {side}");
    // A task DataComp knows, its class names and templates from DataComp's evaluation directory (as the official
    // code reads them), in `flyt downstream` and in full mode; one template drawn per class per step.
    let dc = dir.path().join("dc-eval/wds_mnist_test");
    std::fs::create_dir_all(&dc).unwrap();
    std::fs::write(dc.join("classnames.txt"), "zero\none\ntwo\n").unwrap();
    std::fs::write(dc.join("zeroshot_classification_templates.txt"), "a photo of the number: \"{c}\".\n{c}\na {c}.\n")
        .unwrap();
    let eval_dir = dir.path().join("dc-eval");
    let o = Command::new(flyt)
        .args(["downstream", "--model", model.to_str().unwrap(), "--device", "cpu", "--task", "mnist"])
        .args(["--datacomp-eval-dir", eval_dir.to_str().unwrap()])
        .args(["--out", dir.path().join("mnist.npz").to_str().unwrap(), labelled.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("12 images of 3 classes, 3 templates"));
    let o = Command::new(flyt)
        .args(["downstream", "--model", model.to_str().unwrap(), "--device", "cpu", "--task", "fashion"])
        .args(["--datacomp-eval-dir", eval_dir.to_str().unwrap()])
        .args(["--out", dir.path().join("x.npz").to_str().unwrap(), labelled.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("\"fashion\"") && err.contains("cifar10"), "{err}");
    let full_dc = |out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let o = Command::new(flyt)
            .args(["train", "flyt", "--reference", "full", "--model", model.to_str().unwrap()])
            .args(["--shards", shards.to_str().unwrap(), "--down-shards", labelled.to_str().unwrap()])
            .args(["--down-task", "mnist", "--datacomp-eval-dir", eval_dir.to_str().unwrap()])
            .args(["--out", out.to_str().unwrap(), "--steps", "2", "--batch", "6", "--down-batch", "5"])
            .args(["--warmup", "1", "--device", "cpu"])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (
            std::fs::read_to_string(out.join("checkpoint.json")).unwrap(),
            std::fs::read_to_string(out.join("losses.csv")).unwrap(),
        )
    };
    let (side, aug) = full_dc("full_dc", &[]);
    assert!(side.contains("wds_mnist_test/zeroshot_classification_templates.txt"), "{side}");
    assert!(side.contains("wds_mnist_test/classnames.txt"), "{side}");
    let (_, aug2) = full_dc("full_dc2", &[]);
    assert_eq!(aug, aug2, "augmentation is seeded");
    let (side, plain) = full_dc("full_dc3", &["--no-augment"]);
    assert!(side.contains("\"augment\": false"));
    assert_ne!(aug, plain, "the crops change the losses");
    // --stream-pool: the upstream images and captions read in place from the shard each step (decoded ahead of
    // the step), the frozen [u; t] from a scratch file: the same losses as the pool held in memory, with and
    // without the crops, and nothing left beside the output.
    let (side, streamed) = full_dc("full_dc4", &["--stream-pool"]);
    assert!(side.contains("\"pool_streamed\": true"), "{side}");
    assert_eq!(aug, streamed, "the streamed pool changes the losses (augmented)");
    let (_, streamed) = full_dc("full_dc5", &["--stream-pool", "--no-augment"]);
    assert_eq!(plain, streamed, "the streamed pool changes the losses (centre crops)");
    let left: Vec<_> =
        std::fs::read_dir(dir.path().join("full_dc5")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().starts_with(".tmp")), "{left:?}");
    // A compressed shard cannot be read in place: an error naming it.
    let gz = dir.path().join("gz");
    std::fs::create_dir_all(&gz).unwrap();
    py_args(
        "import gzip, pathlib, sys\nfor p in pathlib.Path(sys.argv[1]).glob('*.tar'):\n    \
         (pathlib.Path(sys.argv[2]) / (p.name + '.gz')).write_bytes(gzip.compress(p.read_bytes()))",
        &[shards.to_str().unwrap(), gz.to_str().unwrap()],
    );
    let o = Command::new(flyt)
        .args(["train", "flyt", "--reference", "full", "--model", model.to_str().unwrap()])
        .args(["--shards", gz.to_str().unwrap(), "--down-shards", labelled.to_str().unwrap()])
        .args(["--down-task", "mnist", "--datacomp-eval-dir", eval_dir.to_str().unwrap()])
        .args(["--out", dir.path().join("full_gz").to_str().unwrap(), "--steps", "2", "--batch", "6"])
        .args(["--down-batch", "5", "--device", "cpu", "--stream-pool"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(".tar.gz") && err.contains("uncompressed"), "{err}");
    // The reference from open_clip's names (the official code's): the towers as they are, the logit scale set
    // to 3; step 0's trace shows θ′ one small step from it.
    let hf: Vec<(String, tch::Tensor)> = tch::Tensor::read_safetensors(model.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .filter(|(n, _)| !n.ends_with("position_ids"))
        .map(|(n, t)| if n == "logit_scale" { (n, tch::Tensor::from_slice(&[3.0f32]).squeeze()) } else { (n, t) })
        .collect();
    let oc = flyt::clip::to_open_clip(&hf).unwrap();
    assert!(oc.iter().any(|(n, _)| n == "visual.transformer.resblocks.0.attn.in_proj_weight"));
    let init = dir.path().join("open_clip_init.safetensors");
    tch::Tensor::write_safetensors(&oc, &init).unwrap();
    let trace = dir.path().join("full_trace");
    full_dc("full_init", &["--init", init.to_str().unwrap(), "--trace", trace.to_str().unwrap(), "--trace-steps", "0"]);
    let t0: std::collections::HashMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(trace.join("step000000.safetensors")).unwrap().into_iter().collect();
    let ls = t0["theta_next.logit_scale"].double_value(&[]);
    assert!((ls - 3.0).abs() < 1e-3, "θ′'s logit scale {ls}: the init's 3 was not loaded");
    assert!(t0.contains_key("g.vision_model.embeddings.patch_embedding.weight") && t0.contains_key("G"));
    // Default float16 output, DataComp's dtype, and the fast (DCT-scaled) path run too.
    let out16 = dir.path().join("out16");
    let o = Command::new(flyt)
        .args([
            "embed",
            "--model",
            model.to_str().unwrap(),
            "--out",
            out16.to_str().unwrap(),
            "--device",
            "cpu",
            shard.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let arrays = flyt::read_npz(out16.join("00000000.npz")).unwrap();
    assert_eq!(arrays["emb_img"].shape, [24, 16]);
    assert!(matches!(arrays["emb_img"].data, flyt::NpyData::F16(_)));
}
