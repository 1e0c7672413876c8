//! The names of the benchmark's native handlers (`native` in a plugin's
//! config, for `scripts/bench` only). The handlers themselves are in
//! switchyard-sandbox, behind its `bench-native` feature; a build without
//! it refuses a config that names one.

/// A handler compiled into the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Native {
    /// `bench-sink`'s `noop`: done, nothing else.
    BenchNoop,
    /// `bench-sink`'s `upsert`: one upsert into `bench_counters`, keyed by
    /// the record key.
    BenchUpsert,
}

/// The statement `bench-sink` runs in `upsert` mode.
pub const BENCH_UPSERT: &str = "INSERT INTO bench_counters (k, n) VALUES ($1, 1) ON CONFLICT (k) DO UPDATE SET n = bench_counters.n + 1";
