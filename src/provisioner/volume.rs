//! The filesystem under the NFS mount: create, archive and remove volume directories, measure
//! their usage, probe the mount.
//!
//! Every operation runs on the blocking pool under a timeout, so a stale or hung NFS mount turns
//! into an error (and a failing readiness) instead of a stuck executor. Every path is a
//! [`RelDir`] below the root, walked one component at a time through directory handles that
//! never follow a symlink, and every change is made through those handles: a tenant who swaps a
//! directory for a symlink mid-operation cannot make anything outside the root be touched.
//! Permission failures say which directory is in the way and the one-time fix.
//! This module decides nothing about Kubernetes objects.

use std::{
    ffi::{OsStr, OsString},
    fs,
    io::{self, Write as _},
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use rustix::{
    fd::OwnedFd,
    fs::{self as rfs, AtFlags, Mode, OFlags},
    io::Errno,
    process::{getegid, geteuid},
};

use super::plan::RelDir;

/// How many timed-out calls may still be stuck in the kernel before new calls are refused
/// outright (each one holds a blocking-pool thread).
pub const MAX_STUCK_CALLS: usize = 4;

/// A recursive removal touches every file of a volume, so it gets this many times the
/// per-call timeout (15 s by default: 30 minutes).
pub const REMOVE_TIMEOUT_FACTOR: u32 = 120;

/// How many directory levels a removal goes down (each level holds one open directory).
pub const MAX_REMOVE_DEPTH: usize = 512;

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
    /// This process may not change a directory: it belongs to another user, or its mode forbids
    /// it. Needs a one-time fix on the NFS server; retrying does not help.
    #[error(
        "permission denied {doing} {path}: {dir} is owned by uid {owner} with mode {mode:04o} \
         and this provisioner runs as uid {uid}{}; {}",
        owner_hint(.owner, .uid),
        fix_hint(.owner, .uid, .gid, .export)
    )]
    PermissionDenied {
        /// What was being done, as a phrase (`creating`, `renaming`, ...).
        doing: &'static str,
        path: String,
        /// The directory whose owner and mode forbid it.
        dir: String,
        owner: u32,
        /// Its permission bits.
        mode: u32,
        /// This process's effective uid and gid.
        uid: u32,
        gid: u32,
        /// The exported path on the NFS server (`NFS_PATH`), when known.
        export: Option<String>,
    },
    /// Only root may give a directory to another owner.
    #[error(
        "permission denied changing the owner of {path} to {}: only root may, and this \
         provisioner runs as uid {uid}; remove `uid` and `gid` from the StorageClass parameters",
        owner_text(.owner, .group)
    )]
    ChownDenied {
        path: String,
        owner: Option<u32>,
        group: Option<u32>,
        /// This process's effective uid.
        uid: u32,
    },
    /// A directory inside a volume is on another filesystem (a mount point); removal does not
    /// cross into it.
    #[error("{path} is on another filesystem (a mount point inside the volume); not removing it")]
    OtherFilesystem { path: String },
    /// A volume nests directories deeper than a removal goes.
    #[error("{path} is nested {depth} directories deep; not removing deeper than that")]
    TooDeep { path: String, depth: usize },
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

/// Who made a directory with this owner, when the owner says it.
fn owner_hint(owner: &u32, uid: &u32) -> &'static str {
    match *owner {
        o if o == *uid => " (the owner itself lacks write or search permission)",
        0 => " (made by a client running as root, such as nfs-subdir-external-provisioner)",
        65534 => {
            " (nobody: made by a client running as root under root_squash, such as \
             nfs-subdir-external-provisioner)"
        }
        _ => "",
    }
}

/// The one-time fix for a directory this process may not change.
fn fix_hint(owner: &u32, uid: &u32, gid: &u32, export: &Option<String>) -> String {
    if owner == uid {
        return "give it owner write and search permission once (chmod u+rwx)".to_owned();
    }
    let export = export.as_deref().unwrap_or("<the exported directory>");
    format!(
        "make the export writable by uid {uid} once: on the NFS server run \
         `chown -R {uid}:{gid} {export}` and export it with \
         all_squash,anonuid={uid},anongid={gid} (see the README, \
         \"Taking over an export made by nfs-subdir-external-provisioner\")"
    )
}

fn owner_text(owner: &Option<u32>, group: &Option<u32>) -> String {
    match (owner, group) {
        (Some(u), Some(g)) => format!("uid {u} gid {g}"),
        (Some(u), None) => format!("uid {u}"),
        (None, Some(g)) => format!("gid {g}"),
        (None, None) => "nobody".to_owned(),
    }
}

impl FsError {
    /// Whether retrying cannot help until someone changes the export: a permission problem, a
    /// symlink or a file where a directory belongs, a mount inside a volume. Such errors are
    /// worth retrying only slowly, and they say nothing about the mount's health.
    pub fn is_permanent(&self) -> bool {
        match self {
            FsError::PermissionDenied { .. }
            | FsError::ChownDenied { .. }
            | FsError::Symlink { .. }
            | FsError::NotADirectory { .. }
            | FsError::OtherFilesystem { .. }
            | FsError::TooDeep { .. } => true,
            // EPERM, EACCES
            FsError::Io { source, .. } => matches!(source.raw_os_error(), Some(1 | 13)),
            FsError::Timeout { .. }
            | FsError::Unresponsive { .. }
            | FsError::NoArchiveName { .. }
            | FsError::Task { .. } => false,
        }
    }

    /// Names the exported path on the NFS server in a permission error's fix.
    fn with_export(mut self, nfs_path: &str) -> Self {
        if let FsError::PermissionDenied { export, .. } = &mut self {
            *export = Some(nfs_path.to_owned());
        }
        self
    }

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
            FsError::PermissionDenied { .. } | FsError::ChownDenied { .. } => "permission_denied",
            FsError::Io { .. } if self.is_permanent() => "permission_denied",
            FsError::Io { .. } | FsError::Task { .. } | FsError::TooDeep { .. } => {
                "filesystem_error"
            }
            FsError::Symlink { .. }
            | FsError::NotADirectory { .. }
            | FsError::OtherFilesystem { .. } => "unsafe_path",
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
    /// `NFS_PATH`, named in the fix of a permission error.
    export: Option<Arc<str>>,
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
            export: None,
        }
    }

    /// Names `nfs_path`, the exported directory on the NFS server, in permission errors.
    pub fn with_export(mut self, nfs_path: &str) -> Self {
        self.export = Some(Arc::from(nfs_path));
        self
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
            Ok(Ok(r)) => match &self.export {
                Some(export) => r.map_err(|e| e.with_export(export)),
                None => r,
            },
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
            .run("probe", path, move |root| probe_sync(root, &name))
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
        self.run("rmdir", shown, move |root| remove_empty_sync(root, &dir))
            .await
    }

    /// Removes `dir` and everything below it (symlinks inside are removed, never followed; a
    /// mount point inside is an error, never entered).
    pub async fn remove_all(&self, dir: &RelDir) -> Result<Cleaned, FsError> {
        let dir = dir.clone();
        let shown = self.root.join(dir.to_string()).display().to_string();
        let timeout = self.timeout.saturating_mul(REMOVE_TIMEOUT_FACTOR);
        self.run_within("remove", shown, timeout, move |root| {
            remove_all_sync(root, &dir)
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
            let Some(parent) = open_parent(root, &dir)? else {
                return Ok(false);
            };
            match open_child(&parent, OsStr::new(dir.leaf()), Access::Read)? {
                Some(handle) => Ok(!list(&handle)?.is_empty()),
                None => Ok(false),
            }
        })
        .await
    }
}

fn canonical_root(root: &Path) -> Result<PathBuf, FsError> {
    fs::canonicalize(root).map_err(io_err("resolve", root))
}

// ---------------------------------------------------------------------------------------------
// Directory handles
//
// Every operation opens the root once and walks to its target one component at a time with
// `openat(O_NOFOLLOW | O_DIRECTORY)`, then acts through the handles it holds (`mkdirat`,
// `fchmod`, `renameat`, `unlinkat`). A name that a tenant swaps for a symlink after it was
// looked at is therefore never followed: the handle still refers to the directory that was
// checked, and a symlink met on the way is an error.

/// An open directory and the path it was reached by. The path is for messages only; every call
/// goes through the handle.
struct DirHandle {
    fd: OwnedFd,
    path: PathBuf,
}

/// What a directory handle is opened for.
#[derive(Debug, Clone, Copy)]
enum Access {
    /// Only as the base of further `*at` calls (`O_PATH`: needs no read permission on it).
    Lookup,
    /// Also to list it and change its mode and owner (needs read permission on it).
    Read,
}

impl Access {
    fn flags(self) -> OFlags {
        let common = OFlags::DIRECTORY | OFlags::CLOEXEC;
        match self {
            Access::Lookup => common | OFlags::PATH,
            Access::Read => common | OFlags::RDONLY,
        }
    }
}

/// A call on a directory entry, named for messages.
#[derive(Debug, Clone, Copy)]
enum Op {
    Mkdir,
    Open,
    Rename,
    Unlink,
    Rmdir,
    Chmod,
    Write,
    List,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Mkdir => "mkdir",
            Op::Open => "open",
            Op::Rename => "rename",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Chmod => "chmod",
            Op::Write => "write",
            Op::List => "list",
        }
    }

    fn doing(self) -> &'static str {
        match self {
            Op::Mkdir => "creating",
            Op::Open => "opening",
            Op::Rename => "renaming",
            Op::Unlink | Op::Rmdir => "removing",
            Op::Chmod => "changing the mode of",
            Op::Write => "writing",
            Op::List => "listing",
        }
    }
}

fn errno_err(op: Op, path: &Path, e: Errno) -> FsError {
    FsError::Io {
        op: op.name(),
        path: path.display().to_string(),
        source: e.into(),
    }
}

fn is_denied(e: Errno) -> bool {
    matches!(e, Errno::ACCESS | Errno::PERM)
}

/// A permission failure on `path`, blaming `blocker` (whose owner and mode forbid it).
fn denied(op: Op, path: &Path, blocker: &Path, st: &rfs::Stat) -> FsError {
    FsError::PermissionDenied {
        doing: op.doing(),
        path: path.display().to_string(),
        dir: blocker.display().to_string(),
        owner: st.st_uid,
        mode: st.st_mode & 0o7777,
        uid: geteuid().as_raw(),
        gid: getegid().as_raw(),
        export: None,
    }
}

fn stat(dir: &DirHandle) -> Result<rfs::Stat, FsError> {
    rfs::fstat(&dir.fd).map_err(|e| FsError::Io {
        op: "stat",
        path: dir.path.display().to_string(),
        source: e.into(),
    })
}

/// `op` on the entry `name` of `dir` failed. Creating, renaming and removing an entry needs
/// write and search permission on `dir`, so a permission failure is about `dir`.
fn entry_err(op: Op, dir: &DirHandle, name: &OsStr, e: Errno) -> FsError {
    let path = dir.path.join(name);
    if is_denied(e)
        && let Ok(st) = rfs::fstat(&dir.fd)
    {
        return denied(op, &path, &dir.path, &st);
    }
    errno_err(op, &path, e)
}

/// `op` on the directory `dir` itself failed (listing it, changing its mode).
fn self_err(op: Op, dir: &DirHandle, e: Errno) -> FsError {
    if is_denied(e)
        && let Ok(st) = rfs::fstat(&dir.fd)
    {
        return denied(op, &dir.path, &dir.path, &st);
    }
    errno_err(op, &dir.path, e)
}

/// Opens the root itself. A symlink here is the administrator's choice and is followed.
fn open_root(root: &Path, access: Access) -> Result<DirHandle, FsError> {
    match rfs::open(root, access.flags(), Mode::empty()) {
        Ok(fd) => Ok(DirHandle {
            fd,
            path: root.to_path_buf(),
        }),
        Err(e) => Err(errno_err(Op::Open, root, e)),
    }
}

/// Opens the directory `name` in `parent`, never following a symlink; `None` when it is missing.
fn open_child(
    parent: &DirHandle,
    name: &OsStr,
    access: Access,
) -> Result<Option<DirHandle>, FsError> {
    let path = parent.path.join(name);
    match rfs::openat(
        &parent.fd,
        name,
        access.flags() | OFlags::NOFOLLOW,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(DirHandle { fd, path })),
        Err(Errno::NOENT) => Ok(None),
        Err(Errno::LOOP | Errno::NOTDIR) => Err(not_a_directory(parent, name, path)),
        Err(e) if is_denied(e) => {
            // Either `parent` may not be searched, or `name` may not be read.
            let blocker = match rfs::statat(&parent.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => Some((path.clone(), st)),
                Err(_) => rfs::fstat(&parent.fd)
                    .ok()
                    .map(|st| (parent.path.clone(), st)),
            };
            Err(match blocker {
                Some((dir, st)) => denied(Op::Open, &path, &dir, &st),
                None => errno_err(Op::Open, &path, e),
            })
        }
        Err(e) => Err(errno_err(Op::Open, &path, e)),
    }
}

/// The error for `name` in `parent` not being a directory: a symlink, or something else.
fn not_a_directory(parent: &DirHandle, name: &OsStr, path: PathBuf) -> FsError {
    let path = path.display().to_string();
    match rfs::statat(&parent.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Symlink => {
            FsError::Symlink { path }
        }
        _ => FsError::NotADirectory { path },
    }
}

/// Opens the directory `name` in `parent`, creating it with `mode` (less the umask) when
/// missing. Also says whether this call created it.
fn open_or_create(
    parent: &DirHandle,
    name: &OsStr,
    mode: u32,
    access: Access,
) -> Result<(DirHandle, bool), FsError> {
    if let Some(dir) = open_child(parent, name, access)? {
        return Ok((dir, false));
    }
    let created = match rfs::mkdirat(&parent.fd, name, Mode::from_raw_mode(mode)) {
        Ok(()) => true,
        // Another creator won the race; opening it checks what it made.
        Err(Errno::EXIST) => false,
        Err(e) => return Err(entry_err(Op::Mkdir, parent, name, e)),
    };
    match open_child(parent, name, access)? {
        Some(dir) => Ok((dir, created)),
        None => Err(errno_err(Op::Open, &parent.path.join(name), Errno::NOENT)),
    }
}

/// The components of `dir` above its leaf.
fn parents(dir: &RelDir) -> &[String] {
    let all = dir.components();
    &all[..all.len().saturating_sub(1)]
}

/// Opens the directory holding `dir`'s leaf, creating nothing; `None` when some part is missing.
fn open_parent(root: &Path, dir: &RelDir) -> Result<Option<DirHandle>, FsError> {
    let mut parent = open_root(root, Access::Lookup)?;
    for name in parents(dir) {
        match open_child(&parent, OsStr::new(name), Access::Lookup)? {
            Some(next) => parent = next,
            None => return Ok(None),
        }
    }
    Ok(Some(parent))
}

/// The path of `dir` if it exists as a real directory with no symlink on the way; `None` if it
/// (or a parent) is missing.
fn existing_dir(root: &Path, dir: &RelDir) -> Result<Option<PathBuf>, FsError> {
    let Some(parent) = open_parent(root, dir)? else {
        return Ok(None);
    };
    Ok(open_child(&parent, OsStr::new(dir.leaf()), Access::Lookup)?.map(|d| d.path))
}

/// Synchronous body of [`VolumeRoot::probe`].
fn probe_sync(root: &Path, name: &str) -> Result<(), FsError> {
    let dir = open_root(root, Access::Lookup)?;
    let name = OsStr::new(name);
    let flags =
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rfs::openat(&dir.fd, name, flags, Mode::from_raw_mode(0o644))
        .map_err(|e| entry_err(Op::Write, &dir, name, e))?;
    let path = dir.path.join(name);
    fs::File::from(fd)
        .write_all(b"kube-persist readiness probe\n")
        .map_err(io_err("write", &path))?;
    rfs::unlinkat(&dir.fd, name, AtFlags::empty()).map_err(|e| entry_err(Op::Unlink, &dir, name, e))
}

/// Synchronous body of [`VolumeRoot::ensure_dir`].
pub fn ensure_dir_sync(root: &Path, dir: &RelDir, perms: DirPerms) -> Result<Ensured, FsError> {
    let mut parent = open_root(root, Access::Lookup)?;
    for name in parents(dir) {
        parent = open_or_create(&parent, OsStr::new(name), perms.mode, Access::Lookup)?.0;
    }
    // A new leaf starts owner-only, so that nobody uses it before its mode is final and this
    // process can always open it to set that mode.
    let name = OsStr::new(dir.leaf());
    let (leaf, created) = open_or_create(&parent, name, 0o700, Access::Read)?;
    if let Err(e) = apply_perms(&leaf, perms) {
        // Leave nothing half-made behind (a retry would find it and fail the same way).
        if created {
            let _ = rfs::unlinkat(&parent.fd, name, AtFlags::REMOVEDIR);
        }
        return Err(e);
    }
    Ok(if created {
        Ensured::Created
    } else {
        Ensured::Existed
    })
}

/// Gives `dir` the owner and mode of `perms`, through its handle. What is already right is left
/// alone, so a directory another user made with the right mode is accepted as it is.
fn apply_perms(dir: &DirHandle, perms: DirPerms) -> Result<(), FsError> {
    let st = stat(dir)?;
    let uid = perms.uid.filter(|&u| u != st.st_uid);
    let gid = perms.gid.filter(|&g| g != st.st_gid);
    let chowned = uid.is_some() || gid.is_some();
    if chowned {
        std::os::unix::fs::fchown(&dir.fd, uid, gid).map_err(|source| {
            if matches!(source.raw_os_error(), Some(1 | 13)) {
                FsError::ChownDenied {
                    path: dir.path.display().to_string(),
                    owner: perms.uid,
                    group: perms.gid,
                    uid: geteuid().as_raw(),
                }
            } else {
                io_err("chown", &dir.path)(source)
            }
        })?;
    }
    // A chown may clear set-id bits, so the mode is set after it.
    if chowned || st.st_mode & 0o7777 != perms.mode {
        rfs::fchmod(&dir.fd, Mode::from_raw_mode(perms.mode))
            .map_err(|e| self_err(Op::Chmod, dir, e))?;
    }
    Ok(())
}

/// Synchronous body of [`VolumeRoot::archive`].
pub fn archive_sync(root: &Path, dir: &RelDir, names: &[String]) -> Result<Cleaned, FsError> {
    let Some(parent) = open_parent(root, dir)? else {
        return Ok(Cleaned::Missing);
    };
    let leaf = OsStr::new(dir.leaf());
    if open_child(&parent, leaf, Access::Lookup)?.is_none() {
        return Ok(Cleaned::Missing);
    }
    for name in names {
        // `sibling` re-validates the name as a single safe component.
        if dir.sibling(name).is_err() {
            continue;
        }
        let target = OsStr::new(name.as_str());
        match rfs::mkdirat(&parent.fd, target, Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(entry_err(Op::Mkdir, &parent, target, e)),
        }
        // Renaming never follows a symlink: if the leaf was swapped for one since, the link
        // itself would be renamed, and the empty placeholder refuses anything but a directory.
        return match rfs::renameat(&parent.fd, leaf, &parent.fd, target) {
            Ok(()) => Ok(Cleaned::Archived(name.clone())),
            Err(e) => {
                let _ = rfs::unlinkat(&parent.fd, target, AtFlags::REMOVEDIR);
                Err(entry_err(Op::Rename, &parent, leaf, e))
            }
        };
    }
    Err(FsError::NoArchiveName {
        path: parent.path.join(leaf).display().to_string(),
        tried: names.len(),
    })
}

/// Synchronous body of [`VolumeRoot::remove_empty`].
pub fn remove_empty_sync(root: &Path, dir: &RelDir) -> Result<Cleaned, FsError> {
    let Some(parent) = open_parent(root, dir)? else {
        return Ok(Cleaned::Missing);
    };
    let leaf = OsStr::new(dir.leaf());
    match rfs::unlinkat(&parent.fd, leaf, AtFlags::REMOVEDIR) {
        Ok(()) => Ok(Cleaned::Removed),
        Err(Errno::NOENT) => Ok(Cleaned::Missing),
        Err(Errno::NOTDIR) => Err(not_a_directory(&parent, leaf, parent.path.join(leaf))),
        Err(e) => Err(entry_err(Op::Rmdir, &parent, leaf, e)),
    }
}

/// Synchronous body of [`VolumeRoot::remove_all`].
pub fn remove_all_sync(root: &Path, dir: &RelDir) -> Result<Cleaned, FsError> {
    let Some(parent) = open_parent(root, dir)? else {
        return Ok(Cleaned::Missing);
    };
    let leaf = OsStr::new(dir.leaf());
    let Some(top) = open_child(&parent, leaf, Access::Read)? else {
        return Ok(Cleaned::Missing);
    };
    // Removing the emptied directory needs write and search permission on its parent: check
    // that first, so a volume that cannot be removed is not left half removed.
    let may_remove = rfs::Access::WRITE_OK | rfs::Access::EXEC_OK;
    if let Err(e) = rfs::accessat(&parent.fd, ".", may_remove, AtFlags::EACCESS) {
        return Err(entry_err(Op::Rmdir, &parent, leaf, e));
    }
    empty_tree(top)?;
    match rfs::unlinkat(&parent.fd, leaf, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(Cleaned::Removed),
        Err(Errno::NOTDIR) => Err(not_a_directory(&parent, leaf, parent.path.join(leaf))),
        Err(e) => Err(entry_err(Op::Rmdir, &parent, leaf, e)),
    }
}

/// How many directory entries are read before removing them and reading again.
const LIST_BATCH: usize = 1024;

/// Removes everything inside `top`, depth first without recursion: a symlink is removed as a
/// link, never followed, and a directory on another filesystem is an error, never entered. A
/// directory of this process's own that lacks owner permissions gets them first (read-only
/// caches are common). Each level below `top` holds its open handle until it is emptied.
fn empty_tree(top: DirHandle) -> Result<(), FsError> {
    let device = stat(&top)?.st_dev;
    make_own_writable(&top)?;
    // The directories entered above `current`, each with the name `current`'s branch has in it.
    let mut above: Vec<(DirHandle, OsString)> = Vec::new();
    let mut current = top;
    loop {
        let entries = list(&current)?;
        if entries.is_empty() {
            // `current` is empty: remove it from its parent and carry on there.
            let Some((parent, name)) = above.pop() else {
                return Ok(());
            };
            drop(current);
            match rfs::unlinkat(&parent.fd, name.as_os_str(), AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(entry_err(Op::Rmdir, &parent, &name, e)),
            }
            current = parent;
            continue;
        }
        for (name, kind) in entries {
            let Some(sub) = remove_or_open(&current, &name, kind)? else {
                continue;
            };
            if stat(&sub)?.st_dev != device {
                return Err(FsError::OtherFilesystem {
                    path: sub.path.display().to_string(),
                });
            }
            // `current` is `above.len() + 1` levels deep, counting the volume as one.
            if above.len() + 1 >= MAX_REMOVE_DEPTH {
                return Err(FsError::TooDeep {
                    path: sub.path.display().to_string(),
                    depth: MAX_REMOVE_DEPTH,
                });
            }
            make_own_writable(&sub)?;
            above.push((current, name));
            current = sub;
            // List the subdirectory next; what is left here is listed again on the way back.
            break;
        }
    }
}

/// Adds owner read, write and search permission to a directory of this process's own.
fn make_own_writable(dir: &DirHandle) -> Result<(), FsError> {
    let st = stat(dir)?;
    if st.st_uid == geteuid().as_raw() && st.st_mode & 0o700 != 0o700 {
        rfs::fchmod(&dir.fd, Mode::from_raw_mode((st.st_mode & 0o7777) | 0o700))
            .map_err(|e| self_err(Op::Chmod, dir, e))?;
    }
    Ok(())
}

/// Up to [`LIST_BATCH`] entries of `dir` (without `.` and `..`), from the start.
fn list(dir: &DirHandle) -> Result<Vec<(OsString, rfs::FileType)>, FsError> {
    let mut entries = Vec::new();
    let listing = rfs::Dir::read_from(&dir.fd).map_err(|e| self_err(Op::List, dir, e))?;
    for entry in listing {
        let entry = entry.map_err(|e| self_err(Op::List, dir, e))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        entries.push((OsStr::from_bytes(name).to_os_string(), entry.file_type()));
        if entries.len() >= LIST_BATCH {
            break;
        }
    }
    Ok(entries)
}

/// Removes the entry `name` of `dir` if it is not a directory; opens it if it is.
fn remove_or_open(
    dir: &DirHandle,
    name: &OsStr,
    kind: rfs::FileType,
) -> Result<Option<DirHandle>, FsError> {
    if kind != rfs::FileType::Directory {
        match rfs::unlinkat(&dir.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => return Ok(None),
            // A directory after all (the listing did not say, or it was swapped in).
            Err(Errno::ISDIR) => {}
            Err(e) => return Err(entry_err(Op::Unlink, dir, name, e)),
        }
    }
    match open_child(dir, name, Access::Read) {
        Ok(sub) => Ok(sub),
        // Replaced by a file or a link since it was listed: remove that, as a link.
        Err(FsError::Symlink { .. } | FsError::NotADirectory { .. }) => {
            match rfs::unlinkat(&dir.fd, name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(None),
                Err(e) => Err(entry_err(Op::Unlink, dir, name, e)),
            }
        }
        Err(e) => Err(e),
    }
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
    use std::os::unix::fs::PermissionsExt;

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
    fn ensure_dir_refuses_a_symlink_leaf_and_sets_mode_through_the_handle() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::set_permissions(outside.path(), fs::Permissions::from_mode(0o751)).unwrap();
        fs::create_dir(tmp.path().join("ns")).unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("ns/claim")).unwrap();
        let err = ensure_dir_sync(tmp.path(), &rel("ns/claim"), perms(0o700)).unwrap_err();
        assert!(matches!(err, FsError::Symlink { .. }), "{err}");
        assert!(err.is_permanent());
        let mode = fs::metadata(outside.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o751);
        // An existing directory gets the mode asked for, set bits included.
        fs::create_dir(tmp.path().join("ns/other")).unwrap();
        ensure_dir_sync(tmp.path(), &rel("ns/other"), perms(0o2770)).unwrap();
        let mode = fs::metadata(tmp.path().join("ns/other"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o2770);
    }

    #[test]
    fn remove_all_removes_links_as_links_and_read_only_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("precious"), b"x").unwrap();
        let vol = tmp.path().join("vol");
        fs::create_dir_all(vol.join("a/b/c")).unwrap();
        fs::write(vol.join("a/b/c/file"), b"x").unwrap();
        fs::write(vol.join("top"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), vol.join("a/to-dir")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("precious"), vol.join("to-file")).unwrap();
        // A read-only tree of our own, as a Go module cache leaves it.
        for d in ["a/b/c", "a/b", "a"] {
            fs::set_permissions(vol.join(d), fs::Permissions::from_mode(0o555)).unwrap();
        }
        assert_eq!(
            remove_all_sync(tmp.path(), &rel("vol")).unwrap(),
            Cleaned::Removed
        );
        assert!(!vol.exists());
        assert!(outside.path().join("precious").exists());
        assert_eq!(
            remove_all_sync(tmp.path(), &rel("vol")).unwrap(),
            Cleaned::Missing
        );
        // The volume itself being a symlink is refused, and its target kept.
        std::os::unix::fs::symlink(outside.path(), &vol).unwrap();
        let err = remove_all_sync(tmp.path(), &rel("vol")).unwrap_err();
        assert!(matches!(err, FsError::Symlink { .. }), "{err}");
        assert!(outside.path().join("precious").exists());
    }

    #[test]
    fn remove_all_stops_at_the_depth_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let deep: PathBuf = std::iter::once("vol")
            .chain(std::iter::repeat_n("d", MAX_REMOVE_DEPTH))
            .collect();
        fs::create_dir_all(tmp.path().join(&deep)).unwrap();
        let err = remove_all_sync(tmp.path(), &rel("vol")).unwrap_err();
        assert!(
            matches!(err, FsError::TooDeep { depth, .. } if depth == MAX_REMOVE_DEPTH),
            "{err}"
        );
        assert!(err.is_permanent());
        // One level less is removed.
        fs::remove_dir(tmp.path().join(&deep)).unwrap();
        assert_eq!(
            remove_all_sync(tmp.path(), &rel("vol")).unwrap(),
            Cleaned::Removed
        );
    }

    #[test]
    fn remove_empty_keeps_full_directories_and_refuses_links() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("ns/full")).unwrap();
        fs::write(tmp.path().join("ns/full/f"), b"x").unwrap();
        assert!(remove_empty_sync(tmp.path(), &rel("ns/full")).is_err());
        assert!(tmp.path().join("ns/full/f").exists());
        std::os::unix::fs::symlink(tmp.path().join("ns/full"), tmp.path().join("ns/link")).unwrap();
        let err = remove_empty_sync(tmp.path(), &rel("ns/link")).unwrap_err();
        assert!(matches!(err, FsError::Symlink { .. }), "{err}");
        fs::create_dir(tmp.path().join("ns/empty")).unwrap();
        assert_eq!(
            remove_empty_sync(tmp.path(), &rel("ns/empty")).unwrap(),
            Cleaned::Removed
        );
        assert_eq!(
            remove_empty_sync(tmp.path(), &rel("ns/empty")).unwrap(),
            Cleaned::Missing
        );
    }

    #[test]
    fn permanence_and_mount_failures_are_apart() {
        let io = |errno: i32| FsError::Io {
            op: "mkdir",
            path: "/x".into(),
            source: io::Error::from_raw_os_error(errno),
        };
        // EACCES, EPERM: permanent. EIO, ESTALE: the mount. ENOSPC: neither.
        for (err, permanent, mount) in [
            (io(13), true, false),
            (io(1), true, false),
            (io(5), false, true),
            (io(116), false, true),
            (io(28), false, false),
        ] {
            assert_eq!(
                (err.is_permanent(), err.is_mount_failure()),
                (permanent, mount),
                "{err}"
            );
        }
        let denied = FsError::PermissionDenied {
            doing: "creating",
            path: "/pv/ns/claim".into(),
            dir: "/pv/ns".into(),
            owner: 0,
            mode: 0o755,
            uid: 65532,
            gid: 65532,
            export: None,
        };
        assert!(denied.is_permanent() && !denied.is_mount_failure());
        assert_eq!(
            denied.to_string(),
            "permission denied creating /pv/ns/claim: /pv/ns is owned by uid 0 with mode 0755 \
             and this provisioner runs as uid 65532 (made by a client running as root, such as \
             nfs-subdir-external-provisioner); make the export writable by uid 65532 once: on \
             the NFS server run `chown -R 65532:65532 <the exported directory>` and export it \
             with all_squash,anonuid=65532,anongid=65532 (see the README, \"Taking over an \
             export made by nfs-subdir-external-provisioner\")"
        );
        assert!(
            denied
                .with_export("/srv/nfs/kp")
                .to_string()
                .contains("`chown -R 65532:65532 /srv/nfs/kp`")
        );
        let chown = FsError::ChownDenied {
            path: "/pv/a".into(),
            owner: Some(1000),
            group: None,
            uid: 65532,
        };
        assert!(chown.is_permanent());
        assert!(
            chown.to_string().contains("to uid 1000: only root may"),
            "{chown}"
        );
        let timeout = FsError::Timeout {
            op: "mkdir",
            path: "/pv/a".into(),
            timeout: Duration::from_secs(1),
        };
        assert!(!timeout.is_permanent() && timeout.is_mount_failure());
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
