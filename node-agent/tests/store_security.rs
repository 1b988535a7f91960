//! The image store against issue #14's attacks on it, on real files: GC and foreign data
//! (finding 8: the store marker, `<namespace>/<request>` depth only, unparsable images moved
//! aside), symlinks planted in or swapped into an image (finding 10: `openat2` beneath the
//! root), and manifests whose sizes overflow (finding 10). Each test also runs the legitimate
//! path, so it fails if the guard refuses everything.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ferry_agent::store::{
    FileEntry, GcPolicy, Image, ImageKind, ImageMeta, ImageSource, MARKER_FILE, Manifest,
    QUARANTINE_DIR, Store, StoreError, Stores,
};
use jiff::{SignedDuration, Timestamp};

fn meta() -> ImageMeta {
    ImageMeta::new(
        ImageKind::Criu,
        ImageSource {
            node: "node-a".into(),
            namespace: "ns".into(),
            pod: "p".into(),
            containers: vec!["c".into()],
        },
    )
}

fn publish(store: &Store, location: &str, files: &[(&str, &[u8])]) -> Image {
    let staging = store.stage(location).unwrap();
    for (name, data) in files {
        fs::write(staging.file_path(name).unwrap(), data).unwrap();
    }
    let manifest = staging.build_manifest(meta()).unwrap();
    staging.publish(&manifest).unwrap()
}

/// Every file under `dir` with its contents (symlinks not followed), to compare before/after.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(base).unwrap().display().to_string();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                walk(base, &e.path(), out);
            } else if t.is_symlink() {
                out.insert(
                    rel,
                    fs::read_link(e.path()).unwrap().into_os_string().into_vec(),
                );
            } else {
                out.insert(rel, fs::read(e.path()).unwrap());
            }
        }
    }
    use std::os::unix::ffi::OsStringExt;
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// GC with a zero TTL and a zero quota, an hour from now: everything it may delete goes.
fn collect_everything(store: &Store) -> ferry_agent::store::GcReport {
    let policy = GcPolicy {
        ttl: Some(SignedDuration::ZERO),
        quota_bytes: Some(0),
    };
    let later = Timestamp::now() + SignedDuration::from_hours(1);
    store.gc(&policy, later, &HashSet::new()).unwrap()
}

#[test]
fn a_foreign_directory_is_refused_as_a_store_and_foreign_data_in_a_store_survives_gc() {
    let tmp = tempfile::tempdir().unwrap();

    // An allowed hostPath that holds someone else's data, with junk `manifest.json`s at the
    // image depth and deeper: refused as a store, nothing touched.
    let foreign = tmp.path().join("data");
    fs::create_dir_all(foreign.join("app/cache")).unwrap();
    fs::write(foreign.join("app/cache/manifest.json"), b"{not json").unwrap();
    fs::create_dir_all(foreign.join("app/deep/x/y")).unwrap();
    fs::write(foreign.join("app/deep/x/y/manifest.json"), b"junk").unwrap();
    fs::write(foreign.join("notes.txt"), b"keep me").unwrap();
    let before = tree(&foreign);
    let err = Store::open(&foreign).unwrap_err();
    assert!(matches!(&err, StoreError::ForeignDirectory { .. }), "{err}");
    assert!(err.to_string().contains(".ferry-store"), "{err}");
    let main = Store::open(tmp.path().join("main")).unwrap();
    let err = Stores::new(main.clone(), vec![foreign.clone()]).unwrap_err();
    assert!(matches!(err, StoreError::ForeignDirectory { .. }), "{err}");
    assert_eq!(tree(&foreign), before, "the foreign directory was changed");
    assert!(!foreign.join(MARKER_FILE).exists());

    // An empty directory is claimed: the marker is written and the store works.
    let allowed = tmp.path().join("allowed");
    fs::create_dir_all(&allowed).unwrap();
    let stores = Stores::new(main, vec![allowed.clone()]).unwrap();
    assert!(allowed.join(MARKER_FILE).is_file());
    let store = stores
        .for_host_path(Some(allowed.to_str().unwrap()))
        .unwrap();
    publish(&store, "ns/old", &[("c/pages-1.img", b"0123456789")]);

    // Someone puts their data into the store later: at the image depth without a manifest,
    // deeper with a junk one, beside the namespaces, and in a dot directory.
    fs::create_dir_all(allowed.join("other/deep/nested")).unwrap();
    fs::write(allowed.join("other/deep/nested/manifest.json"), b"junk").unwrap();
    fs::write(allowed.join("other/deep/nested/data.bin"), vec![7u8; 4096]).unwrap();
    fs::create_dir_all(allowed.join("ns/not-an-image")).unwrap();
    fs::write(allowed.join("ns/not-an-image/file"), b"x").unwrap();
    fs::write(allowed.join("README"), b"readme").unwrap();
    fs::create_dir_all(allowed.join(".hidden/a")).unwrap();
    fs::write(allowed.join(".hidden/a/manifest.json"), b"junk").unwrap();
    let foreign_files: Vec<&str> = vec![
        "other/deep/nested/manifest.json",
        "other/deep/nested/data.bin",
        "ns/not-an-image/file",
        "README",
        ".hidden/a/manifest.json",
    ];

    let report = collect_everything(&store);
    assert_eq!(report.deleted, vec!["ns/old".to_string()], "{report:?}");
    assert!(report.quarantined.is_empty(), "{report:?}");
    let after = tree(&allowed);
    for f in &foreign_files {
        assert!(after.contains_key(*f), "{f} was removed by GC: {after:?}");
    }
    assert!(!store.exists("ns/old").unwrap());

    // An older agent's store (images, no marker) is adopted: its images stay and are listed.
    let legacy = tmp.path().join("legacy");
    let old = Store::open(&legacy).unwrap();
    publish(&old, "ns/kept", &[("f", b"1")]);
    fs::remove_file(legacy.join(MARKER_FILE)).unwrap();
    let reopened = Store::open(&legacy).unwrap();
    assert!(legacy.join(MARKER_FILE).is_file());
    let listed: Vec<String> = reopened
        .list()
        .unwrap()
        .into_iter()
        .map(|e| e.location)
        .collect();
    assert_eq!(listed, vec!["ns/kept".to_string()]);
}

#[test]
fn gc_moves_an_unparsable_image_aside_instead_of_deleting_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    publish(&store, "ns/good", &[("f", b"good")]);
    let bad = publish(&store, "ns/bad", &[("c/pages-1.img", b"precious")]);
    fs::write(bad.dir.join("manifest.json"), b"{\"version\": 1, truncated").unwrap();
    let bad_files = tree(&bad.dir);

    // `list` leaves it out; GC moves it aside and deletes only what it can read.
    let listed: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|e| e.location)
        .collect();
    assert_eq!(listed, vec!["ns/good".to_string()]);
    let report = collect_everything(&store);
    assert_eq!(report.deleted, vec!["ns/good".to_string()], "{report:?}");
    assert_eq!(report.quarantined, vec!["ns/bad".to_string()], "{report:?}");
    assert!(
        !bad.dir.exists(),
        "the unparsable image is still at its location"
    );
    let quarantine = store.root().join(QUARANTINE_DIR);
    let moved: Vec<_> = fs::read_dir(&quarantine)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert!(
        moved[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("ns_bad@"),
        "{moved:?}"
    );
    assert_eq!(tree(&moved[0]), bad_files, "quarantined files changed");

    // The location is free again, and later rounds leave the quarantine alone.
    publish(&store, "ns/bad", &[("f", b"new")]);
    let report = collect_everything(&store);
    assert_eq!(report.deleted, vec!["ns/bad".to_string()]);
    assert!(report.quarantined.is_empty());
    assert_eq!(tree(&moved[0]), bad_files);

    // Locations cannot name the store's own directories.
    for reserved in [QUARANTINE_DIR, ".ferry-quarantine/x", ".ferry-store"] {
        assert!(
            matches!(store.delete(reserved), Err(StoreError::InvalidPath { .. })),
            "{reserved}"
        );
    }
    assert!(quarantine.is_dir());
}

#[test]
fn a_symlink_planted_in_an_image_or_a_parent_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir_all(outside.join("c")).unwrap();
    // Same size as the image's file, so only the symlink check can catch it.
    fs::write(outside.join("secret"), b"SECRET!!").unwrap();
    fs::write(outside.join("c/pages-1.img"), b"SECRET!!").unwrap();

    let image = publish(&store, "ns/req", &[("c/pages-1.img", b"inside!!")]);
    // The legitimate path: the image's own file opens and verifies.
    let mut read = String::new();
    use std::io::Read;
    image
        .open_file("c/pages-1.img")
        .unwrap()
        .read_to_string(&mut read)
        .unwrap();
    assert_eq!(read, "inside!!");
    image.verify().unwrap();

    // A file replaced by a symlink to a file outside.
    let file = image.dir.join("c/pages-1.img");
    fs::rename(&file, tmp.path().join("saved")).unwrap();
    symlink(outside.join("secret"), &file).unwrap();
    let err = image.open_file("c/pages-1.img").unwrap_err();
    assert!(matches!(err, StoreError::InvalidPath { .. }), "{err}");
    let err = image.verify().unwrap_err();
    assert!(matches!(err, StoreError::InvalidPath { .. }), "{err}");
    fs::remove_file(&file).unwrap();
    fs::rename(tmp.path().join("saved"), &file).unwrap();

    // A directory of the image replaced by a symlink to a directory outside.
    let dir = image.dir.join("c");
    fs::rename(&dir, tmp.path().join("saved-c")).unwrap();
    symlink(outside.join("c"), &dir).unwrap();
    let err = image.open_file("c/pages-1.img").unwrap_err();
    assert!(matches!(err, StoreError::InvalidPath { .. }), "{err}");
    fs::remove_file(&dir).unwrap();
    fs::rename(tmp.path().join("saved-c"), &dir).unwrap();
    image.verify().unwrap();

    // A parent (the namespace directory) replaced by a symlink to a look-alike image.
    let fake = tmp.path().join("fake-ns");
    fs::create_dir_all(&fake).unwrap();
    let ns = store.root().join("ns");
    fs::rename(&ns, tmp.path().join("saved-ns")).unwrap();
    symlink(&fake, &ns).unwrap();
    let copy = tree(&tmp.path().join("saved-ns"));
    for (rel, data) in &copy {
        let path = fake.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }
    assert!(matches!(
        store.open_image("ns/req"),
        Err(StoreError::InvalidPath { .. })
    ));
    let err = image.open_file("c/pages-1.img").unwrap_err();
    assert!(matches!(err, StoreError::InvalidPath { .. }), "{err}");
    fs::remove_file(&ns).unwrap();
    fs::rename(tmp.path().join("saved-ns"), &ns).unwrap();
    store.open_image("ns/req").unwrap().verify().unwrap();

    // A FIFO in an image is refused, not waited on.
    let fifo = image.dir.join("c/pipe");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let err = image.open_file("c/pipe").unwrap_err();
    assert!(matches!(err, StoreError::InvalidPath { .. }), "{err}");
}

#[test]
fn a_directory_swapped_for_a_symlink_mid_read_never_leads_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let image = publish(&store, "ns/req", &[("c/pages-1.img", b"inside!!")]);
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("pages-1.img"), b"SECRET!!").unwrap();
    // `c` and a symlink to the outside directory trade places atomically, over and over: a
    // check-then-open would sometimes pass the check on the directory and open through the
    // link.
    let link = image.dir.join("c-link");
    symlink(&outside, &link).unwrap();
    let real = image.dir.join("c");
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = std::thread::spawn({
        let stop = stop.clone();
        let (real, link) = (real.clone(), link.clone());
        move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &real,
                    rustix::fs::CWD,
                    &link,
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .unwrap();
                swaps += 1;
            }
            swaps
        }
    });
    let (mut inside, mut refused) = (0u32, 0u32);
    for _ in 0..3000 {
        match image.open_file("c/pages-1.img") {
            Ok(mut f) => {
                let mut s = String::new();
                use std::io::Read;
                f.read_to_string(&mut s).unwrap();
                assert_eq!(s, "inside!!", "read a file outside the store");
                inside += 1;
            }
            Err(StoreError::InvalidPath { .. }) => refused += 1,
            // Between the swaps `c` may be the link's old name only for an instant; ENOENT is
            // not possible with an exchange, so anything else is a bug.
            Err(e) => panic!("{e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 0 && inside + refused == 3000);
    eprintln!("{swaps} swaps: {inside} reads of the image's file, {refused} refused");
}

#[test]
fn manifests_whose_sizes_overflow_are_refused() {
    let entry = |path: &str, size: u64| FileEntry {
        path: path.into(),
        size,
        sha256: "0".repeat(64),
    };
    let manifest = |files| Manifest {
        version: 1,
        created_at: Timestamp::now(),
        meta: meta(),
        files,
    };
    // The legitimate path: large sizes that fit.
    let ok = manifest(vec![entry("a", 1 << 40), entry("b", (1 << 62) - 1)]);
    let parsed = Manifest::from_bytes("x", &ok.to_bytes()).unwrap();
    assert_eq!(parsed.total_bytes(), (1 << 40) + (1 << 62) - 1);
    for files in [
        vec![entry("a", u64::MAX), entry("b", 1)],
        vec![entry("a", i64::MAX as u64), entry("b", 1)],
        vec![entry("a", u64::MAX)],
    ] {
        let err = Manifest::from_bytes("x", &manifest(files).to_bytes()).unwrap_err();
        assert!(
            matches!(&err, StoreError::BadManifest { reason, .. } if reason.contains("add up")),
            "{err}"
        );
    }
}
