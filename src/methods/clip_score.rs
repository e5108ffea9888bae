//! CLIP score: the cosine similarity of an example's image and caption embeddings.

use super::{dot, rows_of};
use crate::Result;

/// The CLIP score of each row: cos(image_i, text_i), as DataComp's `clip_{b32,l14}_similarity_score` columns
/// (which use OpenAI's ViT-B/32 and ViT-L/14; any CLIP checkpoint's embeddings work). Rows need not be
/// normalised; a zero row scores 0.
///
/// ```
/// let image = [1.0, 0.0, 0.0, 2.0];
/// let text = [1.0, 1.0, 0.0, -1.0];
/// let s = flyt::methods::clip_score(&image, &text, 2).unwrap();
/// assert!((s[0] - 0.5f32.sqrt()).abs() < 1e-6 && (s[1] + 1.0).abs() < 1e-6);
/// ```
pub fn clip_score(image: &[f32], text: &[f32], dim: usize) -> Result<Vec<f32>> {
    let n = rows_of("image embeddings", image, dim)?;
    let m = rows_of("text embeddings", text, dim)?;
    if n != m {
        return Err(crate::Error::Config(format!("{n} image embeddings but {m} text embeddings")));
    }
    Ok(image
        .chunks_exact(dim)
        .zip(text.chunks_exact(dim))
        .map(|(u, t)| {
            let d = (dot(u, u) * dot(t, t)).sqrt();
            if d > 0.0 { (dot(u, t) / d).clamp(-1.0, 1.0) } else { 0.0 }
        })
        .collect())
}
