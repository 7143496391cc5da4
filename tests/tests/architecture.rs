//! The dependency invariants from ARCHITECTURE.md, checked from `cargo metadata`.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

/// The component binaries: none may depend on another's crate.
const COMPONENTS: &[&str] = &[
    "rkube-apiserver",
    "rkube-scheduler",
    "rkube-controller-manager",
    "rkubelet",
    "rkube-proxy",
    "rkubectl",
];

/// Workspace package name -> names of its normal and build dependencies. Dev-dependencies
/// are left out on purpose: a component's tests may run the API server in-process.
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

#[test]
fn only_the_api_server_tests_and_benchmarks_depend_on_the_store() {
    let packages = workspace_dependencies();
    assert!(
        packages.contains_key("rkube-store"),
        "rkube-store not in the workspace"
    );
    let mut dependents: Vec<&str> = packages
        .iter()
        .filter(|(_, deps)| deps.iter().any(|d| d == "rkube-store"))
        .map(|(name, _)| name.as_str())
        .collect();
    dependents.sort();
    // The benchmarks write raw bytes to a store as their same-run baseline; they are not a
    // component and never run in a cluster.
    assert_eq!(dependents, ["rkube-apiserver", "rkube-bench", "rkube-e2e"]);
}

#[test]
fn no_component_depends_on_another_component() {
    let packages = workspace_dependencies();
    for component in COMPONENTS {
        let deps = packages
            .get(*component)
            .unwrap_or_else(|| panic!("component {component} not in the workspace"));
        let offending: Vec<&String> = deps
            .iter()
            .filter(|d| COMPONENTS.contains(&d.as_str()))
            .collect();
        assert!(offending.is_empty(), "{component} depends on {offending:?}");
    }
}
