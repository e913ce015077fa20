//! Everything a run writes: the results CSV, the statistics and the progress display, all
//! owned by one reporter task (see [`reporter`]).

pub mod reporter;
pub mod results;
pub mod stats;

pub use reporter::{Event, Progress, Reporter};
pub use results::{COLUMNS, ResultsWriter, RowResult, Status, Tokens, UploadOutcome};
pub use stats::Stats;
pub mod atomic;
pub mod lock;
pub mod report;
pub mod resume;
pub mod state;
