//! `--shard K/N`: which rows one of N processes takes. A row belongs to shard
//! `1 + h(id) mod N`, where `h` is the first 8 bytes of the SHA-256 of its id: the same on
//! every host, every build and every Rust version (unlike [`super::id_key`], which is only
//! stable within one process), so N processes started anywhere split a manifest with no row
//! taken twice and none left out.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// Shard `index` of `count` (1 ≤ index ≤ count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Shard {
    index: u32,
    count: u32,
}

impl Shard {
    /// Whether the row with id `id` is this shard's.
    pub fn owns(&self, id: &str) -> bool {
        let digest = Sha256::digest(id.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first) % u64::from(self.count) == u64::from(self.index - 1)
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not a shard: write K/N with 1 <= K <= N, e.g. 2/4");
        let (k, n) = text.split_once('/').ok_or_else(bad)?;
        let index: u32 = k.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

impl TryFrom<String> for Shard {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_falls_in_exactly_one_shard() {
        let shards: Vec<Shard> = (1..=3).map(|k| format!("{k}/3").parse().unwrap()).collect();
        let mut sizes = [0; 3];
        for i in 0..3000 {
            let id = format!("row-{i}");
            let owners: Vec<usize> = (0..3).filter(|&s| shards[s].owns(&id)).collect();
            assert_eq!(owners.len(), 1, "{id}");
            sizes[owners[0]] += 1;
        }
        // A hash, not a round robin: each shard holds about a third.
        assert!(sizes.iter().all(|&n| n > 800), "{sizes:?}");
        // Fixed across builds: the hash is SHA-256, not the std hasher.
        assert!(shards[0].owns("row-0") == "1/3".parse::<Shard>().unwrap().owns("row-0"));
        assert!("1/1".parse::<Shard>().unwrap().owns("anything"));
    }

    #[test]
    fn malformed_shards_are_refused_with_the_form_to_use() {
        for bad in ["0/3", "4/3", "3", "a/b", "1/0", ""] {
            let err = bad.parse::<Shard>().unwrap_err();
            assert!(err.contains("K/N"), "{bad}: {err}");
        }
        assert_eq!("2/4".parse::<Shard>().unwrap().to_string(), "2/4");
    }
}
