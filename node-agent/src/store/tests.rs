//! The store's scenarios across its modules: publish, verify, path safety against symlinks,
//! manifests from elsewhere, and GC (one pass, and the periodic loop).

use std::collections::HashSet;
use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::*;

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

#[test]
fn publish_writes_a_manifest_and_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let image = publish(
        &store,
        "ns/req",
        &[("c/pages-1.img", b"hello"), ("c/inventory.img", b"x")],
    );
    assert_eq!(image.manifest.files.len(), 2);
    assert_eq!(image.manifest.files[0].path, "c/inventory.img");
    assert_eq!(image.manifest.files[1].sha256, sha256_hex(b"hello"));
    assert!(!tmp.path().join("ns/req.partial").exists());
    let reopened = store.open_image("ns/req").unwrap();
    assert_eq!(reopened.digest, image.digest);
    assert_eq!(reopened.manifest, image.manifest);
    reopened.verify().unwrap();

    assert!(matches!(
        store.stage("ns/req"),
        Err(StoreError::AlreadyExists(_))
    ));
    // A second staging of the same location racing past the check still cannot replace it.
    let staging = Staging {
        location: "ns/req".into(),
        root: tmp.path().canonicalize().unwrap(),
        target: tmp.path().canonicalize().unwrap().join("ns/req"),
        partial: tmp.path().canonicalize().unwrap().join("ns/req.partial"),
    };
    fs::create_dir_all(staging.dir()).unwrap();
    let empty = staging.build_manifest(meta()).unwrap();
    assert!(matches!(
        staging.publish(&empty),
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(
        fs::read(tmp.path().join("ns/req/c/pages-1.img")).unwrap(),
        b"hello"
    );
}

#[test]
fn verify_catches_a_flipped_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let image = publish(&store, "i", &[("f", b"abcdef")]);
    fs::write(image.dir.join("f"), b"abcdeF").unwrap();
    let err = store.open_image("i").unwrap().verify().unwrap_err();
    assert!(
        matches!(err, StoreError::Mismatch { what: "sha256", .. }),
        "{err}"
    );
}

#[test]
fn publish_refuses_files_the_manifest_does_not_list() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let staging = store.stage("i").unwrap();
    fs::write(staging.file_path("a").unwrap(), b"1").unwrap();
    let manifest = staging.build_manifest(meta()).unwrap();
    fs::write(staging.file_path("b").unwrap(), b"2").unwrap();
    assert!(matches!(
        staging.publish(&manifest),
        Err(StoreError::BadManifest { .. })
    ));
    assert!(!store.exists("i").unwrap());
}

#[test]
fn symlinks_out_of_the_store_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    std::os::unix::fs::symlink(outside.path(), store.root().join("ns")).unwrap();
    assert!(matches!(
        store.stage("ns/req"),
        Err(StoreError::InvalidPath { .. })
    ));
    assert!(matches!(
        store.open_image("ns/req"),
        Err(StoreError::InvalidPath { .. })
    ));
    assert!(matches!(
        store.delete("ns/req"),
        Err(StoreError::InvalidPath { .. })
    ));
    let staging = store.stage("ok").unwrap();
    std::os::unix::fs::symlink(outside.path(), staging.dir().join("link")).unwrap();
    assert!(matches!(
        staging.file_path("link/x"),
        Err(StoreError::InvalidPath { .. })
    ));
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn manifests_from_elsewhere_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let mut manifest = publish(&store, "i", &[("f", b"1")]).manifest;
    manifest.files[0].path = "../../etc/passwd".into();
    assert!(matches!(
        Manifest::from_bytes("x", &manifest.to_bytes()),
        Err(StoreError::InvalidPath { .. })
    ));
    manifest.files[0].path = "f".into();
    manifest.version = 2;
    assert!(matches!(
        Manifest::from_bytes("x", &manifest.to_bytes()),
        Err(StoreError::BadManifest { .. })
    ));
}

#[test]
fn gc_by_ttl_and_quota_spares_images_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    for (i, name) in ["a/1", "a/2", "b/3"].iter().enumerate() {
        publish(&store, name, &[("f", &vec![b'x'; 100 * (i + 1)])]);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let _partial = store.resume("c/4").unwrap();
    let entries = store.list().unwrap();
    assert_eq!(entries.len(), 4, "{entries:?}");

    // Quota 450 (600 B stored): the oldest (a/1, 100 B) would go first but is in use, so a/2 goes.
    let in_use = HashSet::from(["a/1".to_string()]);
    let policy = GcPolicy {
        ttl: None,
        quota_bytes: Some(450),
    };
    let report = store.gc(&policy, Timestamp::now(), &in_use).unwrap();
    assert_eq!(report.deleted, vec!["a/2".to_string()]);
    assert_eq!(report.remaining_bytes, 400);
    assert!(store.exists("a/1").unwrap() && store.exists("b/3").unwrap());

    // TTL: everything is older than an hour from an hour and a second from now.
    let later = Timestamp::now() + SignedDuration::from_secs(3601);
    let policy = GcPolicy {
        ttl: Some(SignedDuration::from_hours(1)),
        quota_bytes: None,
    };
    let report = store.gc(&policy, later, &HashSet::new()).unwrap();
    assert_eq!(report.deleted.len(), 3, "{report:?}");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn gc_spares_images_held_by_a_task_or_served_a_moment_ago() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    for name in ["held/1", "served/2", "idle/3"] {
        publish(&store, name, &[("f", b"0123456789")]);
    }
    // Another Store value on the same root (the worker opens one per task) holds it.
    let hold = Store::open(tmp.path()).unwrap().hold("held/1").unwrap();
    store.touch("served/2").unwrap();
    let policy = GcPolicy {
        ttl: Some(SignedDuration::from_hours(1)),
        quota_bytes: Some(0),
    };
    let later = Timestamp::now() + SignedDuration::from_hours(2);
    let report = store.gc(&policy, later, &HashSet::new()).unwrap();
    assert_eq!(report.deleted, vec!["idle/3".to_string()]);
    drop(hold);
    // Released a moment ago still counts as recently used; the served one too.
    let report = store.gc(&policy, later, &HashSet::new()).unwrap();
    assert!(report.deleted.is_empty(), "{report:?}");
    assert!(store.exists("held/1").unwrap() && store.exists("served/2").unwrap());
}

#[tokio::test]
async fn the_gc_loop_collects_each_round_reports_and_follows_up_until_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    publish(&store, "old/1", &[("f", b"0123456789")]);
    let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
    let follow_ups = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let gc = GcLoop {
        stores: Stores::from(store.clone()),
        // Everything published before `now` is past a zero TTL.
        policy: GcPolicy {
            ttl: Some(SignedDuration::ZERO),
            quota_bytes: None,
        },
        every: Duration::from_millis(10),
        on_report: Some(Arc::new({
            let reports = reports.clone();
            move |root: &str, r: &GcReport| {
                reports
                    .lock()
                    .unwrap()
                    .push((root.to_string(), r.deleted.clone()))
            }
        })),
        follow_up: Some(Arc::new({
            let follow_ups = follow_ups.clone();
            move |stores: &Stores| {
                assert_eq!(stores.all().count(), 1);
                follow_ups.fetch_add(1, Ordering::SeqCst);
            }
        })),
    };
    let task = tokio::spawn(gc.run(stop_rx));
    tokio::time::timeout(Duration::from_secs(10), async {
        while follow_ups.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    assert!(!store.exists("old/1").unwrap());
    let reports = reports.lock().unwrap();
    let root = store.root().display().to_string();
    assert_eq!(reports[0], (root.clone(), vec!["old/1".to_string()]));
    assert!(reports[1..].iter().all(|(r, d)| *r == root && d.is_empty()));
}
