//! DataComp's basic-filter features: caption length, image size and aspect ratio, English detection.

#[cfg(feature = "language-detection")]
use std::sync::OnceLock;

#[cfg(feature = "language-detection")]
fn detector() -> &'static lingua::LanguageDetector {
    static DETECTOR: OnceLock<lingua::LanguageDetector> = OnceLock::new();
    DETECTOR.get_or_init(|| lingua::LanguageDetectorBuilder::from_all_languages().build())
}

/// Whether a caption is English, by the `lingua` language identifier (n-gram models of 22 common web
/// languages; DataComp uses fasttext's `lid.176`, which no registry ships here). Newlines count as spaces;
/// an empty caption is not English. lingua was chosen over the faster `whatlang` because whatlang calls short
/// French captions English (checked: "une photo d'une robe rouge sur une table blanche"). Built without the
/// `language-detection` feature, a coarse heuristic decides instead: mostly ASCII letters and at least one
/// common English word, or several words all ASCII.
///
/// ```
/// assert!(flyt::methods::is_english("a photo of a red sandal on a white background"));
/// assert!(!flyt::methods::is_english("une photo d'une robe rouge sur une table blanche"));
/// assert!(!flyt::methods::is_english("白い背景の赤いサンダル"));
/// ```
pub fn is_english(caption: &str) -> bool {
    english_flags(&[Some(caption)])[0]
}

/// [`is_english`] of many captions, in parallel.
#[cfg(feature = "language-detection")]
pub fn english_flags(captions: &[Option<&str>]) -> Vec<bool> {
    let texts: Vec<String> = captions.iter().map(|c| c.unwrap_or("").replace('\n', " ")).collect();
    detector()
        .detect_languages_in_parallel_of(&texts)
        .into_iter()
        .zip(&texts)
        .map(|(l, t)| !t.trim().is_empty() && l == Some(lingua::Language::English))
        .collect()
}

/// [`is_english`] of many captions (the coarse heuristic: this build has no `language-detection`).
#[cfg(not(feature = "language-detection"))]
pub fn english_flags(captions: &[Option<&str>]) -> Vec<bool> {
    const COMMON: [&str; 24] = [
        "the", "a", "an", "of", "and", "in", "on", "with", "for", "to", "is", "at", "by", "from", "this", "photo",
        "image", "picture", "red", "white", "black", "new", "man", "woman",
    ];
    captions
        .iter()
        .map(|c| {
            let c = c.unwrap_or("");
            let letters = c.chars().filter(|ch| ch.is_alphabetic()).count();
            let ascii = c.chars().filter(|ch| ch.is_ascii_alphabetic()).count();
            let words: Vec<String> = c.split_whitespace().map(|w| w.to_lowercase()).collect();
            let common =
                words.iter().filter(|w| COMMON.contains(&w.trim_matches(|ch: char| !ch.is_alphanumeric()))).count();
            letters > 0 && ascii * 10 >= letters * 9 && common * 5 >= words.len().max(1)
        })
        .collect()
}

/// An image's (width, height), when known.
pub type ImageSize = Option<(u64, u64)>;

/// The features DataComp's basic filter looks at, for one example.
#[derive(Clone, Debug, PartialEq)]
pub struct BasicFeatures {
    /// Caption words: whitespace-separated tokens (Python's `str.split()`).
    pub words: u32,
    /// Caption characters (Unicode scalar values, Python's `len`).
    pub chars: u32,
    /// Whether the caption is English ([`is_english`]).
    pub english: bool,
    /// Original image width and height, when known.
    pub size: Option<(u64, u64)>,
}

impl BasicFeatures {
    /// Features of a caption (missing: empty) and an image size (`original_width`, `original_height`).
    pub fn new(caption: Option<&str>, size: Option<(u64, u64)>) -> Self {
        Self::with_english(caption, size, caption.is_some_and(is_english))
    }

    /// Features of many examples, the language detected in parallel.
    pub fn batch(rows: &[(Option<&str>, ImageSize)]) -> Vec<Self> {
        let caps: Vec<Option<&str>> = rows.iter().map(|r| r.0).collect();
        rows.iter().zip(english_flags(&caps)).map(|(&(c, s), e)| Self::with_english(c, s, e)).collect()
    }

    fn with_english(caption: Option<&str>, size: Option<(u64, u64)>, english: bool) -> Self {
        let caption = caption.unwrap_or("");
        Self { words: caption.split_whitespace().count() as u32, chars: caption.chars().count() as u32, english, size }
    }

    /// The shorter image side (0 when unknown).
    pub fn min_side(&self) -> u64 {
        self.size.map(|(w, h)| w.min(h)).unwrap_or(0)
    }

    /// Longer side over shorter side (infinite when unknown or a side is 0).
    pub fn aspect(&self) -> f64 {
        match self.size {
            Some((w, h)) if w.min(h) > 0 => w.max(h) as f64 / w.min(h) as f64,
            _ => f64::INFINITY,
        }
    }
}

/// DataComp's basic filter: English caption with more than `min_words` words and more than `min_chars`
/// characters, image shorter side ≥ `min_side` and aspect ratio ≤ `max_aspect`. An example whose image size is
/// unknown fails the image part.
#[derive(Clone, Debug, PartialEq)]
pub struct BasicFilter {
    /// Words must be more than this (DataComp: 2).
    pub min_words: u32,
    /// Characters must be more than this (DataComp: 5).
    pub min_chars: u32,
    /// Shorter image side at least this (DataComp: 200).
    pub min_side: u64,
    /// Aspect ratio at most this (DataComp: 3.0).
    pub max_aspect: f64,
    /// Require an English caption (DataComp: yes).
    pub english: bool,
}

impl Default for BasicFilter {
    fn default() -> Self {
        Self { min_words: 2, min_chars: 5, min_side: 200, max_aspect: 3.0, english: true }
    }
}

impl BasicFilter {
    /// The caption part alone, as DataComp's image-based baseline applies it (more than 1 word, more than 5
    /// characters, English).
    pub fn caption_only() -> Self {
        Self { min_words: 1, min_chars: 5, min_side: 0, max_aspect: f64::INFINITY, english: true }
    }

    /// Whether an example passes.
    ///
    /// ```
    /// use flyt::methods::{BasicFeatures, BasicFilter};
    /// let f = BasicFilter::default();
    /// assert!(f.keeps(&BasicFeatures::new(Some("a red sandal on the beach"), Some((640, 480)))));
    /// assert!(!f.keeps(&BasicFeatures::new(Some("a red sandal on the beach"), Some((640, 150))))); // too small
    /// assert!(!f.keeps(&BasicFeatures::new(Some("red sandal"), Some((640, 480))))); // two words
    /// ```
    pub fn keeps(&self, x: &BasicFeatures) -> bool {
        (!self.english || x.english)
            && x.words > self.min_words
            && x.chars > self.min_chars
            && (self.min_side == 0 || x.min_side() >= self.min_side)
            && (self.max_aspect.is_infinite() || x.aspect() <= self.max_aspect)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_counted_by_hand() {
        let x = BasicFeatures::new(Some("  Two\tdogs \n on  grass "), Some((300, 900)));
        assert_eq!((x.words, x.chars), (4, 23));
        assert_eq!(x.min_side(), 300);
        assert_eq!(x.aspect(), 3.0);
        let x = BasicFeatures::new(Some("naïve café"), None);
        assert_eq!((x.words, x.chars), (2, 10));
        assert_eq!(x.min_side(), 0);
        assert!(x.aspect().is_infinite());
        let x = BasicFeatures::new(None, Some((0, 10)));
        assert_eq!((x.words, x.chars, x.english), (0, 0, false));
        assert!(x.aspect().is_infinite());
    }

    #[test]
    fn basic_filter_boundaries_follow_datacomp() {
        let f = BasicFilter::default();
        let cap = "a small brown dog runs across the green park";
        assert!(f.keeps(&BasicFeatures::new(Some(cap), Some((200, 600))))); // side 200 and aspect 3.0 are kept
        assert!(!f.keeps(&BasicFeatures::new(Some(cap), Some((199, 400)))));
        assert!(!f.keeps(&BasicFeatures::new(Some(cap), Some((200, 601)))));
        assert!(!f.keeps(&BasicFeatures::new(Some(cap), None)));
        assert!(!f.keeps(&BasicFeatures::new(Some("a b c"), Some((500, 500))))); // 3 words but 5 chars
        assert!(!f.keeps(&BasicFeatures::new(Some("le petit chien brun court dans le parc vert"), Some((500, 500)))));
        let many =
            BasicFeatures::batch(&[(Some(cap), Some((500, 500))), (Some("ein Hund im Park"), None), (None, None)]);
        assert_eq!(many.iter().map(|x| x.english).collect::<Vec<_>>(), vec![true, false, false]);
        assert_eq!(many[0], BasicFeatures::new(Some(cap), Some((500, 500))));
        // the image-based caption filter: more than one word is enough
        let c = BasicFilter::caption_only();
        assert!(c.keeps(&BasicFeatures::new(Some("golden retriever"), None)) == is_english("golden retriever"));
        assert!(!c.keeps(&BasicFeatures::new(Some("retriever"), None)));
    }
}
