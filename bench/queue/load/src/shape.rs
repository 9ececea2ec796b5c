//! The shape of a queue benchmark run, the same for every load generator:
//! how many jobs, from how many producers, after how many warm-up jobs.

/// Command-line options every load generator takes.
#[derive(Debug, clap::Args)]
pub struct RunShape {
    /// Jobs to time.
    #[arg(long, default_value_t = 2000)]
    pub jobs: usize,
    /// Concurrent producers, each submitting one job at a time.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Jobs run first, with the same producers, and not counted.
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// Give up when the jobs have not all completed this long after the
    /// first submit.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
}
