//! The `ok` lines an earlier run left, as resume's skip decision needs them.

/// The `ok` lines of a results file (and its side file) as sorted `(id key, digest)` pairs:
/// 16 bytes a line, where a hash map takes two to three times that.
#[derive(Debug, Default, Clone)]
pub struct Done(pub(super) Vec<(u64, u64)>);

/// What the earlier lines of a row's id say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// An `ok` line answers what the row asks now.
    Done,
    /// `ok` lines exist for the id, but they answer something else (the row changed).
    Changed,
    /// No `ok` line for the id.
    New,
}

impl Done {
    /// Builds the set from pairs in any order.
    pub fn from_unsorted(mut pairs: Vec<(u64, u64)>) -> Self {
        pairs.sort_unstable();
        pairs.dedup();
        pairs.shrink_to_fit();
        Self(pairs)
    }

    /// Whether the row with id key `key`, whose lines may carry one of `digests` (see
    /// [`super::row_digests`]), is done.
    pub fn check(&self, key: u64, digests: [u64; 2]) -> Resumed {
        let start = self.0.partition_point(|&(k, _)| k < key);
        let mut lines = self.0[start..].iter().take_while(|&&(k, _)| k == key);
        match lines.next() {
            None => Resumed::New,
            Some(first)
                if std::iter::once(first)
                    .chain(lines)
                    .any(|(_, d)| digests.contains(d)) =>
            {
                Resumed::Done
            }
            Some(_) => Resumed::Changed,
        }
    }

    /// `ok` lines held (one per id and digest).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
