//! The dependency invariants from ARCHITECTURE.md, checked from `cargo metadata`.
//!
//! Only normal and build dependencies count: a crate's tests may run the API server
//! in-process, and a library's examples may measure it, without the shipped code depending
//! on it. Direct dependencies are enough: a crate that reached the store or containerd
//! through a library would make that library a direct dependent, which these tests refuse.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

/// The component binaries. None may depend on another's crate, and each depends on
/// `rkube-api`, the one copy of the Kubernetes rules they share.
const COMPONENTS: &[&str] = &[
    "rkube-apiserver",
    "rkube-scheduler",
    "rkube-controller-manager",
    "rkubelet",
    "rkube-proxy",
    "rkubectl",
];

/// Components that are placeholders today: a binary that says so and exits. They have no
/// dependencies at all; the day one gains a dependency it is being built, and it must then
/// depend on `rkube-api` like the others (and leave this list).
const PLACEHOLDERS: &[&str] = &["rkube-proxy", "rkubectl"];

/// The crate allowed to run components in-process: the end-to-end test harness.
const TEST_CRATE: &str = "rkube-e2e";

/// Workspace package name -> names of its normal and build dependencies.
fn workspace_dependencies() -> BTreeMap<String, Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|package| {
            let name = package["name"].as_str().unwrap().to_string();
            let deps = package["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].as_str() != Some("dev"))
                .map(|d| d["name"].as_str().unwrap().to_string())
                .collect();
            (name, deps)
        })
        .collect()
}

/// The workspace packages that depend on `dependency`, sorted.
fn dependents_of<'a>(
    packages: &'a BTreeMap<String, Vec<String>>,
    dependency: &str,
) -> Vec<&'a str> {
    packages
        .iter()
        .filter(|(_, deps)| deps.iter().any(|d| d == dependency))
        .map(|(name, _)| name.as_str())
        .collect()
}

fn assert_in_workspace(packages: &BTreeMap<String, Vec<String>>, names: &[&str]) {
    for name in names {
        assert!(
            packages.contains_key(*name),
            "{name} is not in the workspace: update this test"
        );
    }
}

#[test]
fn only_the_api_server_depends_on_the_store() {
    let packages = workspace_dependencies();
    assert_in_workspace(&packages, &["rkube-store", "rkube-apiserver"]);
    assert_eq!(dependents_of(&packages, "rkube-store"), ["rkube-apiserver"]);
}

#[test]
fn only_the_cri_crate_depends_on_containerd_client() {
    let packages = workspace_dependencies();
    assert_in_workspace(&packages, &["rkube-cri"]);
    assert_eq!(dependents_of(&packages, "containerd-client"), ["rkube-cri"]);
}

#[test]
fn every_component_depends_on_the_shared_api_rules() {
    let packages = workspace_dependencies();
    assert_in_workspace(&packages, COMPONENTS);
    let mut violations = Vec::new();
    for component in COMPONENTS {
        let deps = &packages[*component];
        if PLACEHOLDERS.contains(component) {
            if !deps.is_empty() {
                violations.push(format!(
                    "{component} has dependencies ({deps:?}), so it is no longer a placeholder: \
                     take it off PLACEHOLDERS; as a component it must depend on rkube-api"
                ));
            }
        } else if !deps.iter().any(|d| d == "rkube-api") {
            violations.push(format!(
                "{component} does not depend on rkube-api, the one copy of the Kubernetes \
                 rules every component shares"
            ));
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn no_component_depends_on_another_component() {
    let packages = workspace_dependencies();
    assert_in_workspace(&packages, COMPONENTS);
    for component in COMPONENTS {
        let offending: Vec<&String> = packages[*component]
            .iter()
            .filter(|d| COMPONENTS.contains(&d.as_str()))
            .collect();
        assert!(offending.is_empty(), "{component} depends on {offending:?}");
    }
}

#[test]
fn only_the_test_crate_depends_on_component_crates() {
    let packages = workspace_dependencies();
    assert_in_workspace(&packages, &[TEST_CRATE]);
    let offending: Vec<(&str, Vec<&str>)> = packages
        .iter()
        .filter(|(name, _)| name.as_str() != TEST_CRATE)
        .map(|(name, deps)| {
            let components = deps
                .iter()
                .map(String::as_str)
                .filter(|d| COMPONENTS.contains(d))
                .collect();
            (name.as_str(), components)
        })
        .filter(|(_, components): &(&str, Vec<&str>)| !components.is_empty())
        .collect();
    assert!(
        offending.is_empty(),
        "only {TEST_CRATE} may link a component's crate; benchmarks run the binaries as \
         processes. Offending: {offending:?}"
    );
}
