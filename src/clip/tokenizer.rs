//! CLIP's byte-level BPE tokenizer, equal to Hugging Face's `CLIPTokenizer`: NFC, whitespace runs to one space,
//! lower case; split by CLIP's pattern; bytes mapped to unicode symbols; BPE with `</w>` ending each word;
//! `<|startoftext|>` … `<|endoftext|>`, truncated to the context keeping the end token.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;

use unicode_normalization::UnicodeNormalization;

use crate::{Error, Result};

const PATTERN: &str = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// GPT-2's reversible byte → unicode-symbol table.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (b'!' as u32..=b'~' as u32).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).expect("valid")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("valid")
        };
    }
    table
}

/// The CLIP tokenizer.
///
/// ```no_run
/// let tok = flyt::clip::ClipTokenizer::from_open_clip_vocab("bpe_simple_vocab_16e6.txt.gz").unwrap();
/// let ids = tok.encode("A photo of a cat.");
/// assert_eq!(ids.first(), Some(&tok.sot()));
/// ```
pub struct ClipTokenizer {
    encoder: HashMap<String, u32>,
    ranks: HashMap<(String, String), u32>,
    byte_map: [char; 256],
    pattern: regex::Regex,
    whitespace: regex::Regex,
    sot: u32,
    eot: u32,
    context: usize,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl ClipTokenizer {
    /// From a vocabulary (token → id) and merges in rank order.
    pub fn new(encoder: HashMap<String, u32>, merges: Vec<(String, String)>) -> Result<Self> {
        let sot =
            *encoder.get("<|startoftext|>").ok_or_else(|| Error::Config("vocabulary has no <|startoftext|>".into()))?;
        let eot =
            *encoder.get("<|endoftext|>").ok_or_else(|| Error::Config("vocabulary has no <|endoftext|>".into()))?;
        let ranks = merges.into_iter().enumerate().map(|(i, m)| (m, i as u32)).collect();
        Ok(ClipTokenizer {
            encoder,
            ranks,
            byte_map: bytes_to_unicode(),
            pattern: regex::Regex::new(PATTERN).map_err(|e| Error::Config(e.to_string()))?,
            whitespace: regex::Regex::new(r"\s+").map_err(|e| Error::Config(e.to_string()))?,
            sot,
            eot,
            context: 77,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// From open_clip's `bpe_simple_vocab_16e6.txt.gz` (the original CLIP vocabulary: 48,894 merges, 49,408
    /// tokens).
    pub fn from_open_clip_vocab(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(file).read_to_string(&mut text).map_err(|e| Error::io(path, e))?;
        let lines: Vec<&str> = text.split('\n').collect();
        let n_merges = 49152 - 256 - 2;
        if lines.len() < n_merges + 1 {
            return Err(Error::format(
                path,
                "merges",
                format!("{} lines, expected at least {}", lines.len(), n_merges + 1),
            ));
        }
        let mut merges = Vec::with_capacity(n_merges);
        for (i, l) in lines[1..=n_merges].iter().enumerate() {
            let (a, b) =
                l.split_once(' ').ok_or_else(|| Error::format(path, format!("line {}", i + 2), "not a merge pair"))?;
            merges.push((a.to_string(), b.to_string()));
        }
        // The vocabulary starts with the byte symbols in GPT-2's table order: the printable bytes first (which
        // map to themselves, so sorting by symbol gives that order), then the others.
        let mut symbols: Vec<char> = bytes_to_unicode().to_vec();
        symbols.sort_unstable();
        let mut vocab: Vec<String> = symbols.iter().map(|c| c.to_string()).collect();
        vocab.extend(symbols.iter().map(|c| format!("{c}</w>")));
        vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        vocab.push("<|startoftext|>".into());
        vocab.push("<|endoftext|>".into());
        let encoder = vocab.into_iter().enumerate().map(|(i, t)| (t, i as u32)).collect();
        Self::new(encoder, merges)
    }

    /// Writes open_clip's vocabulary (`bpe_simple_vocab_16e6.txt.gz`) as a Hugging Face `vocab.json` +
    /// `merges.txt` into `dir`, so a CLIP folder made here (for instance a randomly initialised one for a
    /// benchmark) loads with [`ClipTokenizer::from_hf_dir`].
    pub fn write_hf_vocab(bpe_gz: impl AsRef<Path>, dir: impl AsRef<Path>) -> Result<()> {
        let (bpe_gz, dir) = (bpe_gz.as_ref(), dir.as_ref());
        let tok = Self::from_open_clip_vocab(bpe_gz)?;
        let mut by_id: Vec<(&String, &u32)> = tok.encoder.iter().collect();
        by_id.sort_unstable_by_key(|(_, i)| **i);
        let vocab: serde_json::Map<String, serde_json::Value> =
            by_id.iter().map(|(t, i)| ((*t).clone(), serde_json::Value::from(**i))).collect();
        let mut merges: Vec<(&(String, String), &u32)> = tok.ranks.iter().collect();
        merges.sort_unstable_by_key(|(_, r)| **r);
        let mut text = String::from("#version: 0.2\n");
        for ((a, b), _) in merges {
            text.push_str(&format!("{a} {b}\n"));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let v = dir.join("vocab.json");
        std::fs::write(&v, serde_json::to_vec(&vocab).map_err(|e| Error::Config(e.to_string()))?)
            .map_err(|e| Error::io(&v, e))?;
        let m = dir.join("merges.txt");
        std::fs::write(&m, text).map_err(|e| Error::io(&m, e))
    }

    /// From a Hugging Face checkpoint folder: `vocab.json` + `merges.txt`, or `tokenizer.json`.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let (vocab_path, merges_path, tok_path) =
            (dir.join("vocab.json"), dir.join("merges.txt"), dir.join("tokenizer.json"));
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| Error::io(p, e));
        let parse_merge = |p: &Path, i: usize, l: &str| -> Result<(String, String)> {
            l.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| Error::format(p, format!("merge {i}"), format!("{l:?} is not a pair")))
        };
        if vocab_path.exists() && merges_path.exists() {
            let encoder: HashMap<String, u32> = serde_json::from_str(&read(&vocab_path)?)
                .map_err(|e| Error::format(&vocab_path, "vocab", e.to_string()))?;
            let text = read(&merges_path)?;
            let merges = text
                .lines()
                .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
                .enumerate()
                .map(|(i, l)| parse_merge(&merges_path, i, l))
                .collect::<Result<Vec<_>>>()?;
            return Self::new(encoder, merges);
        }
        let v: serde_json::Value = serde_json::from_str(&read(&tok_path)?)
            .map_err(|e| Error::format(&tok_path, "tokenizer", e.to_string()))?;
        let model = &v["model"];
        let encoder: HashMap<String, u32> = serde_json::from_value(model["vocab"].clone())
            .map_err(|e| Error::format(&tok_path, "model.vocab", e.to_string()))?;
        let merges = model["merges"]
            .as_array()
            .ok_or_else(|| Error::format(&tok_path, "model.merges", "missing"))?
            .iter()
            .enumerate()
            .map(|(i, m)| match m {
                serde_json::Value::String(s) => parse_merge(&tok_path, i, s),
                serde_json::Value::Array(a) if a.len() == 2 => {
                    Ok((a[0].as_str().unwrap_or_default().to_string(), a[1].as_str().unwrap_or_default().to_string()))
                }
                _ => Err(Error::format(&tok_path, format!("merge {i}"), "not a pair")),
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(encoder, merges)
    }

    /// The start-of-text id.
    pub fn sot(&self) -> u32 {
        self.sot
    }
    /// The end-of-text id (also used for padding).
    pub fn eot(&self) -> u32 {
        self.eot
    }
    /// The context length (77 unless set by [`ClipTokenizer::with_context`]).
    pub fn context(&self) -> usize {
        self.context
    }

    /// The same tokenizer with another context length (at least 3, at most 77): for models whose text tower has
    /// fewer than 77 positions (`max_position_embeddings`). Longer texts are cut, as at 77.
    pub fn with_context(mut self, context: usize) -> Self {
        self.context = context.clamp(3, 77);
        self
    }

    /// The tokenizer of a Hugging Face CLIP folder, with the context length of its text tower.
    pub fn for_model(dir: impl AsRef<Path>, config: &crate::clip::ClipConfig) -> Result<Self> {
        Ok(Self::from_hf_dir(dir)?.with_context(config.text_config.max_position_embeddings.max(0) as usize))
    }

    fn bpe(&self, word: &str) -> Vec<u32> {
        if let Some(ids) = self.cache.lock().ok().and_then(|c| c.get(word).cloned()) {
            return ids;
        }
        let mut parts: Vec<String> = word.chars().map(|c| c.to_string()).collect();
        if let Some(last) = parts.last_mut() {
            last.push_str("</w>");
        }
        loop {
            let best = parts
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| self.ranks.get(&(w[0].clone(), w[1].clone())).map(|&r| (r, i)))
                .min();
            let Some((_, _)) = best else { break };
            let (r, _) = best.expect("checked");
            // Merge every occurrence of the best pair, left to right.
            let mut merged = Vec::with_capacity(parts.len());
            let mut i = 0;
            while i < parts.len() {
                if i + 1 < parts.len() && self.ranks.get(&(parts[i].clone(), parts[i + 1].clone())) == Some(&r) {
                    merged.push(format!("{}{}", parts[i], parts[i + 1]));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut parts[i]));
                    i += 1;
                }
            }
            parts = merged;
            if parts.len() == 1 {
                break;
            }
        }
        let ids: Vec<u32> = parts.iter().map(|p| self.encoder.get(p).copied().unwrap_or(self.eot)).collect();
        if let Ok(mut c) = self.cache.lock()
            && c.len() < 1 << 20
        {
            c.insert(word.to_string(), ids.clone());
        }
        ids
    }

    /// The BPE ids of a text, without start/end tokens or truncation.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        let nfc: String = text.nfc().collect();
        let spaced = self.whitespace.replace_all(&nfc, " ");
        let lower: String = spaced.chars().flat_map(char::to_lowercase).collect();
        let mut ids = Vec::new();
        for m in self.pattern.find_iter(&lower) {
            let piece = m.as_str();
            if piece == "<|startoftext|>" || piece == "<|endoftext|>" {
                ids.push(self.encoder[piece]);
                continue;
            }
            let mapped: String = piece.bytes().map(|b| self.byte_map[b as usize]).collect();
            ids.extend(self.bpe(&mapped));
        }
        ids
    }

    /// `<|startoftext|>` + the first `context − 2` ids + `<|endoftext|>`, unpadded.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = vec![self.sot];
        let body = self.tokenize(text);
        ids.extend(body.iter().take(self.context - 2));
        ids.push(self.eot);
        ids
    }

    /// A batch as a `[B, context]` int64 tensor, padded with the end token.
    pub fn encode_batch(&self, texts: &[&str]) -> tch::Tensor {
        let mut flat = Vec::with_capacity(texts.len() * self.context);
        for t in texts {
            let ids = self.encode(t);
            flat.extend(ids.iter().map(|&i| i as i64));
            flat.extend(std::iter::repeat_n(self.eot as i64, self.context - ids.len()));
        }
        tch::Tensor::from_slice(&flat).view([texts.len() as i64, self.context as i64])
    }
}
