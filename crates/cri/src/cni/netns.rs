//! Network namespaces pinned by bind mounts, made and removed the way `ip netns` does
//! without running it. Separate because it is the only part that changes namespaces and
//! mounts, on threads of its own.

use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::CniNetwork;
use crate::{Result, RuntimeError};

impl CniNetwork {
    pub(super) async fn ensure_netns_dir(&self) -> Result<()> {
        let mut ready = self.netns_dir_ready.lock().await;
        if !*ready {
            let dir = self.config.netns_dir.clone();
            blocking(move || make_shared_mount_point(&dir)).await?;
            *ready = true;
        }
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|err| RuntimeError::Other(format!("blocking task failed: {err}")))?
}

fn errno_error(errno: Errno, what: String) -> RuntimeError {
    let err = io::Error::from(errno);
    RuntimeError::Io(io::Error::new(err.kind(), format!("{what}: {err}")))
}

/// Makes `dir` a mount point with shared propagation, as `ip netns` does, so that
/// unmounting a namespace here also unmounts the copies other mount namespaces (made
/// after it was mounted) hold, instead of keeping the namespace alive there.
fn make_shared_mount_point(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let make_shared = || {
        nix::mount::mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match make_shared() {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself, then retry.
        Err(Errno::EINVAL) => {
            nix::mount::mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| errno_error(e, format!("bind-mounting {}", dir.display())))?;
            make_shared().map_err(|e| errno_error(e, format!("making {} shared", dir.display())))
        }
        Err(e) => Err(errno_error(e, format!("making {} shared", dir.display()))),
    }
}

/// Creates a network namespace pinned at `path`. The unshare happens on a thread of its
/// own, so no runtime worker thread ever changes namespace; the bind mount outlives it.
pub(super) async fn create_netns(path: PathBuf) -> Result<()> {
    blocking(move || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|err| {
                io::Error::new(err.kind(), format!("creating {}: {err}", path.display()))
            })?;
        let target = path.clone();
        let pinned = std::thread::Builder::new()
            .name("netns-create".into())
            .spawn(move || -> std::result::Result<(), (Errno, &'static str)> {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| (e, "unshare"))?;
                nix::mount::mount(
                    Some("/proc/thread-self/ns/net"),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| (e, "bind-mount"))
            })?
            .join()
            .map_err(|_| RuntimeError::Other("network namespace thread panicked".into()))?;
        if let Err((errno, step)) = pinned {
            let _ = std::fs::remove_file(&path);
            return Err(errno_error(
                errno,
                format!("creating network namespace {} ({step})", path.display()),
            ));
        }
        Ok(())
    })
    .await
}

/// Unmounts and deletes a namespace file; a missing or unmounted file is fine.
pub(super) async fn remove_netns(path: PathBuf) -> Result<()> {
    blocking(move || {
        match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::ENOENT) | Err(Errno::EINVAL) => {}
            Err(e) => return Err(errno_error(e, format!("unmounting {}", path.display()))),
        }
        match std::fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
                err.kind(),
                format!("removing {}: {err}", path.display()),
            )
            .into()),
            _ => Ok(()),
        }
    })
    .await
}
