//! Synthetic pools in img2dataset's layout, for the demo, tests and benchmarks: shards of `NNNNNNNN.tar` with
//! `<key>.jpg|png`, `<key>.txt`, `<key>.json` (DataComp fields, `uid` included), keys `shard·10⁴ + i` as 12
//! digits. Deterministic for a seed.

use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::rng::SplitMix64;
use crate::sample::Member;
use crate::webdataset::ShardWriter;
use crate::{Result, Uid};

/// The image members a synthetic pool carries.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SynthImage {
    /// Smooth colour-gradient PNGs of this side length.
    Png(u32),
    /// Noisy JPEGs of this side length (about 30 KB at 160 px), cycled from 32 distinct images.
    Jpeg(u32),
}

/// A synthetic pool description.
#[derive(Clone, Debug)]
pub struct SynthPool {
    /// Number of shards.
    pub shards: usize,
    /// Samples per shard.
    pub samples_per_shard: usize,
    /// Image kind.
    pub image: SynthImage,
    /// Seed.
    pub seed: u64,
    /// Fraction of samples made faulty, spread over: missing caption, bad json, bad uid, empty caption member,
    /// duplicate uid, non-adjacent member. 0 for a clean pool.
    pub dirt: f64,
}

impl Default for SynthPool {
    fn default() -> Self {
        SynthPool { shards: 2, samples_per_shard: 100, image: SynthImage::Png(32), seed: 0, dirt: 0.0 }
    }
}

const ADJ: &[&str] = &["red", "small", "old", "shiny", "wooden", "striped", "happy", "blue", "vintage", "tiny"];
const NOUN: &[&str] = &["cat", "dog", "car", "house", "boat", "shoe", "lamp", "tree", "bicycle", "guitar"];
const PLACE: &[&str] = &["beach", "table", "street", "forest", "kitchen", "field", "shelf", "river"];

/// A random caption in the style of web alt-text.
pub fn caption(rng: &mut SplitMix64) -> String {
    let pick = |rng: &mut SplitMix64, v: &[&'static str]| v[rng.below(v.len() as u64) as usize];
    format!("a {} {} on a {}", pick(rng, ADJ), pick(rng, NOUN), pick(rng, PLACE))
}

/// A PNG of a colour gradient.
pub fn png_image(side: u32, rng: &mut SplitMix64) -> Vec<u8> {
    let (r0, g0, b0) = (rng.below(256) as u32, rng.below(256) as u32, rng.below(256) as u32);
    let mut pixels = Vec::with_capacity((side * side * 3) as usize);
    for y in 0..side {
        for x in 0..side {
            pixels.push(((r0 + x * 255 / side.max(1)) % 256) as u8);
            pixels.push(((g0 + y * 255 / side.max(1)) % 256) as u8);
            pixels.push(b0 as u8);
        }
    }
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, side, side);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().expect("writing a PNG header to memory");
    w.write_image_data(&pixels).expect("writing PNG data to memory");
    drop(w);
    out
}

/// A noisy baseline JPEG (quality 90).
pub fn jpeg_image(side: u32, rng: &mut SplitMix64) -> Vec<u8> {
    let side = side.clamp(1, u16::MAX as u32) as u16;
    let pixels: Vec<u8> = (0..side as usize * side as usize * 3).map(|_| rng.below(256) as u8).collect();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(&pixels, side, side, jpeg_encoder::ColorType::Rgb)
        .expect("encoding a JPEG to memory");
    out
}

impl SynthPool {
    /// Writes the pool's shards into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let mut rng = SplitMix64::new(self.seed);
        let jpegs: Vec<Vec<u8>> = match self.image {
            SynthImage::Jpeg(side) => (0..32).map(|_| jpeg_image(side, &mut rng)).collect(),
            SynthImage::Png(_) => Vec::new(),
        };
        let mut writer = ShardWriter::new(dir, self.samples_per_shard.max(1) as u64)?;
        let mut last_uid = None;
        let mut pending_orphan: Option<(String, Member)> = None;
        for shard in 0..self.shards {
            for i in 0..self.samples_per_shard {
                let key = format!("{:012}", shard * 10_000 + i);
                let (ext, image, side) = match self.image {
                    SynthImage::Png(side) => ("png", png_image(side, &mut rng), side),
                    SynthImage::Jpeg(side) => ("jpg", jpegs[rng.below(32) as usize].clone(), side),
                };
                let mut uid = Uid::from_parts(rng.next_u64(), rng.next_u64());
                let text = caption(&mut rng);
                let fault = if self.dirt > 0.0 && rng.unit() < self.dirt { Some(rng.below(6)) } else { None };
                if fault == Some(4)
                    && let Some(prev) = last_uid
                {
                    uid = prev;
                }
                let sha = Sha256::digest(&image).iter().map(|b| format!("{b:02x}")).collect::<String>();
                let meta = json!({
                    "uid": if fault == Some(2) { format!("{uid}zz") } else { uid.to_string() },
                    "key": key, "caption": text, "status": "success",
                    "url": format!("https://example.invalid/{key}.{ext}"),
                    "width": side, "height": side, "original_width": side * 2, "original_height": side * 2,
                    "sha256": sha,
                });
                let mut members = vec![Member { ext: ext.into(), data: image }];
                match fault {
                    Some(0) => {}
                    Some(3) => members.push(Member { ext: "txt".into(), data: Vec::new() }),
                    _ => members.push(Member { ext: "txt".into(), data: text.into_bytes() }),
                }
                let json_bytes = if fault == Some(1) { b"{\"uid\": ".to_vec() } else { meta.to_string().into_bytes() };
                let json_member = Member { ext: "json".into(), data: json_bytes };
                if fault == Some(5) {
                    // Hold the json back and write it after the next sample: a non-adjacent member.
                    pending_orphan = Some((key.clone(), json_member));
                } else {
                    members.push(json_member);
                }
                writer.write_members(&key, &members)?;
                if fault != Some(5)
                    && let Some((okey, m)) = pending_orphan.take()
                {
                    writer.write_uncounted(&okey, std::slice::from_ref(&m))?;
                }
                last_uid = Some(uid);
            }
        }
        if let Some((okey, m)) = pending_orphan.take() {
            writer.write_uncounted(&okey, std::slice::from_ref(&m))?;
        }
        let summary = writer.finish()?;
        Ok(summary.shards.iter().map(|s| dir.join(&s.name)).collect())
    }
}

/// A synthetic pool of DataComp sidecars only (no tars): per shard `NNNNNNNN.parquet` (uid, key, text) and
/// `NNNNNNNN.npz` with f16 `<prefix>_img` / `<prefix>_txt`, the text embedding a noisy copy of the image
/// embedding (so CLIP scores spread), and a fraction of rows repeating a uid from an earlier shard.
#[derive(Clone, Debug)]
pub struct SynthSidecars {
    /// Number of shards.
    pub shards: usize,
    /// Rows per shard.
    pub rows_per_shard: usize,
    /// Embedding dimension.
    pub dim: usize,
    /// The arrays' prefix.
    pub prefix: String,
    /// Fraction of rows that repeat an earlier shard's uid.
    pub duplicates: f64,
    /// Fraction of rows (new uids) whose image embedding is a near-copy (cosine about 0.999) of an earlier
    /// row's, in this shard or an earlier one.
    pub near_duplicates: f64,
    /// Number of the first shard (its file name).
    pub first_shard: usize,
    /// Seed.
    pub seed: u64,
}

impl Default for SynthSidecars {
    fn default() -> Self {
        SynthSidecars {
            shards: 2,
            rows_per_shard: 100,
            dim: 16,
            prefix: "b32".into(),
            duplicates: 0.0,
            near_duplicates: 0.0,
            first_shard: 0,
            seed: 0,
        }
    }
}

impl SynthSidecars {
    /// The uid of row `i` of shard `s`.
    pub fn uid(&self, s: usize, i: usize) -> Uid {
        Uid::from_parts(0x5eed_0000_0000_0000 ^ self.seed, (s * 1_000_000_007 + i) as u64)
    }

    /// Writes the pool into `dir`; returns the parquet paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        use crate::datacomp::{NpyArray, NpyData, write_npz, write_score_table};
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
        let mut out = Vec::new();
        let mut earlier: Vec<Vec<f64>> = Vec::new();
        for s in self.first_shard..self.first_shard + self.shards {
            // SplitMix64 steps its state by this same constant, so seeding shard s with seed ^ s·C would make
            // its stream shard 1's shifted by s − 1 draws (rows repeating across shards): hash the seed first.
            let mut rng =
                SplitMix64::new(SplitMix64::new(self.seed ^ (s as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64());
            let d = self.dim;
            let (mut img, mut txt) =
                (Vec::with_capacity(self.rows_per_shard * d), Vec::with_capacity(self.rows_per_shard * d));
            let mut ids = Vec::with_capacity(self.rows_per_shard);
            for i in 0..self.rows_per_shard {
                let uid = if s > 0 && rng.unit() < self.duplicates {
                    self.uid(rng.below(s as u64) as usize, rng.below(self.rows_per_shard as u64) as usize)
                } else {
                    self.uid(s, i)
                };
                ids.push((uid, format!("{:012}", s * 10_000 + i)));
                let noise = rng.unit() * 2.0;
                let u: Vec<f64> = if !earlier.is_empty() && rng.unit() < self.near_duplicates {
                    let base = &earlier[rng.below(earlier.len() as u64) as usize];
                    let scale = base.iter().map(|x| x * x).sum::<f64>().sqrt() * 0.03 / (d as f64).sqrt();
                    base.iter().map(|x| x + scale * (rng.unit() * 2.0 - 1.0)).collect()
                } else {
                    (0..d).map(|_| rng.unit() * 2.0 - 1.0).collect()
                };
                if self.near_duplicates > 0.0 {
                    earlier.push(u.clone());
                }
                let t: Vec<f64> = u.iter().map(|x| x + noise * (rng.unit() * 2.0 - 1.0)).collect();
                let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
                let (nu, nt) = (norm(&u), norm(&t));
                img.extend(u.iter().map(|x| half::f16::from_f64(x / nu)));
                txt.extend(t.iter().map(|x| half::f16::from_f64(x / nt)));
            }
            let stem = format!("{s:08}");
            let shape = vec![self.rows_per_shard, d];
            let mut arrays = std::collections::BTreeMap::new();
            arrays.insert(format!("{}_img", self.prefix), NpyArray { shape: shape.clone(), data: NpyData::F16(img) });
            arrays.insert(format!("{}_txt", self.prefix), NpyArray { shape, data: NpyData::F16(txt) });
            write_npz(dir.join(format!("{stem}.npz")), &arrays, false)?;
            let parquet = dir.join(format!("{stem}.parquet"));
            write_score_table(&parquet, &ids, &[], &[])?;
            out.push(parquet);
        }
        Ok(out)
    }
}
