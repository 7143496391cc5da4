//! Fresh-machine setup: README.md, scripts/install-deps and .ci/run must agree, so that a
//! newcomer who copies the README's test command gets what CI gets.

use std::collections::BTreeSet;
use std::path::PathBuf;

fn repo_file(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The Debian packages in install-deps' `PACKAGES=( ... )` array.
fn installed_packages() -> BTreeSet<String> {
    let script = repo_file("scripts/install-deps");
    let body = script
        .split_once("PACKAGES=(")
        .and_then(|(_, rest)| rest.split_once("\n)"))
        .map(|(body, _)| body)
        .expect("scripts/install-deps has a PACKAGES=( ... ) array");
    body.lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(str::split_whitespace)
        .map(str::to_string)
        .collect()
}

/// The README's "Running the tests" section.
fn readme_test_section() -> String {
    let readme = repo_file("README.md");
    let start = readme
        .find("## Running the tests")
        .expect("README.md has a 'Running the tests' section");
    let rest = &readme[start + 2..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end].to_string()
}

#[test]
fn readme_lists_exactly_the_packages_the_install_script_installs() {
    let packages = installed_packages();
    assert!(
        packages.contains("libprotobuf-dev"),
        "protoc's well-known types (google/protobuf/*.proto) come in libprotobuf-dev"
    );
    let section = readme_test_section();
    let listed: BTreeSet<String> = section
        .split_once("holds the one list of system packages:")
        .and_then(|(_, rest)| rest.split_once("`,"))
        .map(|(list, _)| list.replace(['`', '\n'], " "))
        .expect("README names the package list after 'holds the one list of system packages:'")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(
        listed, packages,
        "README.md and scripts/install-deps disagree"
    );
}

#[test]
fn ci_runs_the_readme_command_and_installs_nothing_on_its_own() {
    let section = readme_test_section();
    let command: Vec<&str> = section
        .split("<!-- test-command:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- test-command:end -->").next())
        .expect("README has test-command markers")
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with("```"))
        .collect();
    assert_eq!(command, ["./scripts/test"]);

    let ci = repo_file(".ci/run");
    assert!(
        ci.contains("test-command:begin"),
        ".ci/run must read the command from README.md"
    );
    assert!(
        !ci.contains("apt-get install"),
        ".ci/run must install through scripts/install-deps, the one list"
    );
    let test_script = repo_file("scripts/test");
    assert!(test_script.contains("scripts/install-deps"));
    assert!(
        test_script.contains("cargo build --workspace --bins"),
        "multi-process tests need the component binaries built"
    );
}
