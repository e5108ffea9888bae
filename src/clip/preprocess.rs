//! Image preprocessing equal to Hugging Face's `CLIPImageProcessor` (PIL backend): decode, convert to RGB
//! (transparency composited onto white), resize the shortest side with PIL's bicubic filter, centre-crop,
//! rescale to [0, 1] and normalise with OpenAI's mean and std.

use crate::ImageFormat;
use crate::ImageInfo;
use crate::image_info::sniff_image;

/// OpenAI CLIP's per-channel mean.
pub const OPENAI_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's per-channel standard deviation.
pub const OPENAI_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Images whose header declares more pixels than this are refused before decoding (decompression bombs);
/// twice PIL's `MAX_IMAGE_PIXELS`, where PIL itself refuses.
pub const MAX_PIXELS: u64 = 2 * 89_478_485;

/// Images whose decoding would allocate more than this (the decoder's buffer, width × height × components ×
/// bytes per sample, plus the RGB8 copy) are refused before decoding: an RGB8 image at [`MAX_PIXELS`] fits,
/// a 13000² RGBA 16-bit PNG (1.35 GB decoded from 1.3 MB) does not.
pub const MAX_DECODED_BYTES: u64 = 6 * MAX_PIXELS;

/// Decoded bytes all decoding threads of the process may hold at once ([`DecodeBudget`]); at least
/// [`MAX_DECODED_BYTES`], so any image that may be decoded at all can be.
pub const POOL_DECODED_BYTES: u64 = 1 << 30;

/// A process-wide budget of bytes that image decoders hold at once: a decoder reserves what its image will take
/// before decoding and waits while the others hold too much. Bounds the decode pool's peak memory by bytes,
/// not by image count.
///
/// ```
/// let budget = flyt::clip::DecodeBudget::new(100);
/// let a = budget.reserve(60);
/// assert_eq!(budget.held(), 60);
/// drop(a);
/// let _b = budget.reserve(500); // larger than the budget: waits until nothing else is held, then runs alone
/// assert_eq!(budget.peak(), 500);
/// ```
#[derive(Debug)]
pub struct DecodeBudget {
    capacity: u64,
    state: std::sync::Mutex<(u64, u64)>,
    freed: std::sync::Condvar,
}

/// Bytes reserved from a [`DecodeBudget`], given back when dropped.
#[derive(Debug)]
pub struct Reservation<'a> {
    budget: &'a DecodeBudget,
    bytes: u64,
}

impl DecodeBudget {
    /// A budget of `capacity` bytes.
    pub const fn new(capacity: u64) -> Self {
        DecodeBudget { capacity, state: std::sync::Mutex::new((0, 0)), freed: std::sync::Condvar::new() }
    }

    /// The process's budget for image decoding ([`POOL_DECODED_BYTES`]).
    pub fn global() -> &'static DecodeBudget {
        static GLOBAL: DecodeBudget = DecodeBudget::new(POOL_DECODED_BYTES);
        &GLOBAL
    }

    /// Reserves `bytes`, waiting while the others hold more than the budget leaves. A reservation larger than
    /// the whole budget waits until nothing else is held.
    pub fn reserve(&self, bytes: u64) -> Reservation<'_> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while s.0 > 0 && s.0 + bytes > self.capacity {
            s = self.freed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.0 += bytes;
        s.1 = s.1.max(s.0);
        Reservation { budget: self, bytes }
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// The most bytes held at once so far.
    pub fn peak(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut s = self.budget.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 -= self.bytes;
        drop(s);
        self.budget.freed.notify_all();
    }
}

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// `width · height · 3` bytes.
    pub data: Vec<u8>,
}

/// Composites straight alpha onto white the way PIL's `alpha_composite` onto an opaque white background does.
fn over_white(v: u8, a: u8) -> u8 {
    // PIL: blend = src·a + dst·(255 − a), divided by 255 with rounding (dst = 255).
    let t = v as u32 * a as u32 + 255 * (255 - a as u32) + 128;
    ((t + (t >> 8)) >> 8) as u8
}

fn from_rgba(width: usize, height: usize, rgba: &[u8]) -> RgbImage {
    let data = rgba
        .chunks_exact(4)
        .flat_map(|p| [over_white(p[0], p[3]), over_white(p[1], p[3]), over_white(p[2], p[3])])
        .collect();
    RgbImage { width, height, data }
}

fn decode_jpeg_zune(bytes: &[u8]) -> Result<RgbImage, String> {
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;
    let opts = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(1 << 16)
        .set_max_height(1 << 16);
    let mut d = zune_jpeg::JpegDecoder::new_with_options(bytes, opts);
    let data = d.decode().map_err(|e| format!("zune-jpeg: {e:?}"))?;
    let info = d.info().ok_or("zune-jpeg: no image info")?;
    let (width, height) = (info.width as usize, info.height as usize);
    if data.len() != width * height * 3 {
        return Err(format!("zune-jpeg: {} bytes for {width}x{height}", data.len()));
    }
    Ok(RgbImage { width, height, data })
}

/// PIL's `MULDIV255`.
fn muldiv255(a: u32, b: u32) -> u32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

/// Decodes with libjpeg-turbo's code (through mozjpeg, statically linked): the decoder PIL uses, with the same
/// defaults (accurate integer IDCT, fancy upsampling), so pixels match PIL's exactly. `scale` (1..=8) decodes at
/// scale/8 size in the DCT domain. CMYK (Adobe, stored inverted) is converted with PIL's arithmetic.
fn decode_jpeg_libjpeg(bytes: &[u8], scale: u8) -> Result<RgbImage, String> {
    let run = || -> std::io::Result<RgbImage> {
        let mut d = mozjpeg::Decompress::new_mem(bytes)?;
        if scale < 8 {
            d.scale(scale);
        }
        let adobe_cmyk = matches!(d.color_space(), mozjpeg::ColorSpace::JCS_CMYK | mozjpeg::ColorSpace::JCS_YCCK);
        if adobe_cmyk {
            let mut started = d.to_colorspace(mozjpeg::ColorSpace::JCS_CMYK)?;
            let (width, height) = (started.width(), started.height());
            let px: Vec<[u8; 4]> = started.read_scanlines()?;
            started.finish()?;
            // PIL reads Adobe CMYK as "CMYK;I" (inverting), then converts: nk = 255 − K, out = nk − nk·C/255.
            let data = px
                .iter()
                .flat_map(|p| {
                    let (c, m, y, k) = (255 - p[0] as u32, 255 - p[1] as u32, 255 - p[2] as u32, 255 - p[3] as u32);
                    let nk = 255 - k;
                    [(nk - muldiv255(c, nk)) as u8, (nk - muldiv255(m, nk)) as u8, (nk - muldiv255(y, nk)) as u8]
                })
                .collect();
            return Ok(RgbImage { width, height, data });
        }
        let mut started = d.rgb()?;
        let (width, height) = (started.width(), started.height());
        let data = started.read_scanlines::<u8>()?;
        started.finish()?;
        Ok(RgbImage { width, height, data })
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(Ok(img)) if img.data.len() == img.width * img.height * 3 => Ok(img),
        Ok(Ok(img)) => Err(format!("libjpeg: {} bytes for {}x{}", img.data.len(), img.width, img.height)),
        Ok(Err(e)) => Err(format!("libjpeg: {e}")),
        Err(p) => Err(format!(
            "libjpeg: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    }
}

fn decode_png(bytes: &[u8]) -> Result<RgbImage, String> {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info().map_err(|e| format!("png: {e}"))?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).map_err(|e| format!("png: {e}"))?;
    let (width, height) = (frame.width as usize, frame.height as usize);
    let px = &buf[..frame.buffer_size()];
    Ok(match frame.color_type {
        png::ColorType::Rgb => RgbImage { width, height, data: px.to_vec() },
        png::ColorType::Rgba => from_rgba(width, height, px),
        png::ColorType::Grayscale => RgbImage { width, height, data: px.iter().flat_map(|&l| [l, l, l]).collect() },
        png::ColorType::GrayscaleAlpha => {
            let rgba: Vec<u8> = px.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0], p[1]]).collect();
            from_rgba(width, height, &rgba)
        }
        png::ColorType::Indexed => return Err("png: palette not expanded".into()),
    })
}

fn decode_webp(bytes: &[u8]) -> Result<RgbImage, String> {
    let mut d = image_webp::WebPDecoder::new(std::io::Cursor::new(bytes)).map_err(|e| format!("webp: {e}"))?;
    let (w, h) = d.dimensions();
    let (width, height) = (w as usize, h as usize);
    let alpha = d.has_alpha();
    let mut buf = vec![0u8; width * height * if alpha { 4 } else { 3 }];
    d.read_image(&mut buf).map_err(|e| format!("webp: {e}"))?;
    Ok(if alpha { from_rgba(width, height, &buf) } else { RgbImage { width, height, data: buf } })
}

/// Decodes JPEG, PNG or WebP bytes (by content, not extension) to RGB at full size. JPEGs go through
/// libjpeg-turbo's decoder (as PIL does) and, if it fails, zune-jpeg. Refuses headers declaring more than
/// [`MAX_PIXELS`]. The error is a reason for a person.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, String> {
    decode_rgb_at_least(bytes, 0)
}

/// The DCT scale (n/8) for a JPEG whose short side is at least twice `min_short_side`: the smallest n keeping
/// the short side at or above `min_short_side`. 8 (full size) otherwise, or when `min_short_side` is 0.
fn scale_for(info: &crate::ImageInfo, min_short_side: usize) -> u8 {
    let short = info.width.min(info.height) as usize;
    if min_short_side == 0 || short < 2 * min_short_side {
        return 8;
    }
    (1..=8u8).find(|&n| (short * n as usize).div_ceil(8) >= min_short_side).unwrap_or(8)
}

/// Like [`decode_rgb`], but a JPEG at least twice `min_short_side` on its short side is decoded DCT-downscaled
/// (libjpeg scaling factors n/8) to the smallest size whose short side is still ≥ `min_short_side`: much
/// faster for large photos, and what the subsequent bicubic resize needs. Not bit-equal to PIL's full-size
/// decode; pass 0 (or use [`decode_rgb`]) for exact parity.
pub fn decode_rgb_at_least(bytes: &[u8], min_short_side: usize) -> Result<RgbImage, String> {
    let info = sniff_image(bytes).ok_or("not a JPEG, PNG or WebP image (unrecognised header)")?;
    let pixels = info.width as u64 * info.height as u64;
    if pixels > MAX_PIXELS || info.width == 0 || info.height == 0 {
        return Err(format!("header declares {}x{} pixels (limit {MAX_PIXELS})", info.width, info.height));
    }
    let scale = if info.format == ImageFormat::Jpeg { scale_for(&info, min_short_side) } else { 8 };
    // What decoding allocates: the decoder's buffer at the (DCT-scaled) size, and the RGB8 copy.
    let scaled = |side: u32| (side as u64 * scale as u64).div_ceil(8);
    let (w, h) = (scaled(info.width), scaled(info.height));
    let full = ImageInfo { width: w as u32, height: h as u32, ..info };
    let need = full.decoded_bytes() + w * h * 3;
    if need > MAX_DECODED_BYTES {
        return Err(format!(
            "header declares {}x{} pixels of {} components at {} bits: decoding needs {need} bytes (limit \
             {MAX_DECODED_BYTES})",
            info.width, info.height, info.components, info.bit_depth
        ));
    }
    let _held = DecodeBudget::global().reserve(need);
    match info.format {
        ImageFormat::Jpeg => {
            decode_jpeg_libjpeg(bytes, scale).or_else(|e1| decode_jpeg_zune(bytes).map_err(|e2| format!("{e1}; {e2}")))
        }
        ImageFormat::Png => decode_png(bytes),
        ImageFormat::Webp => decode_webp(bytes),
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    // PIL's bicubic kernel, a = −0.5.
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// PIL's fixed-point resampling coefficients for one axis: (first input index, integer weights) per output.
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut k: Vec<f64> = (xmin..xmax).map(|x| bicubic((x as f64 - center + 0.5) * ss)).collect();
            let ww: f64 = k.iter().sum();
            if ww != 0.0 {
                k.iter_mut().for_each(|w| *w /= ww);
            }
            let kk = k
                .iter()
                .map(|&w| {
                    let v = w * (1u32 << PRECISION_BITS) as f64;
                    (if w < 0.0 { v - 0.5 } else { v + 0.5 }) as i32
                })
                .collect();
            (xmin, kk)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes with PIL's `Image.resize(size, BICUBIC)` arithmetic (antialiased, fixed point, horizontal pass then
/// vertical, 8-bit in between), so results equal PIL's bit for bit.
pub fn resize_bicubic(img: &RgbImage, width: usize, height: usize) -> RgbImage {
    let mut cur = img.clone();
    if width != cur.width {
        let coef = coefficients(cur.width, width);
        let mut out = vec![0u8; width * cur.height * 3];
        for y in 0..cur.height {
            let row = &cur.data[y * cur.width * 3..(y + 1) * cur.width * 3];
            for (x, (xmin, k)) in coef.iter().enumerate() {
                for c in 0..3 {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (j, &w) in k.iter().enumerate() {
                        ss += row[(xmin + j) * 3 + c] as i64 * w as i64;
                    }
                    out[(y * width + x) * 3 + c] = clip8(ss);
                }
            }
        }
        cur = RgbImage { width, height: cur.height, data: out };
    }
    if height != cur.height {
        let coef = coefficients(cur.height, height);
        let w = cur.width;
        let mut out = vec![0u8; w * height * 3];
        for (y, (ymin, k)) in coef.iter().enumerate() {
            for x in 0..w * 3 {
                let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                for (j, &wt) in k.iter().enumerate() {
                    ss += cur.data[(ymin + j) * w * 3 + x] as i64 * wt as i64;
                }
                out[y * w * 3 + x] = clip8(ss);
            }
        }
        cur = RgbImage { width: w, height, data: out };
    }
    cur
}

/// The CLIP preprocessing for one image: decoded RGB → shortest side to `size` (PIL bicubic; the long side
/// `⌊size · long / short⌋`) → centre crop `crop × crop` (offsets `⌊(dim − crop) / 2⌋`). Returns `crop²·3` bytes.
pub fn resize_and_crop(img: &RgbImage, size: usize, crop: usize) -> Vec<u8> {
    let (w, h) = (img.width, img.height);
    let (nw, nh) = if w <= h {
        (size, (size as f64 * h as f64 / w as f64) as usize)
    } else {
        ((size as f64 * w as f64 / h as f64) as usize, size)
    };
    let r = resize_bicubic(img, nw, nh);
    let mut out = vec![255u8; crop * crop * 3];
    // transformers pads with zeros when the crop is larger than the image; keep its offsets.
    let top = (nh as i64 - crop as i64).div_euclid(2);
    let left = (nw as i64 - crop as i64).div_euclid(2);
    for y in 0..crop {
        for x in 0..crop {
            let (sy, sx) = (y as i64 + top, x as i64 + left);
            let px = if sy >= 0 && sx >= 0 && (sy as usize) < nh && (sx as usize) < nw {
                let i = (sy as usize * nw + sx as usize) * 3;
                [r.data[i], r.data[i + 1], r.data[i + 2]]
            } else {
                [0, 0, 0]
            };
            out[(y * crop + x) * 3..(y * crop + x) * 3 + 3].copy_from_slice(&px);
        }
    }
    out
}

/// torchvision's `RandomResizedCrop(size, scale, ratio)` with bicubic resizing, as open_clip's training
/// transform applies it: a crop of a random area fraction in `scale` and a log-uniform aspect ratio in `ratio`
/// at a random place (10 tries; then the centre crop with the aspect ratio clamped into `ratio`), resized to
/// `size × size` (PIL's bicubic). Returns `size²·3` bytes; the draws come from `rng`.
pub fn random_resized_crop(
    img: &RgbImage,
    size: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut crate::rng::SplitMix64,
) -> Vec<u8> {
    let crop_box = random_crop_box(img.width, img.height, scale, ratio, rng);
    crop_and_resize(img, crop_box, size)
}

/// The crop (top, left, height, width) of [`random_resized_crop`] cut from `img` and resized to `size × size`
/// (the draw and the work split, so that crops drawn in order can be cut on several threads).
pub fn crop_and_resize(img: &RgbImage, crop_box: (usize, usize, usize, usize), size: usize) -> Vec<u8> {
    let (top, left, h, w) = crop_box;
    let mut data = Vec::with_capacity(w * h * 3);
    for y in top..top + h {
        data.extend_from_slice(&img.data[(y * img.width + left) * 3..(y * img.width + left + w) * 3]);
    }
    resize_bicubic(&RgbImage { width: w, height: h, data }, size, size).data
}

/// `RandomResizedCrop.get_params`: the crop (top, left, height, width) of a `width × height` image, always
/// inside it and at least 1 × 1.
pub fn random_crop_box(
    width: usize,
    height: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut crate::rng::SplitMix64,
) -> (usize, usize, usize, usize) {
    let (fw, fh) = (width as f64, height as f64);
    let area = fw * fh;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * (scale.0 + (scale.1 - scale.0) * rng.unit());
        let aspect = (lr0 + (lr1 - lr0) * rng.unit()).exp();
        let w = (target * aspect).sqrt().round() as usize;
        let h = (target / aspect).sqrt().round() as usize;
        if w > 0 && w <= width && h > 0 && h <= height {
            let top = rng.below((height - h + 1) as u64) as usize;
            let left = rng.below((width - w + 1) as u64) as usize;
            return (top, left, h, w);
        }
    }
    let in_ratio = fw / fh;
    let (w, h) = if in_ratio < ratio.0 {
        (width, ((fw / ratio.0).round() as usize).clamp(1, height))
    } else if in_ratio > ratio.1 {
        (((fh * ratio.1).round() as usize).clamp(1, width), height)
    } else {
        (width, height)
    };
    ((height - h) / 2, (width - w) / 2, h, w)
}

/// Resized images larger than this many pixels (a 1×10⁵ strip resized to a 224 short side, say) are refused
/// rather than allocated.
pub const MAX_RESIZED_PIXELS: u64 = 1 << 26;

fn checked(img: RgbImage, size: usize, crop: usize) -> Result<Vec<u8>, String> {
    let (short, long) = (img.width.min(img.height) as u64, img.width.max(img.height) as u64);
    let resized = size as u64 * (size as u64 * long / short.max(1));
    if resized > MAX_RESIZED_PIXELS {
        return Err(format!(
            "aspect ratio {}x{} too extreme: the resized image would have {resized} pixels",
            img.width, img.height
        ));
    }
    Ok(resize_and_crop(&img, size, crop))
}

/// Decodes and preprocesses one image to `crop²·3` RGB bytes (HWC), exactly as `CLIPImageProcessor`.
pub fn preprocess(bytes: &[u8], size: usize, crop: usize) -> Result<Vec<u8>, String> {
    checked(decode_rgb(bytes)?, size, crop)
}

/// [`preprocess`] with DCT-downscaled JPEG decoding for large JPEGs (see [`decode_rgb_at_least`]).
pub fn preprocess_fast(bytes: &[u8], size: usize, crop: usize) -> Result<Vec<u8>, String> {
    checked(decode_rgb_at_least(bytes, size)?, size, crop)
}

/// [`preprocess`] (or, `fast`, [`preprocess_fast`]) that also returns the SHA-256 (hex) of the decoded image as
/// decoded for embedding: its width and height (u64, little-endian), then its RGB8 pixels. Two files with the
/// same pixels (a PNG recompressed, a JPEG with its metadata stripped) get the same digest.
pub fn preprocess_digested(bytes: &[u8], size: usize, crop: usize, fast: bool) -> Result<(Vec<u8>, String), String> {
    use sha2::{Digest, Sha256};
    let img = if fast { decode_rgb_at_least(bytes, size)? } else { decode_rgb(bytes)? };
    let mut h = Sha256::new();
    h.update((img.width as u64).to_le_bytes());
    h.update((img.height as u64).to_le_bytes());
    h.update(&img.data);
    let digest = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((checked(img, size, crop)?, digest))
}

/// Normalised `[B, 3, crop, crop]` f32 pixels from preprocessed HWC images.
pub fn to_pixels(images: &[Vec<u8>], crop: usize) -> tch::Tensor {
    let n = images.len();
    let mut flat = vec![0f32; n * 3 * crop * crop];
    for (b, img) in images.iter().enumerate() {
        for c in 0..3 {
            let plane = &mut flat[(b * 3 + c) * crop * crop..(b * 3 + c + 1) * crop * crop];
            for (i, p) in plane.iter_mut().enumerate() {
                *p = (img[i * 3 + c] as f32 / 255.0 - OPENAI_MEAN[c]) / OPENAI_STD[c];
            }
        }
    }
    tch::Tensor::from_slice(&flat).view([n as i64, 3, crop as i64, crop as i64])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// A 64 × 48 image whose pixels encode their position.
    fn ramp() -> RgbImage {
        let (width, height) = (64, 48);
        let data = (0..height).flat_map(|y| (0..width).flat_map(move |x| [x as u8 * 4, y as u8 * 5, 128])).collect();
        RgbImage { width, height, data }
    }

    #[test]
    fn crop_boxes_stay_inside_with_the_area_and_ratio_asked() {
        let mut rng = SplitMix64::new(7);
        for _ in 0..2000 {
            let (top, left, h, w) = random_crop_box(64, 48, (0.9, 1.0), (3.0 / 4.0, 4.0 / 3.0), &mut rng);
            assert!(top + h <= 48 && left + w <= 64 && h > 0 && w > 0, "{top} {left} {h} {w}");
            let frac = (h * w) as f64 / (64.0 * 48.0);
            // rounding each side to whole pixels moves the area by at most about a side's length
            assert!((0.9 - 0.04..=1.0).contains(&frac), "area fraction {frac}");
            let r = w as f64 / h as f64;
            assert!((0.75 - 0.05..=4.0 / 3.0 + 0.05).contains(&r), "aspect {r}");
        }
        // a strip no crop of the ratios fits: the centre crop with the aspect clamped (torchvision's fallback)
        let mut rng = SplitMix64::new(1);
        assert_eq!(random_crop_box(1000, 10, (0.9, 1.0), (3.0 / 4.0, 4.0 / 3.0), &mut rng), (0, 493, 10, 13));
        assert_eq!(random_crop_box(10, 1000, (0.9, 1.0), (3.0 / 4.0, 4.0 / 3.0), &mut rng), (493, 0, 13, 10));
    }

    #[test]
    fn the_whole_image_at_scale_one_and_its_own_ratio_is_a_plain_resize() {
        let img = ramp();
        let r = 64.0 / 48.0;
        let got = random_resized_crop(&img, 32, (1.0, 1.0), (r, r), &mut SplitMix64::new(3));
        assert_eq!(got, resize_bicubic(&img, 32, 32).data);
    }

    #[test]
    fn crops_are_seeded() {
        let img = ramp();
        let crop = |seed| random_resized_crop(&img, 24, (0.5, 1.0), (0.75, 4.0 / 3.0), &mut SplitMix64::new(seed));
        assert_eq!(crop(5), crop(5));
        assert_ne!(crop(5), crop(6));
        assert_eq!(crop(5).len(), 24 * 24 * 3);
    }
}
