//! Placeholder: rkubelet is not built yet (tracked in issue #4). It exists so the workspace has the
//! requested layout and the architecture test can check dependency rules on it.
fn main() -> std::process::ExitCode {
    eprintln!("rkubelet: not implemented yet (tracked in issue #4)");
    std::process::ExitCode::from(2)
}
