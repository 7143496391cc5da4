//! Placeholder: rkube-scheduler is not built yet (tracked in issue #3). It exists so the workspace has the
//! requested layout and the architecture test can check dependency rules on it.
fn main() -> std::process::ExitCode {
    eprintln!("rkube-scheduler: not implemented yet (tracked in issue #3)");
    std::process::ExitCode::from(2)
}
