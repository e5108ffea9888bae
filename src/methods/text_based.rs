//! DataComp's text-based filter: captions that name a class of the downstream tasks.

use std::collections::HashMap;

/// Matches captions against downstream class names and their synonyms.
///
/// DataComp's text-based baseline keeps English captions with a word whose first WordNet synset is one of
/// ImageNet-21k's; no WordNet ships here, so this matcher takes the downstream tasks' class names directly, each
/// class with synonyms (one class per line of a `classnames.txt`, synonyms separated by commas, as in
/// ImageNet's `tench, Tinca tinca`). Matching is on lower-cased alphanumeric tokens with simple English plural
/// folding (`dogs` → `dog`, `boxes` → `box`, `puppies` → `puppy`), a multi-word name matching a run of
/// consecutive tokens. The score of a caption is the number of distinct classes it names.
///
/// ```
/// use flyt::methods::ClassNameMatcher;
/// let m = ClassNameMatcher::new(&["tench, Tinca tinca", "golden retriever", "ankle boot"]);
/// assert_eq!(m.count("Two Golden Retrievers and an ankle-boot"), 2);
/// assert_eq!(m.count("a golden sunset"), 0);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ClassNameMatcher {
    /// First token → (whole token sequence, class index).
    by_first: HashMap<String, Vec<(Vec<String>, u32)>>,
    classes: usize,
}

fn fold(token: &str) -> String {
    let t = token.to_lowercase();
    let n = t.chars().count();
    if n > 4 && t.ends_with("ies") {
        format!("{}y", &t[..t.len() - 3])
    } else if n > 3
        && (t.ends_with("ses")
            || t.ends_with("xes")
            || t.ends_with("zes")
            || t.ends_with("ches")
            || t.ends_with("shes"))
    {
        t[..t.len() - 2].to_string()
    } else if n > 3 && t.ends_with('s') && !t.ends_with("ss") && !t.ends_with("us") && !t.ends_with("is") {
        t[..t.len() - 1].to_string()
    } else {
        t
    }
}

fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|t| !t.is_empty()).map(fold).collect()
}

impl ClassNameMatcher {
    /// A matcher over classes given as lines (synonyms separated by commas). Empty names are ignored.
    pub fn new<S: AsRef<str>>(classes: &[S]) -> Self {
        let mut by_first: HashMap<String, Vec<(Vec<String>, u32)>> = HashMap::new();
        for (c, line) in classes.iter().enumerate() {
            for name in line.as_ref().split(',') {
                let toks = tokens(name);
                if let Some(first) = toks.first() {
                    by_first.entry(first.clone()).or_default().push((toks, c as u32));
                }
            }
        }
        Self { by_first, classes: classes.len() }
    }

    /// Reads class names from `classnames.txt`-style text: one class per non-empty line.
    pub fn from_lines(text: &str) -> Self {
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        Self::new(&lines)
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The distinct classes a caption names, in increasing order.
    pub fn matches(&self, caption: &str) -> Vec<u32> {
        let toks = tokens(caption);
        let mut found = Vec::new();
        for i in 0..toks.len() {
            if let Some(cands) = self.by_first.get(&toks[i]) {
                for (seq, c) in cands {
                    if toks.len() - i >= seq.len() && toks[i..i + seq.len()] == seq[..] {
                        found.push(*c);
                    }
                }
            }
        }
        found.sort_unstable();
        found.dedup();
        found
    }

    /// The number of distinct classes a caption names (the `text_based` score).
    pub fn count(&self, caption: &str) -> u32 {
        self.matches(caption).len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plural_folding_and_multiword_names() {
        let m = ClassNameMatcher::from_lines(
            "T-shirt/top\nTrouser\nPullover\nDress\nCoat\nSandal\nShirt\nSneaker\nBag\nAnkle boot\n",
        );
        assert_eq!(m.classes(), 10);
        assert_eq!(m.matches("Men's trousers and a t-shirt top"), vec![0, 1, 6]); // "shirt" is a class too
        assert_eq!(m.matches("two dresses, three BAGS"), vec![3, 8]);
        assert_eq!(m.matches("ankle"), Vec::<u32>::new());
        assert_eq!(m.matches("boot ankle"), Vec::<u32>::new());
        assert_eq!(m.matches("Ankle   Boots!"), vec![9]);
        assert_eq!(m.count("coats coat coat"), 1);
        assert_eq!(m.count(""), 0);
        // "glass" and "bus" are not plurals
        let g = ClassNameMatcher::new(&["glass", "bus", "puppy", "box"]);
        assert_eq!(g.matches("glass bus puppies boxes"), vec![0, 1, 2, 3]);
    }
}
