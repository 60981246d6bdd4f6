//! The filesystem under the NFS mount: create, archive and remove volume directories, measure
//! their usage, probe the mount.
//!
//! Every operation runs on the blocking pool under a timeout, so a stale or hung NFS mount turns
//! into an error (and a failing readiness) instead of a stuck executor. Every path is a
//! [`RelDir`] joined onto the canonical root, and every existing component is checked with
//! `lstat`: a symlink anywhere on the way is refused, so nothing outside the root is touched.
//! This module decides nothing about Kubernetes objects.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use super::plan::RelDir;

/// How many timed-out calls may still be stuck in the kernel before new calls are refused
/// outright (each one holds a blocking-pool thread).
pub const MAX_STUCK_CALLS: usize = 4;

/// A recursive removal touches every file of a volume, so it gets this many times the
/// per-call timeout (15 s by default: 30 minutes).
pub const REMOVE_TIMEOUT_FACTOR: u32 = 120;

/// A filesystem failure, naming the operation and the path.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The call did not return in time: the mount is probably stale or hung.
    #[error("{op} {path}: no answer from the NFS mount within {timeout:?} (stale or hung mount?)")]
    Timeout {
        op: &'static str,
        path: String,
        timeout: Duration,
    },
    /// Earlier calls are still stuck; not adding another.
    #[error("{op} {path}: refused, {stuck} earlier calls on the NFS mount are still hung")]
    Unresponsive {
        op: &'static str,
        path: String,
        /// Calls still stuck.
        stuck: usize,
    },
    /// An I/O error.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    /// A symlink where a directory was expected.
    #[error("{path} is a symbolic link; refusing to follow it out of the NFS root")]
    Symlink { path: String },
    /// Something other than a directory where a directory was expected.
    #[error("{path} exists and is not a directory")]
    NotADirectory { path: String },
    /// A resolved path is not under the root.
    #[error("{path} resolves outside the NFS root {root}")]
    Escapes { path: String, root: String },
    /// Every archive name is taken.
    #[error("{path}: every archive name is already taken ({tried} tried)")]
    NoArchiveName {
        path: String,
        /// How many names were tried.
        tried: usize,
    },
    /// The blocking task panicked or was cancelled.
    #[error("{op} {path}: the filesystem task failed: {message}")]
    Task {
        op: &'static str,
        path: String,
        message: String,
    },
}

impl FsError {
    /// Whether this says something about the mount as a whole (stale, hung, read-only, I/O
    /// error), rather than about one directory.
    pub fn is_mount_failure(&self) -> bool {
        match self {
            FsError::Timeout { .. } | FsError::Unresponsive { .. } => true,
            FsError::Io { source, .. } => matches!(
                source.raw_os_error(),
                // EIO, EROFS, ESTALE, ENOTCONN, ETIMEDOUT, EHOSTDOWN
                Some(5 | 30 | 116 | 107 | 110 | 112)
            ),
            _ => false,
        }
    }

    /// Short label for the `failures_total{reason}` metric.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            FsError::Timeout { .. } | FsError::Unresponsive { .. } => "mount_timeout",
            FsError::Io { .. } if self.is_mount_failure() => "mount_error",
            FsError::Io { .. } | FsError::Task { .. } => "filesystem_error",
            FsError::Symlink { .. } | FsError::Escapes { .. } | FsError::NotADirectory { .. } => {
                "unsafe_path"
            }
            FsError::NoArchiveName { .. } => "archive_name_taken",
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |source| FsError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

/// Whether [`VolumeRoot::ensure_dir`] created the directory or found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    Created,
    /// It already existed (a restart, or a directory shared through `pathPattern`).
    Existed,
}

/// Outcome of a removal or archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleaned {
    Removed,
    /// Renamed to this sibling name.
    Archived(String),
    /// Nothing was there (already cleaned, or never created): not an error.
    Missing,
}

/// Mode and owner for a new directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirPerms {
    /// Permission bits (applied with chmod, so the umask does not interfere).
    pub mode: u32,
    /// Owner to set, if any.
    pub uid: Option<u32>,
    /// Group to set, if any.
    pub gid: Option<u32>,
}

/// Bounds of one usage walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkLimits {
    /// Stop after this many directory entries.
    pub max_entries: u64,
    /// Stop after this long.
    pub max_time: Duration,
}

impl Default for WalkLimits {
    fn default() -> Self {
        WalkLimits {
            max_entries: 1_000_000,
            max_time: Duration::from_secs(20),
        }
    }
}

/// Result of a usage walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Bytes allocated (`st_blocks * 512`, what `du` reports), a lower bound when incomplete.
    pub bytes: u64,
    pub entries: u64,
    /// Whether the whole tree was visited (no bound hit, no unreadable directory).
    pub complete: bool,
}

/// Shared health of the mount, as last observed.
#[derive(Debug, Default)]
pub struct MountHealth {
    probed: AtomicBool,
    healthy: AtomicBool,
    last_error: std::sync::Mutex<Option<String>>,
}

impl MountHealth {
    /// Healthy once a probe succeeded and nothing has failed since.
    pub fn is_healthy(&self) -> bool {
        self.probed.load(Ordering::Acquire) && self.healthy.load(Ordering::Acquire)
    }

    /// The last mount failure, if unhealthy.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    fn set_ok(&self) {
        self.healthy.store(true, Ordering::Release);
        self.probed.store(true, Ordering::Release);
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
    }

    fn set_failed(&self, error: &FsError) {
        self.healthy.store(false, Ordering::Release);
        self.probed.store(true, Ordering::Release);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(error.to_string());
        }
    }
}

/// The NFS mount, and the only way this crate touches it.
#[derive(Debug, Clone)]
pub struct VolumeRoot {
    root: Arc<PathBuf>,
    timeout: Duration,
    stuck: Arc<AtomicUsize>,
    health: Arc<MountHealth>,
    probe_name: Arc<str>,
}

const RUNNING: u8 = 0;
const TIMED_OUT: u8 = 1;
const DONE: u8 = 2;

impl VolumeRoot {
    /// The mount at `root`; each call gets `timeout`. `probe_name` names the file the readiness
    /// probe writes (unique per replica).
    pub fn new(root: PathBuf, timeout: Duration, probe_name: &str) -> Self {
        VolumeRoot {
            root: Arc::new(root),
            timeout,
            stuck: Arc::default(),
            health: Arc::default(),
            probe_name: Arc::from(probe_name),
        }
    }

    /// The configured root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The mount's health, shared with readiness.
    pub fn health(&self) -> Arc<MountHealth> {
        Arc::clone(&self.health)
    }

    /// Runs `f` on the blocking pool with the per-call timeout.
    async fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        path: String,
        f: impl FnOnce(&Path) -> Result<T, FsError> + Send + 'static,
    ) -> Result<T, FsError> {
        self.run_within(op, path, self.timeout, f).await
    }

    /// Runs `f` on the blocking pool within `timeout`; mount-level failures mark the mount
    /// unhealthy.
    async fn run_within<T: Send + 'static>(
        &self,
        op: &'static str,
        path: String,
        timeout: Duration,
        f: impl FnOnce(&Path) -> Result<T, FsError> + Send + 'static,
    ) -> Result<T, FsError> {
        let stuck = self.stuck.load(Ordering::Acquire);
        if stuck >= MAX_STUCK_CALLS {
            let e = FsError::Unresponsive { op, path, stuck };
            self.health.set_failed(&e);
            return Err(e);
        }
        let state = Arc::new(AtomicU8::new(RUNNING));
        let root = Arc::clone(&self.root);
        let (task_state, task_stuck) = (Arc::clone(&state), Arc::clone(&self.stuck));
        let handle = tokio::task::spawn_blocking(move || {
            let r = f(&root);
            if task_state.swap(DONE, Ordering::AcqRel) == TIMED_OUT {
                task_stuck.fetch_sub(1, Ordering::AcqRel);
            }
            r
        });
        let result = match tokio::time::timeout(timeout, handle).await {
            Ok(Ok(r)) => r,
            Ok(Err(join)) => Err(FsError::Task {
                op,
                path,
                message: join.to_string(),
            }),
            Err(_) => {
                self.stuck.fetch_add(1, Ordering::AcqRel);
                if state
                    .compare_exchange(RUNNING, TIMED_OUT, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    // Finished just after the deadline: nothing left stuck.
                    self.stuck.fetch_sub(1, Ordering::AcqRel);
                }
                Err(FsError::Timeout { op, path, timeout })
            }
        };
        if let Err(e) = &result
            && e.is_mount_failure()
        {
            self.health.set_failed(e);
        }
        result
    }

    /// Writes and removes a small file at the root: proves the mount answers and is writable.
    /// Updates the health readiness reports.
    pub async fn probe(&self) -> Result<(), FsError> {
        let name = self.probe_name.to_string();
        let path = self.root.join(&name).display().to_string();
        let result = self
            .run("probe", path, move |root| {
                let file = root.join(&name);
                fs::write(&file, b"kube-persist readiness probe\n")
                    .map_err(io_err("write", &file))?;
                fs::remove_file(&file).map_err(io_err("remove", &file))
            })
            .await;
        match &result {
            Ok(()) => self.health.set_ok(),
            Err(e) => self.health.set_failed(e),
        }
        result
    }

    /// Whether the root is a mount point (its device differs from its parent's). `Ok(false)`
    /// usually means the NFS export is not mounted and volumes would land on the container's
    /// own filesystem.
    pub async fn is_mount_point(&self) -> Result<bool, FsError> {
        let shown = self.root.display().to_string();
        self.run("stat", shown, |root| {
            let real = canonical_root(root)?;
            let Some(parent) = real.parent() else {
                return Ok(true);
            };
            let own = fs::metadata(&real).map_err(io_err("stat", &real))?;
            let up = fs::metadata(parent).map_err(io_err("stat", parent))?;
            Ok(own.dev() != up.dev())
        })
        .await
    }

    /// Creates `dir` (and missing parents) with `perms`, or accepts an existing directory and
    /// applies `perms` to it again (the Go provisioner did the same), so a retry after a crash
    /// converges.
    pub async fn ensure_dir(&self, dir: &RelDir, perms: DirPerms) -> Result<Ensured, FsError> {
        let dir = dir.clone();
        let shown = self.root.join(dir.to_string()).display().to_string();
        self.run("mkdir", shown, move |root| {
            ensure_dir_sync(root, &dir, perms)
        })
        .await
    }

    /// Removes `dir` only if it is empty (rolling back a directory we just created).
    pub async fn remove_empty(&self, dir: &RelDir) -> Result<Cleaned, FsError> {
        let dir = dir.clone();
        let shown = self.root.join(dir.to_string()).display().to_string();
        self.run("rmdir", shown, move |root| {
            let Some(path) = existing_dir(root, &dir)? else {
                return Ok(Cleaned::Missing);
            };
            fs::remove_dir(&path).map_err(io_err("rmdir", &path))?;
            Ok(Cleaned::Removed)
        })
        .await
    }

    /// Removes `dir` and everything below it (symlinks inside are removed, never followed).
    pub async fn remove_all(&self, dir: &RelDir) -> Result<Cleaned, FsError> {
        let dir = dir.clone();
        let shown = self.root.join(dir.to_string()).display().to_string();
        let timeout = self.timeout.saturating_mul(REMOVE_TIMEOUT_FACTOR);
        self.run_within("remove", shown, timeout, move |root| {
            let Some(path) = existing_dir(root, &dir)? else {
                return Ok(Cleaned::Missing);
            };
            match fs::remove_dir_all(&path) {
                Ok(()) => Ok(Cleaned::Removed),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Cleaned::Missing),
                Err(e) => Err(io_err("remove", &path)(e)),
            }
        })
        .await
    }

    /// Renames `dir` within its parent to the first of `names` that is free. Never overwrites:
    /// the name is claimed by creating it (an exclusive mkdir), and the rename then replaces
    /// only that empty placeholder.
    pub async fn archive(&self, dir: &RelDir, names: &[String]) -> Result<Cleaned, FsError> {
        let dir = dir.clone();
        let names = names.to_vec();
        let shown = self.root.join(dir.to_string()).display().to_string();
        self.run("archive", shown, move |root| {
            archive_sync(root, &dir, &names)
        })
        .await
    }

    /// Bytes used under `dir`, by a bounded walk that never follows symlinks nor leaves the
    /// filesystem. A missing directory is zero.
    pub async fn usage(&self, dir: &RelDir, limits: WalkLimits) -> Result<Usage, FsError> {
        let dir = dir.clone();
        let shown = self.root.join(dir.to_string()).display().to_string();
        // The walk bounds itself; the timeout only catches a call hung inside it.
        let timeout = limits.max_time.saturating_add(self.timeout);
        self.run_within("walk", shown, timeout, move |root| {
            match existing_dir(root, &dir)? {
                Some(path) => Ok(walk_usage(&path, limits)),
                None => Ok(Usage {
                    complete: true,
                    ..Usage::default()
                }),
            }
        })
        .await
    }

    /// Whether `dir` exists and has anything in it (a missing directory holds nothing).
    pub async fn holds_data(&self, dir: &RelDir) -> Result<bool, FsError> {
        let dir = dir.clone();
        let shown = self.root.join(dir.to_string()).display().to_string();
        self.run("list", shown, move |root| {
            let Some(path) = existing_dir(root, &dir)? else {
                return Ok(false);
            };
            let mut entries = fs::read_dir(&path).map_err(io_err("list", &path))?;
            Ok(entries.next().is_some())
        })
        .await
    }
}

fn canonical_root(root: &Path) -> Result<PathBuf, FsError> {
    fs::canonicalize(root).map_err(io_err("resolve", root))
}

/// Checks one existing component: a real directory, not a symlink.
fn check_dir(path: &Path, meta: &fs::Metadata) -> Result<(), FsError> {
    if meta.file_type().is_symlink() {
        return Err(FsError::Symlink {
            path: path.display().to_string(),
        });
    }
    if !meta.is_dir() {
        return Err(FsError::NotADirectory {
            path: path.display().to_string(),
        });
    }
    Ok(())
}

/// Proves a resolved path lies under the canonical root.
fn check_under(root: &Path, path: &Path) -> Result<(), FsError> {
    let real = fs::canonicalize(path).map_err(io_err("resolve", path))?;
    if real.starts_with(root) && real != root {
        Ok(())
    } else {
        Err(FsError::Escapes {
            path: path.display().to_string(),
            root: root.display().to_string(),
        })
    }
}

/// The path of `dir` if it exists as a real directory with no symlink on the way; `None` if it
/// (or a parent) is missing.
fn existing_dir(root: &Path, dir: &RelDir) -> Result<Option<PathBuf>, FsError> {
    let root = canonical_root(root)?;
    let mut path = root.clone();
    for c in dir.components() {
        path.push(c);
        match fs::symlink_metadata(&path) {
            Ok(meta) => check_dir(&path, &meta)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("stat", &path)(e)),
        }
    }
    check_under(&root, &path)?;
    Ok(Some(path))
}

/// Synchronous body of [`VolumeRoot::ensure_dir`].
pub fn ensure_dir_sync(root: &Path, dir: &RelDir, perms: DirPerms) -> Result<Ensured, FsError> {
    let root = canonical_root(root)?;
    let mut path = root.clone();
    let mut outcome = Ensured::Existed;
    let last = dir.components().len().saturating_sub(1);
    for (i, c) in dir.components().iter().enumerate() {
        path.push(c);
        match fs::symlink_metadata(&path) {
            Ok(meta) => check_dir(&path, &meta)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match fs::DirBuilder::new().mode(perms.mode).create(&path) {
                    Ok(()) => {
                        if i == last {
                            outcome = Ensured::Created;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        // Lost a race with another creator: it must be a real directory too.
                        let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
                        check_dir(&path, &meta)?;
                    }
                    Err(e) => return Err(io_err("mkdir", &path)(e)),
                }
            }
            Err(e) => return Err(io_err("stat", &path)(e)),
        }
    }
    check_under(&root, &path)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(perms.mode))
        .map_err(io_err("chmod", &path))?;
    if perms.uid.is_some() || perms.gid.is_some() {
        std::os::unix::fs::lchown(&path, perms.uid, perms.gid).map_err(io_err("chown", &path))?;
    }
    Ok(outcome)
}

/// Synchronous body of [`VolumeRoot::archive`].
pub fn archive_sync(root: &Path, dir: &RelDir, names: &[String]) -> Result<Cleaned, FsError> {
    let Some(src) = existing_dir(root, dir)? else {
        return Ok(Cleaned::Missing);
    };
    let parent = src.parent().map(Path::to_path_buf).unwrap_or_default();
    for name in names {
        // `sibling` re-validates the name as a single safe component.
        let Ok(target_rel) = dir.sibling(name) else {
            continue;
        };
        let target = parent.join(target_rel.leaf());
        match fs::create_dir(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err("mkdir", &target)(e)),
        }
        return match fs::rename(&src, &target) {
            Ok(()) => Ok(Cleaned::Archived(name.clone())),
            Err(e) => {
                let _ = fs::remove_dir(&target);
                Err(io_err("rename", &src)(e))
            }
        };
    }
    Err(FsError::NoArchiveName {
        path: src.display().to_string(),
        tried: names.len(),
    })
}

/// Walks `dir` depth-first summing allocated bytes, within `limits`. Symlinks are counted,
/// not followed; directories on another device are not entered.
pub fn walk_usage(dir: &Path, limits: WalkLimits) -> Usage {
    let started = Instant::now();
    let mut usage = Usage {
        complete: true,
        ..Usage::default()
    };
    let Ok(top) = fs::symlink_metadata(dir) else {
        usage.complete = false;
        return usage;
    };
    let device = top.dev();
    usage.bytes = top.blocks() * 512;
    let mut stack = vec![dir.to_path_buf()];
    'walk: while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            usage.complete = false;
            continue;
        };
        for entry in entries {
            if usage.entries >= limits.max_entries || started.elapsed() >= limits.max_time {
                usage.complete = false;
                break 'walk;
            }
            let Ok(entry) = entry else {
                usage.complete = false;
                continue;
            };
            // `DirEntry::metadata` does not follow symlinks.
            let Ok(meta) = entry.metadata() else {
                usage.complete = false;
                continue;
            };
            usage.entries += 1;
            usage.bytes = usage.bytes.saturating_add(meta.blocks() * 512);
            if meta.is_dir() && meta.dev() == device {
                stack.push(entry.path());
            }
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelDir {
        RelDir::parse(s).unwrap()
    }

    fn perms(mode: u32) -> DirPerms {
        DirPerms {
            mode,
            uid: None,
            gid: None,
        }
    }

    #[test]
    fn ensure_dir_creates_nested_with_mode_and_tolerates_existing() {
        let tmp = tempfile::tempdir().unwrap();
        let d = rel("ns/claim");
        assert_eq!(
            ensure_dir_sync(tmp.path(), &d, perms(0o750)).unwrap(),
            Ensured::Created
        );
        let meta = fs::metadata(tmp.path().join("ns/claim")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
        assert_eq!(
            ensure_dir_sync(tmp.path(), &d, perms(0o750)).unwrap(),
            Ensured::Existed
        );
    }

    #[test]
    fn ensure_dir_refuses_symlinks_and_files() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("link")).unwrap();
        let err = ensure_dir_sync(tmp.path(), &rel("link/x"), perms(0o777)).unwrap_err();
        assert!(matches!(err, FsError::Symlink { .. }), "{err}");
        assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
        fs::write(tmp.path().join("file"), b"x").unwrap();
        let err = ensure_dir_sync(tmp.path(), &rel("file"), perms(0o777)).unwrap_err();
        assert!(matches!(err, FsError::NotADirectory { .. }), "{err}");
    }

    #[test]
    fn archive_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let names: Vec<String> = vec!["archived-a".into(), "archived-a-T".into()];
        fs::create_dir_all(tmp.path().join("a")).unwrap();
        fs::write(tmp.path().join("a/one"), b"1").unwrap();
        assert_eq!(
            archive_sync(tmp.path(), &rel("a"), &names).unwrap(),
            Cleaned::Archived("archived-a".into())
        );
        // An empty directory at the first name must not be replaced either.
        fs::create_dir_all(tmp.path().join("a")).unwrap();
        fs::write(tmp.path().join("a/two"), b"2").unwrap();
        assert_eq!(
            archive_sync(tmp.path(), &rel("a"), &names).unwrap(),
            Cleaned::Archived("archived-a-T".into())
        );
        assert!(tmp.path().join("archived-a/one").exists());
        assert!(tmp.path().join("archived-a-T/two").exists());
        fs::create_dir_all(tmp.path().join("a")).unwrap();
        let err = archive_sync(tmp.path(), &rel("a"), &names).unwrap_err();
        assert!(
            matches!(err, FsError::NoArchiveName { tried: 2, .. }),
            "{err}"
        );
        assert_eq!(
            archive_sync(tmp.path(), &rel("missing"), &names).unwrap(),
            Cleaned::Missing
        );
    }

    #[test]
    fn walk_counts_and_respects_limits() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("d/e")).unwrap();
        fs::write(tmp.path().join("d/e/f"), vec![1u8; 64 * 1024]).unwrap();
        fs::write(tmp.path().join("d/g"), vec![1u8; 64 * 1024]).unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("big"), vec![1u8; 1024 * 1024]).unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("d/link")).unwrap();
        let u = walk_usage(&tmp.path().join("d"), WalkLimits::default());
        assert!(u.complete);
        assert_eq!(u.entries, 4);
        assert!(u.bytes >= 128 * 1024 && u.bytes < 1024 * 1024, "{u:?}");
        let u = walk_usage(
            &tmp.path().join("d"),
            WalkLimits {
                max_entries: 1,
                max_time: Duration::from_secs(5),
            },
        );
        assert!(!u.complete);
        assert_eq!(u.entries, 1);
    }

    #[tokio::test]
    async fn hung_calls_time_out_and_mark_the_mount_unhealthy() {
        let tmp = tempfile::tempdir().unwrap();
        let root = VolumeRoot::new(
            tmp.path().to_path_buf(),
            Duration::from_millis(50),
            ".probe",
        );
        root.probe().await.unwrap();
        assert!(root.health().is_healthy());
        let err = root
            .run("hang", "x".into(), |_| {
                std::thread::sleep(Duration::from_millis(300));
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(matches!(err, FsError::Timeout { .. }), "{err}");
        assert!(!root.health().is_healthy());
        assert_eq!(root.stuck.load(Ordering::Acquire), 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(root.stuck.load(Ordering::Acquire), 0);
        root.probe().await.unwrap();
        assert!(root.health().is_healthy());
    }

    #[tokio::test]
    async fn mount_points_are_recognised() {
        let tmp = tempfile::tempdir().unwrap();
        let plain = VolumeRoot::new(tmp.path().join("."), Duration::from_secs(5), ".probe");
        fs::create_dir(tmp.path().join("sub")).unwrap();
        let sub = VolumeRoot::new(tmp.path().join("sub"), Duration::from_secs(5), ".probe");
        assert!(!sub.is_mount_point().await.unwrap());
        let _ = plain.is_mount_point().await.unwrap();
        let proc = VolumeRoot::new("/proc".into(), Duration::from_secs(5), ".probe");
        assert!(proc.is_mount_point().await.unwrap());
    }

    #[tokio::test]
    async fn probe_fails_on_a_missing_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = VolumeRoot::new(tmp.path().join("absent"), Duration::from_secs(5), ".probe");
        assert!(root.probe().await.is_err());
        assert!(!root.health().is_healthy());
        assert!(root.health().last_error().unwrap().contains("absent"));
    }
}
