//! The manifest's optional columns beyond the required ones: `params` (a JSON object of
//! generation parameters for the row) and `file2`, `file3`, … (more files of the row).

use crate::dashscope::check_param_name;

/// A row's generation parameters, as its `params` cell gives them.
pub type Params = serde_json::Map<String, serde_json::Value>;

/// The number of a further file column: `file2` → 2. `file` followed by a positive integer
/// written without a leading zero, in any case, as `file` itself is matched.
pub(super) fn file_number(name: &str) -> Option<u64> {
    let head = name.get(..4)?;
    let digits = &name[4..];
    if !head.eq_ignore_ascii_case("file")
        || digits.is_empty()
        || digits.starts_with('0')
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    digits.parse().ok()
}

/// Reads a `params` cell: empty is no parameters; anything else must be a JSON object whose
/// keys dashbatch does not set itself. The error is worded for the row's message.
pub(super) fn parse_cell(cell: &str) -> Result<Option<Params>, String> {
    let cell = cell.trim();
    if cell.is_empty() {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_str(cell).map_err(|e| {
        format!(
            "the params column is not valid JSON ({e}); write a JSON object, e.g. \
             {{\"temperature\": 0.2}}, with \"\" for each \" inside a quoted CSV field"
        )
    })?;
    let serde_json::Value::Object(params) = value else {
        return Err(format!(
            "the params column holds {cell}, which is not a JSON object; write an object, \
             e.g. {{\"temperature\": 0.2}}, or leave the cell empty"
        ));
    };
    for name in params.keys() {
        check_param_name(name).map_err(|why| format!("the params column: {why}"))?;
    }
    // `{}` asks nothing more than an empty cell, and keeps the row's id.
    Ok(Some(params).filter(|p| !p.is_empty()))
}

/// The text of a row's parameters that its id and digest cover: the object as serde_json
/// writes it (keys sorted), so spacing in the cell does not make another row.
pub fn canonical(params: &Params) -> String {
    serde_json::Value::Object(params.clone()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn further_file_columns_are_file_then_a_number() {
        assert_eq!(file_number("file2"), Some(2));
        assert_eq!(file_number("FILE10"), Some(10));
        for name in ["file", "file02", "file0", "files", "file2a", "fil2", "f"] {
            assert_eq!(file_number(name), None, "{name}");
        }
    }

    /// Empty optional cells change nothing: a one-file row keeps the id and the media list it
    /// had before `params` and `file2` existed; a filled cell makes another row.
    #[test]
    fn empty_optional_cells_keep_a_rows_id() {
        let read = |text: &str| -> Vec<crate::manifest::Entry> {
            crate::manifest::Manifest::from_reader(
                std::io::Cursor::new(text.as_bytes()),
                std::path::Path::new("m.csv"),
                ".".into(),
            )
            .unwrap()
            .collect()
        };
        let id = |entry: &crate::manifest::Entry| entry.id().to_owned();
        let plain = read("model,file,prompt\nm,a.png,p\n");
        let with_empty = read("model,file,prompt,params,file2\nm,a.png,p,,\n");
        assert_eq!(id(&plain[0]), id(&with_empty[0]));
        let crate::manifest::Entry::Row(row) = &with_empty[0] else {
            panic!("{:?}", with_empty[0]);
        };
        assert_eq!(row.media.len(), 1);
        assert_eq!(row.params, None);
        let filled = read(
            "model,file,prompt,params,file2\nm,a.png,p,{},b.png\nm,a.png,p,\"{\"\"seed\"\":1}\",\n",
        );
        assert_ne!(id(&filled[0]), id(&plain[0]));
        assert_ne!(id(&filled[1]), id(&plain[0]));
    }

    #[test]
    fn a_cell_is_empty_or_a_json_object_of_allowed_names() {
        assert_eq!(parse_cell("  ").unwrap(), None);
        assert_eq!(parse_cell("{ }").unwrap(), None);
        let params = parse_cell(r#"{"temperature": 0.5, "seed": 7}"#)
            .unwrap()
            .unwrap();
        assert_eq!(params["seed"], 7);
        assert_eq!(canonical(&params), r#"{"seed":7,"temperature":0.5}"#);
        let err = parse_cell("[1, 2]").unwrap_err();
        assert!(err.contains("not a JSON object"), "{err}");
        let err = parse_cell("temperature=0.5").unwrap_err();
        assert!(err.contains("not valid JSON"), "{err}");
        let err = parse_cell(r#"{"stream": true}"#).unwrap_err();
        assert!(
            err.contains("\"stream\"") && err.contains("set by dashbatch"),
            "{err}"
        );
    }
}
