//! "Did you mean …?": the nearest of the names a program knows, for a
//! name it does not (a misspelled variable, file or dataset).

/// The candidate closest to `word` by edit distance, if within `max`
/// edits (ties: the first in order).
pub fn closest<'a, I>(word: &str, candidates: I, max: usize) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= max)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Variables in `env` under `prefix` that are not in `known`: typos that
/// would otherwise be ignored without a word, each with the closest known
/// name when one is near.
pub fn unknown_vars<'a>(
    env: impl IntoIterator<Item = &'a str>,
    prefix: &str,
    known: &[&str],
) -> Vec<(String, Option<String>)> {
    env.into_iter()
        .filter(|k| k.starts_with(prefix) && !known.contains(k))
        .map(|k| {
            let near = closest(k, known.iter().copied(), 3).map(str::to_owned);
            (k.to_owned(), near)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_within_reach() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(closest("LISTN", ["LISTEN", "WORKERS"], 2), Some("LISTEN"));
        assert_eq!(closest("zzzz", ["LISTEN"], 2), None);
        assert_eq!(
            closest("sles.csv", ["sales.csv", "stock.csv"], 3),
            Some("sales.csv")
        );
    }
}
