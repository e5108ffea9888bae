//! CLIP parity with Hugging Face transformers: the tokenizer on 10,000 real web captions, and a tiny random
//! `CLIPModel` saved by transformers, loaded by flyt (and back), giving the same embeddings.

mod common;

use std::path::{Path, PathBuf};

use common::run_python;
use flyt::clip::{Clip, ClipTokenizer, l2_normalize};
use tch::{Device, Kind, Tensor};

fn bpe_vocab() -> PathBuf {
    let p = std::env::var("FLYT_CLIP_BPE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/clip/bpe_simple_vocab_16e6.txt.gz"));
    assert!(p.exists(), "{} is missing: run `./x test`", p.display());
    p
}

fn laion() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/laion_alt_text_10000.parquet")
}

#[test]
fn tokenizer_matches_transformers_on_real_captions() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ids.jsonl");
    run_python(
        r##"
import sys, json, pyarrow.parquet as pq
from transformers import CLIPTokenizer
bpe, parquet, tmp, out, scripts = sys.argv[1:6]
sys.path.insert(0, scripts)
from clip_vocab import write
write(bpe, tmp)
tok = CLIPTokenizer.from_pretrained(tmp)
assert len(tok.get_vocab()) == 49408, len(tok.get_vocab())
texts = [t for t in pq.read_table(parquet).column("TEXT").to_pylist() if t is not None]
with open(out, "w") as f:
    for t in texts:
        ids = tok(t, truncation=True, max_length=77)["input_ids"]
        f.write(json.dumps({"text": t, "ids": ids}) + "\n")
print(len(texts))
"##,
        &[
            bpe_vocab().to_str().unwrap(),
            laion().to_str().unwrap(),
            dir.path().to_str().unwrap(),
            out.to_str().unwrap(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/py"),
        ],
    );
    let ours = ClipTokenizer::from_open_clip_vocab(bpe_vocab()).unwrap();
    let hf_dir = ClipTokenizer::from_hf_dir(dir.path()).unwrap();
    let mut n = 0;
    let mut mismatches = Vec::new();
    for line in std::fs::read_to_string(&out).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = v["text"].as_str().unwrap();
        let want: Vec<u32> = v["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let got = ours.encode(text);
        assert_eq!(got, hf_dir.encode(text));
        if got != want {
            mismatches.push((text.to_string(), got, want));
        }
        n += 1;
    }
    assert!(n > 9000, "{n} captions");
    assert!(
        mismatches.is_empty(),
        "{} of {n} captions differ; first: {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(3)]
    );
}

const TINY: &str = r#"
import sys, numpy as np, torch
from transformers import CLIPConfig, CLIPModel
torch.manual_seed(0)
cfg = CLIPConfig(
    text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=77, hidden_act=sys.argv[2]),
    vision_config=dict(hidden_size=48, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                       image_size=32, patch_size=8, hidden_act=sys.argv[2]),
    projection_dim=16)
model = CLIPModel(cfg).eval()
# Random weights everywhere, including layer norms and biases, so that every parameter matters.
with torch.no_grad():
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.05)
model.save_pretrained(sys.argv[1], safe_serialization=True)
rng = np.random.default_rng(0)
pixels = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
ids = np.full((3, 77), 49407, dtype=np.int64)
for i, n in enumerate([5, 77, 12]):
    ids[i, 0] = 49406
    ids[i, 1:n - 1] = rng.integers(0, 49406, n - 2)
    ids[i, n - 1] = 49407
np.save(sys.argv[1] + "/pixels.npy", pixels)
np.save(sys.argv[1] + "/ids.npy", ids)
with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(pixels))
np.save(sys.argv[1] + "/img.npy", out.image_embeds.numpy())
np.save(sys.argv[1] + "/txt.npy", out.text_embeds.numpy())
np.save(sys.argv[1] + "/logits.npy", np.ascontiguousarray(out.logits_per_image.numpy()))
"#;

fn npy(path: &Path) -> Tensor {
    let a = flyt::parse_npy(&std::fs::read(path).unwrap(), path, "test").unwrap();
    let shape: Vec<i64> = a.shape.iter().map(|&d| d as i64).collect();
    match &a.data {
        flyt::NpyData::I64(v) => Tensor::from_slice(v).view(shape.as_slice()),
        _ => Tensor::from_slice(&a.to_f32().unwrap()).view(shape.as_slice()),
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn tiny_transformers_clip_loads_and_matches() {
    for act in ["quick_gelu", "gelu"] {
        let dir = tempfile::tempdir().unwrap();
        run_python(TINY, &[dir.path().to_str().unwrap(), act]);
        let (_vs, model) = Clip::load(dir.path(), Device::Cpu).unwrap();
        let pixels = npy(&dir.path().join("pixels.npy"));
        let ids = npy(&dir.path().join("ids.npy"));
        let (img, txt) =
            tch::no_grad(|| (l2_normalize(&model.image_features(&pixels)), l2_normalize(&model.text_features(&ids))));
        let (want_img, want_txt) = (npy(&dir.path().join("img.npy")), npy(&dir.path().join("txt.npy")));
        assert!(max_diff(&img, &want_img) < 1e-4, "{act}: image embeddings differ by {}", max_diff(&img, &want_img));
        assert!(max_diff(&txt, &want_txt) < 1e-4, "{act}: text embeddings differ by {}", max_diff(&txt, &want_txt));
        let logits = img.matmul(&txt.tr()) * model.logit_scale.exp();
        assert!(max_diff(&logits, &npy(&dir.path().join("logits.npy"))) < 1e-3);
        assert_eq!(img.kind(), Kind::Float);
    }
}

#[test]
fn a_model_flyt_saves_loads_in_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    run_python(TINY, &[src.to_str().unwrap(), "quick_gelu"]);
    let (vs, model) = Clip::load(&src, Device::Cpu).unwrap();
    // Change the weights, so the round trip cannot pass by reading the original file.
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            let _ = v.g_mul_scalar_(1.01);
        }
    });
    let out = dir.path().join("saved");
    model.save(&vs, &out).unwrap();
    let pixels = npy(&src.join("pixels.npy"));
    let ids = npy(&src.join("ids.npy"));
    let (img, txt) =
        tch::no_grad(|| (l2_normalize(&model.image_features(&pixels)), l2_normalize(&model.text_features(&ids))));
    let got = run_python(
        r#"
import sys, numpy as np, torch
from transformers import CLIPModel
m = CLIPModel.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    o = m(input_ids=torch.from_numpy(np.load(sys.argv[2])), pixel_values=torch.from_numpy(np.load(sys.argv[3])))
np.save(sys.argv[1] + "/img.npy", o.image_embeds.numpy())
np.save(sys.argv[1] + "/txt.npy", o.text_embeds.numpy())
print("ok")
"#,
        &[out.to_str().unwrap(), src.join("ids.npy").to_str().unwrap(), src.join("pixels.npy").to_str().unwrap()],
    );
    assert_eq!(got.trim(), "ok");
    assert!(max_diff(&img, &npy(&out.join("img.npy"))) < 1e-4);
    assert!(max_diff(&txt, &npy(&out.join("txt.npy"))) < 1e-4);
    assert!(max_diff(&img, &npy(&src.join("img.npy"))) > 1e-4, "the saved weights are the changed ones");
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = Clip::load(dir.path(), Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("config.json"), "{err}");
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"text_config": {"hidden_size": 30, "num_attention_heads": 4}, "vision_config": {}}"#,
    )
    .unwrap();
    let err = Clip::load(dir.path(), Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("not a positive multiple"), "{err}");
    std::fs::write(dir.path().join("config.json"), r#"{"text_config": {}, "vision_config": {}}"#).unwrap();
    let err = Clip::load(dir.path(), Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

/// Preprocessing equals `CLIPImageProcessor` (PIL backend) within 1/255 per pixel before normalisation, on
/// JPEG (RGB 4:2:0, progressive, grayscale, CMYK), PNG (RGB, RGBA, palette, grayscale) and WebP files written by
/// PIL, upscaled and downscaled, portrait and landscape, and on the real PNGs of webdataset's sample shard.
#[test]
fn preprocessing_matches_clip_image_processor() {
    let dir = tempfile::tempdir().unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/webdataset_sample.tgz");
    let listing = run_python(
        r#"
import sys, io, tarfile, numpy as np
from PIL import Image
from transformers import CLIPImageProcessor
out, sample = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
def photo(w, h):
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(x / 17.0 + c) * np.cos(y / 23.0 - c) for c in range(3)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
files = []
for i, (w, h) in enumerate([(300, 200), (180, 400), (224, 224), (50, 61), (640, 97)]):
    im = photo(w, h)
    im.save(f"{out}/rgb{i}.jpg", quality=90); files.append(f"rgb{i}.jpg")
    im.save(f"{out}/prog{i}.jpg", quality=85, progressive=True); files.append(f"prog{i}.jpg")
    im.convert("L").save(f"{out}/gray{i}.jpg", quality=90); files.append(f"gray{i}.jpg")
    im.convert("CMYK").save(f"{out}/cmyk{i}.jpg", quality=92); files.append(f"cmyk{i}.jpg")
    im.save(f"{out}/rgb{i}.png"); files.append(f"rgb{i}.png")
    a = im.convert("RGBA"); a.putalpha(Image.fromarray((np.arange(w * h).reshape(h, w) % 256).astype(np.uint8)))
    a.save(f"{out}/rgba{i}.png"); files.append(f"rgba{i}.png")
    im.convert("P", palette=Image.ADAPTIVE, colors=64).save(f"{out}/pal{i}.png"); files.append(f"pal{i}.png")
    im.convert("L").save(f"{out}/gray{i}.png"); files.append(f"gray{i}.png")
    im.save(f"{out}/lossless{i}.webp", lossless=True); files.append(f"lossless{i}.webp")
with tarfile.open(sample) as t:
    for m in t.getmembers()[:40]:
        if m.name.endswith(".png"):
            name = "sample_" + m.name.replace("/", "_")
            open(f"{out}/{name}", "wb").write(t.extractfile(m).read()); files.append(name)
proc = CLIPImageProcessor(do_rescale=False, do_normalize=False)
for f in files:
    px = proc(Image.open(f"{out}/{f}"), return_tensors="np")["pixel_values"][0]
    np.save(f"{out}/{f}.npy", np.ascontiguousarray(px.astype(np.float32)))
print("\n".join(files))
"#,
        &[dir.path().to_str().unwrap(), sample.to_str().unwrap()],
    );
    let files: Vec<&str> = listing.lines().collect();
    assert!(files.len() > 45, "{files:?}");
    let mut worst = (0.0f64, String::new());
    for f in &files {
        let bytes = std::fs::read(dir.path().join(f)).unwrap();
        let ours = flyt::clip::preprocess::preprocess(&bytes, 224, 224).unwrap_or_else(|e| panic!("{f}: {e}"));
        let ours = Tensor::from_slice(&ours).view([224, 224, 3]).permute([2, 0, 1]).to_kind(Kind::Float);
        let want = npy(&dir.path().join(format!("{f}.npy")));
        let d = max_diff(&ours, &want);
        if std::env::var_os("FLYT_DEBUG").is_some() {
            eprintln!("{f}: {d}");
        }
        if d > worst.0 {
            worst = (d, f.to_string());
        }
    }
    assert!(worst.0 <= 1.0, "largest difference {} (of 255) on {}", worst.0, worst.1);
}

#[test]
fn undecodable_and_oversized_images_are_refused_with_a_reason() {
    use flyt::clip::preprocess::decode_rgb;
    assert!(decode_rgb(b"not an image").unwrap_err().contains("unrecognised"));
    // A PNG header declaring 100000 x 100000 pixels.
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    png.extend_from_slice(&100_000u32.to_be_bytes());
    png.extend_from_slice(&100_000u32.to_be_bytes());
    png.extend_from_slice(&[8, 2, 0, 0, 0]);
    assert!(decode_rgb(&png).unwrap_err().contains("limit"));
    // A 1 x 20000 strip would resize to 224 x 4,480,000: refused, not allocated.
    let mut rng = flyt::rng::SplitMix64::new(2);
    let strip = {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, 1, 20_000);
        enc.set_color(png::ColorType::Grayscale);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&vec![(rng.next_u64() % 255) as u8; 20_000]).unwrap();
        drop(w);
        out
    };
    assert!(flyt::clip::preprocess::preprocess(&strip, 224, 224).unwrap_err().contains("aspect ratio"));
    // A truncated JPEG: both decoders are tried, and the reason names them.
    let mut rng = flyt::rng::SplitMix64::new(1);
    let jpg = flyt::synth::jpeg_image(64, &mut rng);
    let err = decode_rgb(&jpg[..jpg.len() / 3]);
    if let Err(e) = err {
        assert!(e.contains("zune-jpeg") && e.contains("libjpeg"), "{e}");
    }
}

/// FLYT trains this model: a CLIP loss backpropagates to every parameter, and an SGD step lowers it.
#[test]
fn the_model_trains() {
    let config: flyt::clip::ClipConfig = serde_json::from_value(serde_json::json!({
        "text_config": {"vocab_size": 100, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "max_position_embeddings": 8, "eos_token_id": 99},
        "vision_config": {"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2,
                          "image_size": 16, "patch_size": 8},
        "projection_dim": 8
    }))
    .unwrap();
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let model = Clip::new(&vs.root(), &config).unwrap();
    let pixels = Tensor::randn([6, 3, 16, 16], (Kind::Float, Device::Cpu));
    let ids = Tensor::randint(98, [6, 8], (Kind::Int64, Device::Cpu));
    let _ = ids.narrow(1, 7, 1).fill_(99);
    let loss = |m: &Clip| {
        let (u, t) = (l2_normalize(&m.image_features(&pixels)), l2_normalize(&m.text_features(&ids)));
        let logits = u.matmul(&t.tr()) * m.logit_scale.exp();
        let labels = Tensor::arange(6, (Kind::Int64, Device::Cpu));
        (logits.cross_entropy_for_logits(&labels) + logits.tr().cross_entropy_for_logits(&labels)) / 2.0
    };
    let before = loss(&model);
    before.backward();
    let vars = vs.variables();
    assert!(vars.len() > 30);
    for (name, v) in &vars {
        let g = v.grad();
        assert!(g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0, "no gradient reaches {name}");
    }
    let mut opt = tch::nn::OptimizerConfig::build(tch::nn::Sgd::default(), &vs, 0.1).unwrap();
    for _ in 0..20 {
        opt.zero_grad();
        loss(&model).backward();
        opt.step();
    }
    let after = tch::no_grad(|| loss(&model)).double_value(&[]);
    assert!(after < before.double_value(&[]) - 0.05, "{} → {after}", before.double_value(&[]));
}
