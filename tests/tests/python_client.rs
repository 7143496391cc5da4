//! The official Kubernetes Python client (`pip install kubernetes`) against rkube.

use rkube_e2e::{on_both_backends, workspace_root, TestCluster};

on_both_backends!(python_client_checks_pass);

async fn python_client_checks_pass(cluster: &TestCluster) {
    let script = workspace_root().join("tests/python/client_check.py");
    let output = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(cluster.kubeconfig_path())
        .env_remove("KUBECONFIG")
        .output()
        .await
        .expect("running python3 (is it installed?)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "{} exited with {}:\n{stdout}\n{stderr}",
        script.display(),
        output.status
    );
    assert!(stdout.contains("python client checks passed"), "{stdout}");
}
