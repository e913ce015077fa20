//! Process exit codes. The README's table mirrors this file.

/// Every row finished `ok` (or there was nothing to do).
pub const OK: u8 = 0;
/// The run finished but at least one row is `failed`.
pub const SOME_FAILED: u8 = 1;
/// A usage or configuration error, a rejected API key, an account the service stopped
/// (arrears, a product not bought), or a `--redis` that cannot be reached at the start:
/// nothing (more) was attempted, and the rows not done are `not_attempted`.
pub const USAGE: u8 = 2;
/// Another dashbatch process holds the lock on the results file.
pub const LOCKED: u8 = 3;
/// The service, its upload host or a model stayed unavailable past `--outage-timeout-s`, or
/// Redis (`--redis`) did not answer for `--redis-timeout-s` mid-run: the run stopped like an
/// interrupt, and the rows it did not reach are `not_attempted`. Worth a retry later.
pub const UNAVAILABLE: u8 = 4;
/// Interrupted by SIGINT/SIGTERM after a graceful drain.
pub const INTERRUPTED: u8 = 130;
