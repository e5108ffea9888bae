//! negCLIPLoss (Wang et al. 2024): the CLIP score corrected by the normalisation term of the CLIP loss.

use super::{normalized, rows_of, tensor};
use crate::rng::SplitMix64;
use crate::{Error, Result, Uid};

/// negCLIPLoss settings.
#[derive(Clone, Debug, PartialEq)]
pub struct NegClipLossConfig {
    /// Batch size B of the random batches.
    pub batch_size: usize,
    /// Number K of random partitions of the pool the normalisation term is averaged over.
    pub repeats: usize,
    /// The teacher CLIP's temperature τ (OpenAI CLIP's learned logit scale is 100, so τ = 0.01).
    pub temperature: f64,
    /// Seed of the random batches.
    pub seed: u64,
}

impl Default for NegClipLossConfig {
    fn default() -> Self {
        Self { batch_size: 32768, repeats: 10, temperature: 0.01, seed: 0 }
    }
}

/// negCLIPLoss of each example (higher is better).
///
/// Definition (Wang, Chen, Yan, Fang, Zhou, Jamieson, Du: "CLIPLoss and Norm-Based Data Selection Methods for
/// Multimodal Contrastive Learning", NeurIPS 2024, arXiv 2405.19547, §3.1): with normalised teacher
/// embeddings ū (image) and v̄ (text) and a batch B ∋ i,
///
/// ```text
/// negCLIPLoss(i) = ū_iᵀv̄_i − R(i),
/// R(i) = (1/K) Σ_k (τ/2) [ log Σ_{j∈B_k} exp(ū_iᵀv̄_j / τ) + log Σ_{j∈B_k} exp(ū_jᵀv̄_i / τ) ]
/// ```
///
/// i.e. −τ × the example's CLIP loss in its batch, averaged over K random batches B_k containing it; both sums
/// include j = i. τ is a fixed 0.01 and B = 32768, K = 10 in the authors' main runs (their code:
/// `cal_new_clip_score` in `baselines/vas2.py` of `ypwang61/negCLIPLoss_NormSim`), the defaults here.
/// The batches are K seeded random partitions of the rows given into batches of (nearly) equal size; the order
/// is a function of (seed, k, uid), so the result does not depend on the input order. Two conscious
/// differences from the authors' code, which partitions each parquet shard with `randperm` and leaves the last
/// batch short: here the rows given are partitioned together (call it per shard to get theirs), and when their
/// number is not a multiple of B the batches have ⌊N/⌈N/B⌉⌋ or one more members and each log-sum is shifted
/// by log(B/|B_k|), so no example is favoured for landing in a short batch. Fewer rows than B: one batch.
///
/// ```
/// use flyt::{Uid, methods::{NegClipLossConfig, neg_clip_loss}};
/// let uids: Vec<Uid> = (0..4).map(|i| Uid::from_parts(0, i)).collect();
/// let img = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0];
/// let txt = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]; // the last two pairs are mismatched
/// let s = neg_clip_loss(&uids, &img, &txt, 2, &NegClipLossConfig::default(), tch::Device::Cpu).unwrap();
/// assert!(s[0] > s[2] && s[1] > s[3]);
/// ```
pub fn neg_clip_loss(
    uids: &[Uid],
    image: &[f32],
    text: &[f32],
    dim: usize,
    config: &NegClipLossConfig,
    device: tch::Device,
) -> Result<Vec<f32>> {
    if config.batch_size == 0
        || config.repeats == 0
        || config.temperature.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
    {
        return Err(Error::Config("negCLIPLoss: batch size, repeats and temperature must be positive".into()));
    }
    let partitions = random_batches(uids, config.batch_size, config.repeats, config.seed);
    neg_clip_loss_in_batches(image, text, dim, &partitions, config.batch_size, config.temperature, device)
}

/// The random batches [`neg_clip_loss`] uses: `repeats` partitions of the rows `0..uids.len()` into
/// ⌈N/B⌉ batches of nearly equal size, each partition ordered by a hash of (seed, repeat, uid).
pub fn random_batches(uids: &[Uid], batch_size: usize, repeats: usize, seed: u64) -> Vec<Vec<Vec<u32>>> {
    let n = uids.len();
    if n == 0 || batch_size == 0 {
        return vec![Vec::new(); repeats];
    }
    let batches = n.div_ceil(batch_size.min(n));
    (0..repeats)
        .map(|k| {
            let mut order: Vec<(u64, u32)> = uids
                .iter()
                .enumerate()
                .map(|(i, uid)| {
                    let mut h = SplitMix64::new(seed ^ (k as u64).wrapping_mul(0xA076_1D64_78BD_642F) ^ uid.high());
                    let x = h.next_u64() ^ uid.low();
                    (SplitMix64::new(x).next_u64(), i as u32)
                })
                .collect();
            order.sort_unstable();
            let mut start = 0;
            (0..batches)
                .map(|j| {
                    let len = n / batches + usize::from(j < n % batches);
                    let b: Vec<u32> = order[start..start + len].iter().map(|&(_, i)| i).collect();
                    start += len;
                    b
                })
                .collect()
        })
        .collect()
}

/// negCLIPLoss over given batches: `partitions[k]` is the k-th partition (a list of batches of row indices);
/// every row must be in exactly one batch of every partition. `batch_size` is the nominal B (log-sums of a
/// batch of another size are shifted by log(B/|batch|)); `temperature` is τ.
pub fn neg_clip_loss_in_batches(
    image: &[f32],
    text: &[f32],
    dim: usize,
    partitions: &[Vec<Vec<u32>>],
    batch_size: usize,
    temperature: f64,
    device: tch::Device,
) -> Result<Vec<f32>> {
    let n = rows_of("image embeddings", image, dim)?;
    if rows_of("text embeddings", text, dim)? != n {
        return Err(Error::Config(format!("negCLIPLoss: {n} image rows but {} text rows", text.len() / dim)));
    }
    if partitions.is_empty() || batch_size == 0 || temperature.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return Err(Error::Config("negCLIPLoss: batch size, repeats and temperature must be positive".into()));
    }
    for (k, part) in partitions.iter().enumerate() {
        let mut seen = vec![false; n];
        for &i in part.iter().flatten() {
            match seen.get_mut(i as usize) {
                Some(s) if !*s => *s = true,
                _ => {
                    return Err(Error::Config(format!("negCLIPLoss: partition {k} has row {i} twice or out of range")));
                }
            }
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(Error::Config(format!("negCLIPLoss: partition {k} misses row {i}")));
        }
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    let _guard = tch::no_grad_guard();
    // In f64: an f32 matmul's last bits depend on how many threads the BLAS used (which varies with what else
    // runs), so the same shard could score differently in two runs; rounded to f32 at the end, f64's do not.
    let f64s = |t: &tch::Tensor| -> Result<Vec<f64>> {
        let t = t.to_device(tch::Device::Cpu).to_kind(tch::Kind::Double).contiguous();
        Vec::<f64>::try_from(&t).map_err(|e| Error::Config(format!("tensor to vector: {e}")))
    };
    let u = tensor(&normalized(image, dim), dim, device).to_kind(tch::Kind::Double);
    let v = tensor(&normalized(text, dim), dim, device).to_kind(tch::Kind::Double);
    let clip = f64s(&(&u * &v).sum_dim_intlist([1i64].as_slice(), false, tch::Kind::Double))?;
    let nominal = batch_size.min(n);
    let mut r = vec![0f64; n];
    for part in partitions {
        for batch in part.iter().filter(|b| !b.is_empty()) {
            let idx: Vec<i64> = batch.iter().map(|&i| i as i64).collect();
            let sel = tch::Tensor::from_slice(&idx).to_device(device);
            let (ub, vb) = (u.index_select(0, &sel), v.index_select(0, &sel));
            let logits = ub.matmul(&vb.transpose(0, 1)) / temperature;
            let rows = logits.logsumexp([1i64].as_slice(), false);
            let cols = logits.logsumexp([0i64].as_slice(), false);
            let shift = temperature * (nominal as f64 / batch.len() as f64).ln();
            for (&i, t) in batch.iter().zip(f64s(&((rows + cols) * (temperature / 2.0)))?) {
                r[i as usize] += t + shift;
            }
        }
    }
    let k = partitions.len() as f64;
    Ok(clip.iter().zip(&r).map(|(&c, &ri)| (c - ri / k) as f32).collect())
}
