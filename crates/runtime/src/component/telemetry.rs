//! One `tracing` setup for every binary: the filter from `RUST_LOG` (default `info`), the
//! same line format, written to stderr as upstream components log, so stdout stays free for
//! what scripts read (the API server prints the address it bound there).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

const DEFAULT_FILTER: &str = "info";

/// Installs the global subscriber. A second call (tests starting several components in one
/// process) leaves the first in place.
pub fn init_tracing() {
    let (filter, invalid) = filter_from(std::env::var("RUST_LOG").ok().as_deref());
    // Colours only for a person at a terminal; log files and CI output stay plain.
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init()
        .is_ok();
    if let (true, Some(error)) = (installed, invalid) {
        tracing::warn!(%error, "ignoring RUST_LOG; logging at {DEFAULT_FILTER}");
    }
}

/// The filter `RUST_LOG` asks for, or the default and why `RUST_LOG` was not usable.
fn filter_from(rust_log: Option<&str>) -> (EnvFilter, Option<String>) {
    match rust_log.filter(|value| !value.trim().is_empty()) {
        None => (EnvFilter::new(DEFAULT_FILTER), None),
        Some(value) => match EnvFilter::try_new(value) {
            Ok(filter) => (filter, None),
            Err(error) => (
                EnvFilter::new(DEFAULT_FILTER),
                Some(format!("{value:?}: {error}")),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_sets_the_filter_and_info_is_the_default() {
        assert_eq!(filter_from(None).0.to_string(), "info");
        assert_eq!(filter_from(Some(" ")).0.to_string(), "info");
        let (filter, invalid) = filter_from(Some("rkube_scheduler=debug,warn"));
        assert!(invalid.is_none());
        assert_eq!(filter.max_level_hint(), Some(tracing::Level::DEBUG.into()));
    }

    #[test]
    fn an_unusable_rust_log_falls_back_to_info_and_says_why() {
        let (filter, invalid) = filter_from(Some("rkube=loud"));
        assert_eq!(filter.to_string(), "info");
        assert!(invalid.unwrap().starts_with("\"rkube=loud\": "));
    }
}
