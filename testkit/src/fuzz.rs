//! The one proptest configuration of the property tests of wire parsers (`*/tests/fuzz_wire.rs`).

use proptest::test_runner::{Config, FileFailurePersistence, RngSeed};

/// `default_cases` cases unless `PROPTEST_CASES` is set; the fixed `seed` unless
/// `PROPTEST_RNG_SEED` is, so every run of the suite tests the same cases; failures saved to
/// `<test file>.proptest-regressions` beside the test, and replayed first.
pub fn config(default_cases: u32, seed: u64) -> Config {
    // `Config::default()` has already read the PROPTEST_* variables.
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default_cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(seed);
    }
    // The default looks for a lib.rs beside the test file; integration tests have none.
    config.failure_persistence = Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions")));
    config
}
