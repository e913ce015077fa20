//! `dashbatch merge MANIFEST RESULTS... -o OUT`: the results files of the shards of one
//! manifest (`run --shard K/N`) joined into one. The join is [`crate::pipeline::merge`].

use std::path::PathBuf;

use crate::exit;
use crate::pipeline::merge::merge;

#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// The manifest CSV the results files were run from.
    pub manifest: PathBuf,

    /// The results files to join (each shard's, in any order).
    #[arg(value_name = "RESULTS", required = true)]
    pub inputs: Vec<PathBuf>,

    /// The merged results file, replaced atomically. Its extension decides its format
    /// (`.jsonl`/`.ndjson`: JSONL, else CSV), whatever the inputs' formats.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,

    /// Start a CSV OUT with a UTF-8 byte order mark, so that Excel reads it as UTF-8.
    #[arg(long)]
    pub excel_bom: bool,
}

/// Exit codes: 0 when every row has an `ok` line or a failed one, 1 when some rows are in no
/// input (`not_attempted`), 2 when an input is refused or cannot be read (nothing written).
pub fn run(args: MergeArgs) -> u8 {
    match merge(&args.manifest, &args.inputs, &args.output, args.excel_bom) {
        Ok(merged) => {
            out!(
                "merged {} results file(s) into {}: {} rows, {} not attempted",
                args.inputs.len(),
                args.output.display(),
                merged.rows,
                merged.not_attempted
            );
            if merged.not_attempted > 0 {
                exit::SOME_FAILED
            } else {
                exit::OK
            }
        }
        Err(err) => {
            say!("error: {err}");
            exit::USAGE
        }
    }
}
