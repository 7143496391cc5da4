//! subPath mounts: resolving a volumeMount's subPath safely beneath its volume and
//! bind-mounting exactly what was checked. Separate from volume setup because it is the
//! kubelet's defence against symlink escapes and owns its own mount lifecycle.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Why a volumeMount's subPath cannot be mounted; the container waits with
/// CreateContainerConfigError and this message.
#[derive(Debug, thiserror::Error)]
pub enum SubPathError {
    #[error("invalid subPath {sub_path:?}: must be a relative path without '..'")]
    Invalid { sub_path: String },
    #[error("subPath {sub_path:?} is outside of the volume {volume:?}: {reason}")]
    Outside {
        sub_path: String,
        volume: String,
        reason: &'static str,
    },
    #[error("preparing subPath {sub_path:?} of volume {volume:?}: {source}")]
    Io {
        sub_path: String,
        volume: String,
        #[source]
        source: std::io::Error,
    },
}

/// A subPath resolved beneath its volume: the descriptor of what was checked, and the
/// symlink-free path it had when it was checked.
#[derive(Debug)]
pub struct ResolvedSubPath {
    fd: OwnedFd,
    path: PathBuf,
}

impl ResolvedSubPath {
    /// The resolved directory or file as a path without symlinks, beneath the volume.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This process's name for exactly the resolved file, whatever is renamed or swapped
    /// into its path later; valid while `self` lives.
    pub fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Bind-mounts exactly the resolved file onto `target` (replacing an earlier mount
    /// there), through its descriptor: a symlink swapped into the subPath since it was
    /// resolved cannot redirect the mount. The runtime then mounts `target`, which only
    /// the kubelet can change. (The runtime cannot take the descriptor itself: a bind
    /// mount from another process's mount namespace is refused.)
    pub fn bind(&self, target: &Path) -> std::io::Result<()> {
        unmount(target)?;
        let is_dir =
            rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&self.fd)?.st_mode).is_dir();
        match std::fs::symlink_metadata(target) {
            Ok(meta) if meta.is_dir() == is_dir => {}
            Ok(meta) => {
                if meta.is_dir() {
                    std::fs::remove_dir(target)?
                } else {
                    std::fs::remove_file(target)?
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if is_dir {
            std::fs::create_dir_all(target)?;
        } else if !target.exists() {
            std::fs::File::create(target)?;
        }
        nix::mount::mount(
            Some(&self.fd_path()),
            target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(std::io::Error::from)
    }
}

/// The kubelet's bind mounts of subPaths, below a pod's directory.
pub fn sub_path_mounts(pod_dir: &Path) -> PathBuf {
    pod_dir.join("volume-subpaths")
}

/// Where container `container`'s volumeMount number `index` has its subPath mounted.
pub fn sub_path_target(
    pod_dir: &Path,
    volume: &str,
    container: &str,
    index: usize,
) -> Option<PathBuf> {
    // Names become path components; validation makes them DNS labels, but this is the
    // kubelet's own directory and it does not rely on that.
    let plain =
        |name: &str| !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']);
    (plain(volume) && plain(container)).then(|| {
        sub_path_mounts(pod_dir)
            .join(volume)
            .join(container)
            .join(index.to_string())
    })
}

fn unmount(target: &Path) -> std::io::Result<()> {
    match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        // Not a mount point, or not there at all.
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(std::io::Error::new(
            std::io::Error::from(e).kind(),
            format!("unmounting {}: {e}", target.display()),
        )),
    }
}

/// Unmounts every subPath mount of the pod. Its directory must not be removed while one
/// is left: removing the tree would delete through the mount into the volume.
pub fn unmount_sub_paths(pod_dir: &Path) -> std::io::Result<()> {
    let Ok(volumes) = std::fs::read_dir(sub_path_mounts(pod_dir)) else {
        return Ok(());
    };
    for volume in volumes {
        for container in std::fs::read_dir(volume?.path())? {
            for target in std::fs::read_dir(container?.path())? {
                unmount(&target?.path())?;
            }
        }
    }
    Ok(())
}

/// Removes the pod's directory once nothing is mounted below it.
pub fn remove_pod_dir(pod_dir: &Path) -> std::io::Result<()> {
    unmount_sub_paths(pod_dir)?;
    match std::fs::remove_dir_all(pod_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Resolves `sub_path` beneath `volume_root` (the CVE-2017-1002101 class): symlinks are
/// followed only while they stay inside the volume, absolute symlinks and `..` that would
/// leave it are refused, and missing directories are created one at a time beneath the
/// deepest existing one, never through a symlink.
pub fn resolve_sub_path(
    volume_root: &Path,
    volume: &str,
    sub_path: &str,
) -> Result<ResolvedSubPath, SubPathError> {
    let relative = Path::new(sub_path);
    let components: Vec<&std::ffi::OsStr> = relative
        .components()
        .map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect::<Option<_>>()
        .filter(|c: &Vec<_>| !c.is_empty())
        .ok_or_else(|| SubPathError::Invalid {
            sub_path: sub_path.to_string(),
        })?;
    let fail = |errno: Errno| match errno {
        // openat2 reports an escape through `..` or an absolute symlink as EXDEV, and a
        // symlink where none may be (or a magic link) as ELOOP.
        Errno::XDEV => SubPathError::Outside {
            sub_path: sub_path.to_string(),
            volume: volume.to_string(),
            reason: "it resolves through a symlink that leaves the volume",
        },
        Errno::LOOP => SubPathError::Outside {
            sub_path: sub_path.to_string(),
            volume: volume.to_string(),
            reason: "a symlink in it cannot be followed safely",
        },
        other => SubPathError::Io {
            sub_path: sub_path.to_string(),
            volume: volume.to_string(),
            source: other.into(),
        },
    };
    let path_flags = OFlags::PATH | OFlags::CLOEXEC;
    let beneath = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    let root = rustix::fs::open(volume_root, path_flags | OFlags::DIRECTORY, Mode::empty())
        .map_err(fail)?;
    let resolved = |fd: OwnedFd| -> Result<ResolvedSubPath, SubPathError> {
        // openat2 already kept the walk beneath the root; this double-checks the result
        // and gives the symlink-free path the mount is made from.
        let io = |source: std::io::Error| SubPathError::Io {
            sub_path: sub_path.to_string(),
            volume: volume.to_string(),
            source,
        };
        let root_path =
            std::fs::read_link(format!("/proc/self/fd/{}", root.as_raw_fd())).map_err(io)?;
        let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(io)?;
        if !path.starts_with(&root_path) {
            return Err(SubPathError::Outside {
                sub_path: sub_path.to_string(),
                volume: volume.to_string(),
                reason: "it was moved out of the volume while being resolved",
            });
        }
        Ok(ResolvedSubPath { fd, path })
    };
    match rustix::fs::openat2(&root, relative, path_flags, Mode::empty(), beneath) {
        Ok(fd) => return resolved(fd),
        Err(Errno::NOENT) => {}
        Err(e) => return Err(fail(e)),
    }
    let mut current: Option<OwnedFd> = None;
    let mut prefix = PathBuf::new();
    for component in components {
        prefix.push(component);
        let dir_flags = path_flags | OFlags::DIRECTORY;
        let next = match rustix::fs::openat2(&root, &prefix, dir_flags, Mode::empty(), beneath) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                let parent = current.as_ref().map_or(root.as_fd(), |fd| fd.as_fd());
                match rustix::fs::mkdirat(parent, component, Mode::from_raw_mode(0o777)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(fail(e)),
                }
                // What is there now must be a directory, not a symlink raced in.
                rustix::fs::openat2(
                    parent,
                    component,
                    dir_flags | OFlags::NOFOLLOW,
                    Mode::empty(),
                    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
                )
                .map_err(fail)?
            }
            Err(e) => return Err(fail(e)),
        };
        current = Some(next);
    }
    match current {
        Some(fd) => resolved(fd),
        None => Err(SubPathError::Invalid {
            sub_path: sub_path.to_string(),
        }),
    }
}
