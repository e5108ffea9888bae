//! What an image's header says, read without decoding pixels: format, dimensions, colour components, and
//! whether a JPEG is progressive. Used for stats, DataComp's size filters, and refusing decompression bombs
//! before decoding.

use serde::{Deserialize, Serialize};

use crate::ImageFormat;

/// Facts from an image header.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The format the bytes actually have (which may differ from the member's extension).
    pub format: ImageFormat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Colour components: 1 (grey), 2 (grey + alpha), 3 (RGB / YCbCr), 4 (RGBA or CMYK / YCCK).
    pub components: u8,
    /// A progressive (multi-scan) JPEG.
    pub progressive: bool,
    /// A JPEG whose 4 components are CMYK or YCCK (Adobe).
    pub cmyk: bool,
    /// Bits per sample (8 for most images; 16 for 16-bit PNGs, 12 for 12-bit JPEGs).
    #[serde(default = "eight")]
    pub bit_depth: u8,
}

fn eight() -> u8 {
    8
}

impl ImageInfo {
    /// Bytes the decoded image takes before conversion to RGB8: width × height × components × bytes per
    /// sample. What a decoder allocates, which the pixel count alone understates (a 13000² RGBA 16-bit PNG is
    /// 1.35 GB).
    ///
    /// ```
    /// let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    /// png.extend_from_slice(&[0, 0, 0, 10, 0, 0, 0, 10, 16, 6, 0, 0, 0]); // 10x10 RGBA, 16 bits
    /// assert_eq!(flyt::sniff_image(&png).unwrap().decoded_bytes(), 10 * 10 * 4 * 2);
    /// ```
    pub fn decoded_bytes(&self) -> u64 {
        let per_sample = if self.bit_depth > 8 { 2 } else { 1 };
        self.width as u64 * self.height as u64 * self.components.max(1) as u64 * per_sample
    }
}

/// Reads the header of a JPEG, PNG or WebP image. `None` when the bytes are none of these or the header is
/// cut short. Never panics, whatever the bytes.
///
/// ```
/// // The smallest PNG header: signature, then an IHDR chunk for a 3x2 RGB image.
/// let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
/// png.extend_from_slice(&[0, 0, 0, 3, 0, 0, 0, 2, 8, 2, 0, 0, 0]);
/// let info = flyt::sniff_image(&png).unwrap();
/// assert_eq!((info.width, info.height, info.components), (3, 2, 3));
/// assert!(flyt::sniff_image(b"hello").is_none());
/// ```
pub fn sniff_image(bytes: &[u8]) -> Option<ImageInfo> {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        sniff_jpeg(bytes)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        sniff_png(bytes)
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        sniff_webp(bytes)
    } else {
        None
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn le24(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes([*b.get(at)?, *b.get(at + 1)?, *b.get(at + 2)?, 0]))
}

fn sniff_jpeg(b: &[u8]) -> Option<ImageInfo> {
    let mut pos = 2usize;
    let mut adobe_transform: Option<u8> = None;
    loop {
        // Skip fill bytes before a marker.
        while *b.get(pos)? == 0xFF && *b.get(pos + 1)? == 0xFF {
            pos += 1;
        }
        if *b.get(pos)? != 0xFF {
            return None;
        }
        let marker = *b.get(pos + 1)?;
        pos += 2;
        match marker {
            // Markers without a length.
            0x01 | 0xD0..=0xD7 => continue,
            0xD9 | 0xDA => return None, // end of image or start of scan before any frame header
            _ => {}
        }
        let len = be16(b, pos)? as usize;
        if len < 2 {
            return None;
        }
        match marker {
            0xEE if b.get(pos + 2..pos + 7)? == b"Adobe" => {
                adobe_transform = b.get(pos + 13).copied();
            }
            0xC0..=0xCF if marker != 0xC4 && marker != 0xC8 && marker != 0xCC => {
                let height = be16(b, pos + 3)? as u32;
                let width = be16(b, pos + 5)? as u32;
                let bit_depth = *b.get(pos + 2)?;
                let components = *b.get(pos + 7)?;
                let progressive = matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE);
                // Four components are CMYK (Adobe transform 0 or no Adobe marker) or YCCK (transform 2);
                // both are CMYK-family for a decoder. The Adobe marker may come after the frame header in
                // odd files; we only see markers before it, which is where encoders put it.
                let cmyk = components == 4 && adobe_transform != Some(1);
                return Some(ImageInfo {
                    format: ImageFormat::Jpeg,
                    width,
                    height,
                    components,
                    progressive,
                    cmyk,
                    bit_depth,
                });
            }
            _ => {}
        }
        pos += len;
    }
}

fn sniff_png(b: &[u8]) -> Option<ImageInfo> {
    if b.get(12..16)? != b"IHDR" {
        return None;
    }
    let width = be32(b, 16)?;
    let height = be32(b, 20)?;
    let bit_depth = *b.get(24)?;
    let color_type = *b.get(25)?;
    let components = match color_type {
        0 => 1,
        2 => 3,
        3 => 3, // palette, expands to RGB
        4 => 2,
        6 => 4,
        _ => return None,
    };
    Some(ImageInfo { format: ImageFormat::Png, width, height, components, progressive: false, cmyk: false, bit_depth })
}

fn sniff_webp(b: &[u8]) -> Option<ImageInfo> {
    let chunk = b.get(12..16)?;
    let (width, height, components) = match chunk {
        b"VP8 " => {
            // Frame tag (3 bytes), start code 9d 01 2a, then 14-bit width and height.
            if b.get(23..26)? != [0x9d, 0x01, 0x2a] {
                return None;
            }
            ((le16(b, 26)? & 0x3fff) as u32, (le16(b, 28)? & 0x3fff) as u32, 3)
        }
        b"VP8L" => {
            if *b.get(20)? != 0x2f {
                return None;
            }
            let bits = u32::from_le_bytes(b.get(21..25)?.try_into().ok()?);
            ((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1, 4)
        }
        b"VP8X" => {
            let alpha = *b.get(20)? & 0x10 != 0;
            (le24(b, 24)? + 1, le24(b, 27)? + 1, if alpha { 4 } else { 3 })
        }
        _ => return None,
    };
    Some(ImageInfo {
        format: ImageFormat::Webp,
        width,
        height,
        components,
        progressive: false,
        cmyk: false,
        bit_depth: 8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_never_panics() {
        let mut state = 1u64;
        for len in 0..300 {
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (state >> 56) as u8
                })
                .collect();
            let _ = sniff_image(&bytes);
            for prefix in [&[0xFFu8, 0xD8][..], b"\x89PNG\r\n\x1a\n", b"RIFF\0\0\0\0WEBPVP8X"] {
                bytes.splice(0..0, prefix.iter().copied());
                let _ = sniff_image(&bytes);
            }
        }
    }
}
