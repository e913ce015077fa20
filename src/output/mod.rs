//! Everything a run writes: the results file (its writer, resume and the upgrade of older
//! files, in [`results`]), the statistics and the progress display, all owned by one
//! reporter on its own thread (see [`reporter`]), the run lock, atomic rewrites and the JSON
//! and Prometheus reports. The upload cache kept across runs is not output: it is
//! [`crate::upload_cache`].

pub mod atomic;
pub mod lock;
pub mod progress;
pub mod report;
pub mod reporter;
pub mod results;
pub mod stats;

pub use progress::Progress;
pub use reporter::{Event, Reporter};
pub use results::{COLUMNS, ResultsWriter, RowResult, Status, Tokens, UploadOutcome};
pub use stats::Stats;
