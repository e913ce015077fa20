//! The manifest's header: which column is which (the required ones, the optional `id`,
//! `system`, `params`, the further files `file2`, `file3`, …) and which pass through, with
//! the problems that stop a run before any work (a column missing, repeated, or clashing with
//! a results column).

use std::path::Path;

use super::{ManifestError, REQUIRED, params};

/// Where each known column sits in a record.
#[derive(Debug, Clone)]
pub(super) struct Columns {
    pub model: usize,
    /// The media columns, in the order a row's media list takes: `file`, then `file2`,
    /// `file3`, … by their number.
    pub media: Vec<usize>,
    pub params: Option<usize>,
    pub prompt: usize,
    pub id: Option<usize>,
    pub system: Option<usize>,
    /// (index, name) of pass-through columns, in header order.
    pub extra: Vec<(usize, String)>,
    pub width: usize,
}

/// Reads the header of the manifest at `path` (named in errors).
pub(super) fn parse_header(
    header: &csv::ByteRecord,
    path: &Path,
) -> Result<Columns, ManifestError> {
    let names: Vec<String> = header
        .iter()
        .map(|raw| {
            std::str::from_utf8(raw)
                .map(|s| s.trim().trim_start_matches('\u{feff}').to_owned())
                .map_err(|_| ManifestError::HeaderEncoding {
                    path: path.to_owned(),
                })
        })
        .collect::<Result<_, _>>()?;
    // A set, not a scan of the names before each one: that was quadratic, and a generated
    // header of 100k columns took seconds on every open.
    let mut seen = std::collections::HashSet::with_capacity(names.len());
    if let Some(name) = names
        .iter()
        .find(|name| !seen.insert(name.to_ascii_lowercase()))
    {
        return Err(ManifestError::DuplicateColumn {
            path: path.to_owned(),
            column: name.clone(),
        });
    }
    let find = |want: &str| names.iter().position(|n| n.eq_ignore_ascii_case(want));
    let missing: Vec<&str> = REQUIRED.into_iter().filter(|c| find(c).is_none()).collect();
    let (Some(model), Some(file), Some(prompt)) = (find("model"), find("file"), find("prompt"))
    else {
        return Err(ManifestError::MissingColumns {
            path: path.to_owned(),
            missing: missing.join(", "),
            found: names.join(","),
        });
    };
    let id = find("id");
    let system = find("system");
    let params = find("params");
    let mut further: Vec<(u64, usize)> = names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| Some((params::file_number(n)?, i)))
        .collect();
    further.sort_unstable();
    let media: Vec<usize> = [file]
        .into_iter()
        .chain(further.iter().map(|&(_, i)| i))
        .collect();
    let known = [Some(model), Some(prompt), id, system, params];
    let extra: Vec<(usize, String)> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| !known.contains(&Some(*i)) && !media.contains(i))
        .map(|(i, n)| (i, n.clone()))
        .collect();
    // Pass-through columns are written after the results' own, so a name they share would
    // appear twice in the results header (ignoring case, as for the manifest's own columns).
    let results = &crate::output::COLUMNS;
    if let Some((_, column)) = extra
        .iter()
        .find(|(_, n)| results.iter().any(|c| c.eq_ignore_ascii_case(n)))
    {
        return Err(ManifestError::ResultsColumn {
            path: path.to_owned(),
            column: column.clone(),
        });
    }
    Ok(Columns {
        model,
        media,
        params,
        prompt,
        id,
        system,
        extra,
        width: names.len(),
    })
}
