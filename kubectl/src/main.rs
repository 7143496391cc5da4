//! Placeholder: rkubectl is not built yet (not filed yet). It exists so the workspace has the
//! requested layout and the architecture test can check dependency rules on it.
fn main() -> std::process::ExitCode {
    eprintln!("rkubectl: not implemented yet (not filed yet)");
    std::process::ExitCode::from(2)
}
