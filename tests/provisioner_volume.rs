//! The filesystem layer under the NFS mount, against the two things a unit test cannot show: a
//! tenant swapping a directory for a symlink while an operation runs, and an export laid out by
//! nfs-subdir-external-provisioner (root-owned directories) worked on by the unprivileged uid.
// Helpers outside `#[test]` functions are test code too (clippy.toml allows unwrap in tests).
#![allow(clippy::unwrap_used)]

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use kube_persist::provisioner::{
    plan::RelDir,
    volume::{Cleaned, DirPerms, Ensured, FsError, VolumeRoot},
};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};

fn rel(s: &str) -> RelDir {
    RelDir::parse(s).unwrap()
}

/// Swaps two names in `dir` (atomically, `RENAME_EXCHANGE`) over and over until stopped.
struct Swapper {
    stop: Arc<AtomicBool>,
    swaps: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Swapper {
    fn start(dir: &Path, a: &'static str, b: &'static str) -> Swapper {
        let fd = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicU64::new(0));
        let (thread_stop, thread_swaps) = (Arc::clone(&stop), Arc::clone(&swaps));
        let thread = std::thread::spawn(move || {
            while !thread_stop.load(Ordering::Relaxed) {
                rustix::fs::renameat_with(&fd, a, &fd, b, RenameFlags::EXCHANGE).unwrap();
                thread_swaps.fetch_add(1, Ordering::Relaxed);
            }
        });
        Swapper {
            stop,
            swaps,
            thread: Some(thread),
        }
    }

    /// Stops the thread; returns how many swaps it made.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.swaps.load(Ordering::Relaxed)
    }
}

impl Drop for Swapper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the directory outside the root must still look like; `Err` says what changed.
fn outside_untouched(outside: &Path) -> Result<(), String> {
    let names: Vec<String> = fs::read_dir(outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    if names != ["claim"] {
        return Err(format!(
            "entries of the outside directory are now {names:?}"
        ));
    }
    let meta = fs::symlink_metadata(outside.join("claim")).unwrap();
    if meta.permissions().mode() & 0o7777 != 0o751 {
        return Err(format!(
            "outside/claim was chmodded to {:o}",
            meta.permissions().mode() & 0o7777
        ));
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(format!("outside/claim was chowned to uid {}", meta.uid()));
    }
    if !outside.join("claim/keep").exists() {
        return Err("outside/claim/keep was removed".into());
    }
    Ok(())
}

/// A tenant flips `ns` between the real directory and a symlink to a directory outside the root
/// (which has a `claim` of its own) while the provisioner creates, archives and removes
/// `ns/claim`. Whatever interleaving happens, nothing outside the root may be chmodded, chowned,
/// renamed or removed. Each operation either works inside the root or fails.
#[test]
fn a_symlink_swapped_in_mid_operation_never_leads_outside_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(root.join("ns/claim")).unwrap();
    fs::write(root.join("ns/claim/keep"), b"inside").unwrap();
    fs::create_dir_all(outside.join("claim")).unwrap();
    fs::write(outside.join("claim/keep"), b"outside").unwrap();
    fs::set_permissions(outside.join("claim"), fs::Permissions::from_mode(0o751)).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("ns-swap")).unwrap();
    // The real `ns`, wherever its name currently points: the test repairs through this handle.
    let ns = rustix::fs::open(
        root.join("ns"),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    let restore = |ns: &rustix::fd::OwnedFd| {
        match rustix::fs::mkdirat(ns, "claim", Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => panic!("mkdir claim: {e}"),
        }
        let claim = rustix::fs::openat(
            ns,
            "claim",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let keep = rustix::fs::openat(
            &claim,
            "keep",
            OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        drop(keep);
    };
    let as_root = rustix::process::geteuid().is_root();
    let perms = DirPerms {
        mode: 0o700,
        // Root can chown: give the target away so a chown through the symlink would show.
        uid: as_root.then_some(12345),
        gid: as_root.then_some(12345),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let volumes = VolumeRoot::new(root.clone(), Duration::from_secs(10), ".probe");

    let swapper = Swapper::start(&root, "ns", "ns-swap");
    let started = Instant::now();
    let (mut worked, mut refused, mut rounds) = (0u32, 0u32, 0u32);
    let mut escaped = None;
    while started.elapsed() < Duration::from_secs(2) && escaped.is_none() {
        rounds += 1;
        for op in ["ensure_dir", "archive", "remove_all"] {
            let outcome = rt.block_on(async {
                match op {
                    "ensure_dir" => volumes
                        .ensure_dir(&rel("ns/claim"), perms)
                        .await
                        .map(|_| ()),
                    "archive" => {
                        let names = ["archived-claim".to_owned()];
                        let archived = volumes.archive(&rel("ns/claim"), &names).await?;
                        if archived == Cleaned::Archived("archived-claim".into()) {
                            // Fails when the archive went elsewhere; the check below shows where.
                            let _ = rustix::fs::renameat(&ns, "archived-claim", &ns, "claim");
                        }
                        Ok(())
                    }
                    _ => volumes.remove_all(&rel("ns/claim")).await.map(|_| ()),
                }
            });
            match outcome {
                Ok(()) => worked += 1,
                Err(_) => refused += 1,
            }
            restore(&ns);
            if let Err(what) = outside_untouched(&outside) {
                escaped = Some(format!("{op} in round {rounds}: {what}"));
                break;
            }
        }
        // Undo anything the round did inside, through the handle.
        let _ = rustix::fs::unlinkat(&ns, "archived-claim", AtFlags::REMOVEDIR);
    }
    let swaps = swapper.stop();
    assert_eq!(
        escaped, None,
        "an operation followed the swapped-in symlink"
    );
    assert!(swaps > 100, "the swapper barely ran ({swaps} swaps)");
    assert!(
        worked > 0 && refused > 0,
        "{rounds} rounds: {worked} operations worked, {refused} refused; both should happen"
    );
}

/// The same race on the leaf: `ns/claim` flips between the real directory and a symlink to a
/// directory outside the root while the provisioner sets its mode and owner. The outside
/// directory's mode and owner must never change.
#[test]
fn a_leaf_swapped_for_a_symlink_is_never_chmodded_through() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(root.join("ns/claim")).unwrap();
    fs::create_dir_all(outside.join("claim")).unwrap();
    fs::write(outside.join("claim/keep"), b"outside").unwrap();
    fs::set_permissions(outside.join("claim"), fs::Permissions::from_mode(0o751)).unwrap();
    std::os::unix::fs::symlink(outside.join("claim"), root.join("ns/claim-swap")).unwrap();
    let as_root = rustix::process::geteuid().is_root();
    let perms = DirPerms {
        mode: 0o700,
        uid: as_root.then_some(12345),
        gid: as_root.then_some(12345),
    };

    let swapper = Swapper::start(&root.join("ns"), "claim", "claim-swap");
    let started = Instant::now();
    let (mut worked, mut refused) = (0u32, 0u32);
    let mut escaped = None;
    while started.elapsed() < Duration::from_secs(1) && escaped.is_none() {
        match kube_persist::provisioner::volume::ensure_dir_sync(&root, &rel("ns/claim"), perms) {
            Ok(_) => worked += 1,
            Err(_) => refused += 1,
        }
        escaped = outside_untouched(&outside).err();
    }
    let swaps = swapper.stop();
    assert_eq!(escaped, None, "ensure_dir followed the swapped-in symlink");
    assert!(swaps > 100, "the swapper barely ran ({swaps} swaps)");
    assert!(
        worked > 0 && refused > 0,
        "{worked} calls worked, {refused} refused; both should happen"
    );
}

/// The uid kube-persist's image runs as.
const UNPRIVILEGED: u32 = 65532;

/// Runs `f` on a new thread whose credentials are uid and gid 65532 with no supplementary
/// groups. Linux credentials belong to a thread, so the rest of the test process stays root.
fn as_unprivileged<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        rustix::thread::set_thread_groups(&[]).unwrap();
        let gid = rustix::process::Gid::from_raw(UNPRIVILEGED);
        rustix::thread::set_thread_res_gid(gid, gid, gid).unwrap();
        let uid = rustix::process::Uid::from_raw(UNPRIVILEGED);
        rustix::thread::set_thread_res_uid(uid, uid, uid).unwrap();
        assert_eq!(rustix::process::geteuid().as_raw(), UNPRIVILEGED);
        f()
    })
    .join()
    .unwrap()
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// `chown -R uid:uid path`, without following symlinks.
fn chown_tree(path: &Path, uid: u32) {
    chown(path, uid);
    if fs::symlink_metadata(path).unwrap().is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid);
        }
    }
}

/// An export as nfs-subdir-external-provisioner leaves it. It runs as root with umask 022 and
/// calls `MkdirAll(dir, 0777)` then `Chmod(dir, 0777)`: the export and `pathPattern` parents are
/// `owner` (root, or nobody under root_squash) with mode 0755, volumes `owner` with mode 0777.
/// Pods running as uid 1000 wrote into the volumes, one a directory of its own. `ours` is a
/// `pathPattern` parent already given to 65532 (the partial fix the README describes).
fn upstream_export(root: &Path, owner: u32) {
    fs::create_dir_all(root.join("ns/claim")).unwrap();
    fs::create_dir_all(root.join("default-data-pvc-1/cache")).unwrap();
    fs::create_dir_all(root.join("ours/claim/cache")).unwrap();
    fs::write(root.join("ns/claim/data"), b"x").unwrap();
    fs::write(root.join("default-data-pvc-1/data"), b"x").unwrap();
    fs::write(root.join("default-data-pvc-1/cache/entry"), b"x").unwrap();
    fs::write(root.join("ours/claim/cache/entry"), b"x").unwrap();
    for (path, uid, mode) in [
        ("", owner, 0o755),
        ("ns", owner, 0o755),
        ("ns/claim", owner, 0o777),
        ("ns/claim/data", 1000, 0o644),
        ("default-data-pvc-1", owner, 0o777),
        ("default-data-pvc-1/data", 1000, 0o644),
        ("default-data-pvc-1/cache", 1000, 0o755),
        ("default-data-pvc-1/cache/entry", 1000, 0o644),
        ("ours", UNPRIVILEGED, 0o755),
        ("ours/claim", owner, 0o777),
        ("ours/claim/cache", 1000, 0o755),
        ("ours/claim/cache/entry", 1000, 0o644),
    ] {
        let path = root.join(path);
        chown(&path, uid);
        chmod(&path, mode);
    }
}

fn perms(mode: u32) -> DirPerms {
    DirPerms {
        mode,
        uid: None,
        gid: None,
    }
}

/// Checks a permission error: permanent, not the mount's fault, blaming `dir` (owned by `owner`
/// with `mode`), and saying what to do.
fn assert_denied(err: &FsError, doing: &str, dir: &Path, owner: u32, mode: u32, fix: &[&str]) {
    let FsError::PermissionDenied {
        doing: got_doing,
        dir: got_dir,
        owner: got_owner,
        mode: got_mode,
        ..
    } = err
    else {
        panic!("expected a permission error, got: {err}");
    };
    assert_eq!(
        (*got_doing, got_dir.as_str(), *got_owner, *got_mode),
        (doing, dir.to_str().unwrap(), owner, mode),
        "{err}"
    );
    assert!(err.is_permanent(), "{err}");
    assert!(!err.is_mount_failure(), "{err}");
    assert_eq!(err.metric_reason(), "permission_denied");
    let message = err.to_string();
    for part in fix {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
}

/// Giving a new directory away needs root: refused, permanently, and nothing is left behind.
fn assert_chown_refused(root: &Path) {
    let someone_else = DirPerms {
        mode: 0o750,
        uid: Some(1000),
        gid: None,
    };
    let err =
        kube_persist::provisioner::volume::ensure_dir_sync(root, &rel("given/away"), someone_else)
            .unwrap_err();
    assert!(matches!(err, FsError::ChownDenied { .. }), "{err}");
    assert!(err.is_permanent(), "{err}");
    assert!(err.to_string().contains("remove `uid` and `gid`"), "{err}");
    assert!(root.join("given").is_dir() && !root.join("given/away").exists());
}

/// What uid 65532 can and cannot do in an export nfs-subdir-external-provisioner made, with a
/// message naming the directory in the way and the fix; and that the fix (everything owned by
/// 65532, as `chown -R` plus an all_squash export leave it) makes every operation work.
/// Needs root to lay out other users' directories and to switch a thread's uid; as any other
/// user it checks the same error on a directory this user may not write.
#[test]
fn an_export_made_by_a_root_provisioner_gives_permanent_errors_with_the_fix() {
    if !rustix::process::geteuid().is_root() {
        let tmp = tempfile::tempdir().unwrap();
        let locked = tmp.path().join("locked");
        fs::create_dir(&locked).unwrap();
        chmod(&locked, 0o555);
        let err = kube_persist::provisioner::volume::ensure_dir_sync(
            tmp.path(),
            &rel("locked/claim"),
            perms(0o777),
        )
        .unwrap_err();
        let me = rustix::process::geteuid().as_raw();
        assert_denied(&err, "creating", &locked, me, 0o555, &["chmod u+rwx"]);
        chmod(&locked, 0o755);
        assert_chown_refused(tmp.path());
        return;
    }
    for (owner, who) in [(0, "running as root"), (65534, "nobody")] {
        let tmp = tempfile::tempdir().unwrap();
        chmod(tmp.path(), 0o755);
        let root = tmp.path().join("export");
        upstream_export(&root, owner);
        let volumes = VolumeRoot::new(root.clone(), Duration::from_secs(10), ".probe")
            .with_export("/srv/nfs");
        let fix = [
            who,
            "runs as uid 65532",
            "`chown -R 65532:65532 /srv/nfs`",
            "all_squash,anonuid=65532,anongid=65532",
            "Taking over an export made by nfs-subdir-external-provisioner",
        ];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (ours, results) = as_unprivileged(move || {
            let results = rt.block_on(async {
                [
                    volumes.ensure_dir(&rel("ns/claim"), perms(0o777)).await,
                    volumes.ensure_dir(&rel("ns/claim"), perms(0o750)).await,
                    volumes.ensure_dir(&rel("ns/new-claim"), perms(0o777)).await,
                    volumes.ensure_dir(&rel("new-ns/claim"), perms(0o777)).await,
                    volumes
                        .archive(&rel("ns/claim"), &["archived-claim".to_owned()])
                        .await
                        .map(|_| Ensured::Existed),
                    volumes
                        .remove_all(&rel("default-data-pvc-1"))
                        .await
                        .map(|_| Ensured::Existed),
                    volumes
                        .remove_all(&rel("ours/claim"))
                        .await
                        .map(|_| Ensured::Existed),
                    volumes.probe().await.map(|()| Ensured::Existed),
                ]
            });
            (rustix::process::geteuid().as_raw(), results)
        });
        assert_eq!(ours, UNPRIVILEGED);
        let [
            reuse,
            chmod_other,
            create_in_ns,
            create_at_root,
            archive,
            remove,
            remove_in_ours,
            probe,
        ] = results;
        // An existing volume with the mode asked for is reused as it is.
        assert_eq!(reuse.unwrap(), Ensured::Existed);
        // Anything that changes a directory of root's (or nobody's) is refused, and says why.
        let claim = root.join("ns/claim");
        assert_denied(
            &chmod_other.unwrap_err(),
            "changing the mode of",
            &claim,
            owner,
            0o777,
            &fix,
        );
        let ns = root.join("ns");
        assert_denied(
            &create_in_ns.unwrap_err(),
            "creating",
            &ns,
            owner,
            0o755,
            &fix,
        );
        assert_denied(
            &create_at_root.unwrap_err(),
            "creating",
            &root,
            owner,
            0o755,
            &fix,
        );
        assert_denied(&archive.unwrap_err(), "creating", &ns, owner, 0o755, &fix);
        // A volume in a directory it may not write is refused before anything in it is removed.
        let volume = root.join("default-data-pvc-1");
        assert_denied(&remove.unwrap_err(), "removing", &root, owner, 0o755, &fix);
        assert!(volume.join("data").exists() && volume.join("cache/entry").exists());
        // Where it may, the pods' own directory (uid 1000, 0755) still cannot be emptied.
        let cache = root.join("ours/claim/cache");
        assert_denied(
            &remove_in_ours.unwrap_err(),
            "removing",
            &cache,
            1000,
            0o755,
            &fix[1..],
        );
        assert_denied(&probe.unwrap_err(), "writing", &root, owner, 0o755, &fix);
        assert!(claim.join("data").exists() && cache.join("entry").exists());

        // The one-time fix: everything owned by 65532.
        chown_tree(&root, UNPRIVILEGED);
        let volumes = VolumeRoot::new(root.clone(), Duration::from_secs(10), ".probe");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let results = as_unprivileged(move || {
            rt.block_on(async {
                [
                    volumes
                        .ensure_dir(&rel("ns/claim"), perms(0o750))
                        .await
                        .map(|_| None),
                    volumes
                        .ensure_dir(&rel("ns/new-claim"), perms(0o777))
                        .await
                        .map(|_| None),
                    volumes
                        .ensure_dir(&rel("new-ns/claim"), perms(0o777))
                        .await
                        .map(|_| None),
                    volumes
                        .archive(&rel("ns/claim"), &["archived-claim".to_owned()])
                        .await
                        .map(Some),
                    volumes
                        .remove_all(&rel("default-data-pvc-1"))
                        .await
                        .map(Some),
                    volumes.remove_all(&rel("ours/claim")).await.map(Some),
                    volumes.probe().await.map(|()| None),
                ]
            })
        });
        for r in &results {
            assert!(r.is_ok(), "{r:?}");
        }
        let export = root.clone();
        as_unprivileged(move || assert_chown_refused(&export));
        assert!(root.join("ns/archived-claim/data").exists());
        assert!(root.join("new-ns/claim").is_dir() && root.join("ns/new-claim").is_dir());
        assert!(!root.join("default-data-pvc-1").exists() && !root.join("ours/claim").exists());
    }
}
