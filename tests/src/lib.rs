//! Shared helpers for the end-to-end tests live in rkube-testkit; this crate holds only tests and benchmarks.
