//! Image transfer between two agents on loopback: real sockets, real mutual TLS, real stores.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod transfer_common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_agent::store::{Store, StoreError, Stores};
use ferry_agent::transfer::{NodeIdentity, PullSpec, Token, TransferError, pull};
use jiff::{SignedDuration, Timestamp};
use transfer_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gib_image_pulls_verified_and_resumes_after_cut_connections() {
    const GIB: u64 = 1 << 30;
    let (_tmp, source_store, target_store) = stores(4 * GIB);
    // 2 GiB in several files, with a nested directory, an odd size and an empty file.
    let files = [
        ("main/pages-1.img", GIB),
        ("main/pages-2.img", 768 * MIB),
        ("main/gpu/bo-0.img", 256 * MIB - 12_345),
        ("main/core-1.img", 12_345),
        ("main/empty.img", 0),
    ];
    let image = publish(&source_store, SOURCE_LOCATION, &files);
    assert_eq!(image.manifest.total_bytes(), 2 * GIB);
    let source = Source::start(source_store.clone()).await;

    // Straight pull, with progress reported up to the total.
    let last_progress = Arc::new(AtomicU64::new(0));
    let seen = last_progress.clone();
    let report = pull(
        &source.spec(),
        &source.target,
        &target_store,
        move |done, total| {
            assert!(done <= total);
            seen.store(done, Ordering::Relaxed);
        },
    )
    .await
    .unwrap();
    assert_eq!(report.digest, image.digest);
    assert_eq!(report.bytes_transferred, 2 * GIB);
    assert_eq!((report.resumes, report.bytes_resumed), (0, 0));
    assert_eq!(report.files, files.len());
    assert_eq!(last_progress.load(Ordering::Relaxed), 2 * GIB);
    let pulled = target_store.open_image(TARGET_LOCATION).unwrap();
    assert_eq!(pulled.digest, image.digest);
    assert_eq!(pulled.manifest_bytes, image.manifest_bytes);
    // The pull hashed every file as it arrived; spot-check one independently.
    let entry = pulled.entry("main/gpu/bo-0.img").unwrap();
    let (size, sha) =
        ferry_agent::store::hash_file(&pulled.file_path("main/gpu/bo-0.img").unwrap()).unwrap();
    assert_eq!((size, sha.as_str()), (entry.size, entry.sha256.as_str()));
    eprintln!(
        "2 GiB pull (debug build): {:.1} s, {:.0} MB/s",
        report.seconds,
        report.bytes_per_second / 1e6
    );
    // Pulling it again is a no-op.
    let again = pull_ok(&source, &source.spec(), &target_store).await;
    assert!(again.already_present);
    assert_eq!(again.bytes_transferred, 0);
    assert!(target_store.delete(TARGET_LOCATION).unwrap());

    // Through a proxy that cuts the first connection mid-way through the first file and the
    // second one in the second file: the pull resumes by offset and still verifies.
    let (endpoint, cut) =
        cutting_proxy(source.server.local_addr(), vec![300 * MIB, 900 * MIB]).await;
    let spec = PullSpec {
        endpoint,
        ..source.spec()
    };
    let report = pull_ok(&source, &spec, &target_store).await;
    assert_eq!(
        cut.load(Ordering::SeqCst),
        2,
        "the proxy cut both connections"
    );
    assert!(report.resumes >= 2, "{report:?}");
    assert!(report.bytes_resumed > 0, "{report:?}");
    // Nothing was received twice: a resume asks only for what is missing.
    assert_eq!(report.bytes_transferred, 2 * GIB, "{report:?}");
    assert_eq!(report.digest, image.digest);
    let pulled = target_store.open_image(TARGET_LOCATION).unwrap();
    assert_eq!(pulled.digest, image.digest);
    assert_intact(&source_store);
    source.server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_is_refused_and_nothing_is_published() {
    let (_tmp, source_store, target_store) = stores(64 * MIB);
    publish(&source_store, SOURCE_LOCATION, &[("f", 4 * MIB)]);
    let source = Source::start(source_store.clone()).await;
    let spec = PullSpec {
        token: Token::generate().unwrap(),
        ..source.spec()
    };
    let err = pull(&spec, &source.target, &target_store, |_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::Unauthorized(_)), "{err}");
    assert!(err.to_string().contains("invalid bearer token"), "{err}");
    assert_eq!(err.reason(), "TransferUnauthorized");
    // The message never carries a token.
    assert!(!err.to_string().contains(spec.token.expose_secret()));
    assert!(!err.to_string().contains(source.token.expose_secret()));
    assert!(!target_store.exists(TARGET_LOCATION).unwrap());
    assert!(target_store.list().unwrap().is_empty());
    assert_eq!(
        source.server.stats().auth_failures.load(Ordering::Relaxed),
        1
    );
    assert_eq!(
        source.server.stats().bytes_served.load(Ordering::Relaxed),
        0
    );

    // A request the source has no grant for gets the same answer (nothing to enumerate).
    let spec = PullSpec {
        request: "other".into(),
        ..source.spec()
    };
    let err = pull(&spec, &source.target, &target_store, |_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::Unauthorized(_)), "{err}");
    assert_intact(&source_store);
}

/// An image checkpointed into an allowed store other than the main one is served from there
/// when the grant names that store, and only then; a store the agent does not use is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_is_served_from_the_store_its_grant_names_and_only_an_agent_store() {
    let tmp = scratch(64 * MIB);
    let main = Store::open(tmp.path().join("main")).unwrap();
    let extra = Store::open(tmp.path().join("extra")).unwrap();
    let target_store = Store::open(tmp.path().join("target")).unwrap();
    publish(&extra, SOURCE_LOCATION, &[("f", MIB)]);
    let mut source =
        Source::start(Stores::new(main, vec![extra.root().to_path_buf()]).unwrap()).await;
    source.digest = extra.open_image(SOURCE_LOCATION).unwrap().digest;
    let grant = |store: Option<String>| ferry_agent::transfer::Grant {
        store,
        ..grant_for(&source.token, &source.target)
    };
    // The main store does not hold it.
    let err = pull(&source.spec(), &source.target, &target_store, |_, _| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no published image"), "{err}");
    // A path that is not one of the agent's stores.
    source
        .grants
        .insert(NS, REQUEST, grant(Some("/etc".into())));
    let err = pull(&source.spec(), &source.target, &target_store, |_, _| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("hostPath /etc is not an image store of this agent"),
        "{err}"
    );
    assert!(!target_store.exists(TARGET_LOCATION).unwrap());
    // The store it was written to.
    source
        .grants
        .insert(NS, REQUEST, grant(Some(extra.root().display().to_string())));
    let report = pull_ok(&source, &source.spec(), &target_store).await;
    assert_eq!(report.bytes_transferred, MIB, "{report:?}");
    target_store
        .open_image(TARGET_LOCATION)
        .unwrap()
        .verify()
        .unwrap();
    extra.open_image(SOURCE_LOCATION).unwrap().verify().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refused() {
    let (_tmp, source_store, target_store) = stores(64 * MIB);
    publish(&source_store, SOURCE_LOCATION, &[("f", MIB)]);
    let source = Source::start(source_store.clone()).await;
    source.grants.insert(
        NS,
        REQUEST,
        ferry_agent::transfer::Grant {
            expires_at: Timestamp::now() - SignedDuration::from_secs(1),
            ..grant_for(&source.token, &source.target)
        },
    );
    let err = pull(&source.spec(), &source.target, &target_store, |_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::Expired(_)), "{err}");
    assert!(err.to_string().contains("expired at"), "{err}");
    assert_eq!(err.reason(), "TransferTokenExpired");
    assert!(!err.is_transient());
    assert!(!target_store.exists(TARGET_LOCATION).unwrap());
    assert_intact(&source_store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_is_refused_by_the_digest() {
    let (_tmp, source_store, target_store) = stores(64 * MIB);
    let image = publish(
        &source_store,
        SOURCE_LOCATION,
        &[("a.img", 3 * MIB), ("b.img", 3 * MIB), ("c.img", 3 * MIB)],
    );
    // Flip one byte of b.img at the source after publishing: the source serves it as is.
    let victim = image.file_path("b.img").unwrap();
    let mut bytes = fs::read(&victim).unwrap();
    let before = bytes.clone();
    bytes[MIB as usize + 7] ^= 0x01;
    fs::write(&victim, &bytes).unwrap();

    let source = Source::start(source_store.clone()).await;
    let err = pull(&source.spec(), &source.target, &target_store, |_, _| {})
        .await
        .unwrap_err();
    match &err {
        TransferError::DigestMismatch { file, what, .. } => {
            assert_eq!(file, "b.img");
            assert_eq!(*what, "sha256");
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(err.to_string().contains("b.img"), "{err}");
    assert_eq!(err.reason(), "TransferDigestMismatch");
    // Nothing published, and the corrupt file is not kept for a resume.
    assert!(!target_store.exists(TARGET_LOCATION).unwrap());
    let partial = target_store
        .image_dir(TARGET_LOCATION)
        .map(|d| PathBuf::from(format!("{}.partial", d.display())))
        .unwrap();
    assert!(!partial.join("b.img").exists());
    // The source lost nothing: only the flipped file differs from its manifest, by that byte.
    let source_image = source_store.open_image(SOURCE_LOCATION).unwrap();
    let verify = source_image.verify().unwrap_err();
    assert!(
        matches!(&verify, StoreError::Mismatch { path, what: "sha256", .. } if path == "b.img"),
        "{verify}"
    );
    let now = fs::read(&victim).unwrap();
    let diffs: Vec<usize> = (0..now.len()).filter(|&i| now[i] != before[i]).collect();
    assert_eq!(diffs, vec![MIB as usize + 7]);
    for other in ["a.img", "c.img"] {
        let entry = source_image.entry(other).unwrap();
        let (size, sha) =
            ferry_agent::store::hash_file(&source_image.file_path(other).unwrap()).unwrap();
        assert_eq!((size, sha.as_str()), (entry.size, entry.sha256.as_str()));
    }
}

/// A small tmpfs mounted for the test, unmounted (and its directory removed) on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a {size} tmpfs for the full-disk test failed (the test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills the filesystem at `dir` with one file until ENOSPC.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = fs::File::create(&path).unwrap();
    let block = vec![0xa5u8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    // The last partial block may have been written; whatever fits is enough.
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_fails_clearly_keeps_the_partial_and_resumes() {
    let tmp = scratch(256 * MIB);
    let source_store = Store::open(tmp.path().join("source")).unwrap();
    let tmpfs = Tmpfs::mount("64m");
    let target_store = Store::open(tmpfs.path().join("store")).unwrap();

    // Too big to ever fit: refused before a byte is written.
    publish(&source_store, SOURCE_LOCATION, &[("big.img", 100 * MIB)]);
    let source = Source::start(source_store.clone()).await;
    let err = pull(&source.spec(), &source.target, &target_store, |_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::NoSpace { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("needs") && message.contains("free"),
        "{message}"
    );
    assert!(
        message.contains(&tmpfs.path().display().to_string()),
        "{message}"
    );
    assert_eq!(
        source.server.stats().bytes_served.load(Ordering::Relaxed) as usize,
        source_store
            .open_image(SOURCE_LOCATION)
            .unwrap()
            .manifest_bytes
            .len(),
        "only the manifest was sent"
    );
    assert_intact(&source_store);
    source.server.shutdown(Duration::from_secs(5)).await;
    source_store.delete(SOURCE_LOCATION).unwrap();
    target_store.delete(TARGET_LOCATION).unwrap();

    // Fits at the start, but the disk fills up mid-way (another writer takes the space).
    publish(
        &source_store,
        SOURCE_LOCATION,
        &[("a.img", 20 * MIB), ("b.img", 20 * MIB)],
    );
    let source = Source::start(source_store.clone()).await;
    let filler: Arc<std::sync::Mutex<Option<PathBuf>>> = Arc::default();
    let fill_at = filler.clone();
    let fill_dir = tmpfs.path().to_path_buf();
    let receiving = PathBuf::from(format!(
        "{}.partial/a.img",
        target_store.image_dir(TARGET_LOCATION).unwrap().display()
    ));
    let err = pull(
        &source.spec(),
        &source.target,
        &target_store,
        move |done, _| {
            let mut filled = fill_at.lock().unwrap();
            if filled.is_none() && done >= 4 * MIB {
                // Wait for the writer to have some of a.img on disk, then take all the space.
                for _ in 0..500 {
                    if fs::metadata(&receiving).map(|m| m.len()).unwrap_or(0) >= 2 * MIB {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                *filled = Some(fill(&fill_dir));
            }
        },
    )
    .await
    .unwrap_err();
    match &err {
        TransferError::NoSpace { fs, detail } => {
            assert_eq!(fs, &tmpfs.path().display().to_string());
            assert!(detail.contains("writing a.img"), "{detail}");
        }
        other => panic!("expected no space, got {other}"),
    }
    assert!(err.to_string().starts_with("no space left on "), "{err}");
    assert!(!target_store.exists(TARGET_LOCATION).unwrap());
    let partial = PathBuf::from(format!(
        "{}.partial",
        target_store.image_dir(TARGET_LOCATION).unwrap().display()
    ));
    let kept = fs::metadata(partial.join("a.img")).unwrap().len();
    assert!(kept >= 2 * MIB, "the partial file is kept ({kept} bytes)");

    // Space is back: the next pull resumes from what is on disk and verifies.
    fs::remove_file(filler.lock().unwrap().take().unwrap()).unwrap();
    let report = pull_ok(&source, &source.spec(), &target_store).await;
    assert!(report.bytes_resumed >= kept, "{report:?}");
    assert_eq!(
        report.bytes_transferred + report.bytes_resumed,
        40 * MIB,
        "{report:?}"
    );
    target_store
        .open_image(TARGET_LOCATION)
        .unwrap()
        .verify()
        .unwrap();
    assert_intact(&source_store);
    source.server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_other_than_the_pinned_one_is_refused() {
    let (_tmp, source_store, target_store) = stores(64 * MIB);
    publish(&source_store, SOURCE_LOCATION, &[("f", MIB)]);
    let source = Source::start(source_store.clone()).await;
    let spec = PullSpec {
        cert_sha256: NodeIdentity::generate().unwrap().fingerprint().to_string(),
        ..source.spec()
    };
    let err = pull(&spec, &source.target, &target_store, |_, _| {})
        .await
        .unwrap_err();
    match &err {
        TransferError::Tls { detail, .. } => {
            assert!(detail.contains("not the pinned"), "{detail}")
        }
        other => panic!("expected a TLS error, got {other}"),
    }
    assert_eq!(err.reason(), "TransferTlsFailed");
    let stats = source.server.stats();
    assert_eq!(
        stats.requests.load(Ordering::Relaxed),
        0,
        "no request got through"
    );
    assert!(!target_store.exists(TARGET_LOCATION).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_cannot_leave_the_image_or_reach_unlisted_files() {
    let tmp = scratch(64 * MIB);
    let source_store = Store::open(tmp.path().join("source")).unwrap();
    let image = publish(&source_store, SOURCE_LOCATION, &[("main/pages.img", MIB)]);
    // Files that must never be served: one beside the image, one inside it but not listed,
    // one outside the store.
    fs::write(tmp.path().join("source/team-a/secret"), b"SIBLING-CONTENT").unwrap();
    fs::write(image.dir.join("unlisted.img"), b"UNLISTED-CONTENT").unwrap();
    fs::write(tmp.path().join("outside"), b"OUTSIDE-CONTENT").unwrap();
    let source = Source::start(source_store.clone()).await;
    let token = source.token.expose_secret().to_string();
    let base = format!("/v1/images/{NS}/{REQUEST}");
    let served_before = source.server.stats().bytes_served.load(Ordering::Relaxed);

    for (path, want) in [
        (format!("{base}/files/../secret"), 400),
        (format!("{base}/files/../../../outside"), 400),
        (format!("{base}/files/%2e%2e/secret"), 400),
        (format!("{base}/files/%2E%2E%2F%2E%2E%2Foutside"), 400),
        (format!("{base}/files/main/..%2f..%2fsecret"), 400),
        (format!("{base}/files//etc/passwd"), 400),
        (format!("{base}/files/%2fetc%2fpasswd"), 400),
        (format!("/v1/images/{NS}/..%2f{REQUEST}/manifest"), 400),
        (format!("{base}/files/unlisted.img"), 404),
        (format!("{base}/files/manifest.json"), 404),
        (format!("{base}/files/main"), 404),
        (format!("{base}/nothing"), 404),
    ] {
        let (status, _, body) = raw_get(&source, &path, Some(&token), None).await;
        assert_eq!(status, want, "{path}: {}", String::from_utf8_lossy(&body));
        assert!(
            !body.windows(8).any(|w| w == b"-CONTENT"),
            "{path} leaked a file"
        );
    }
    assert_eq!(
        source.server.stats().bytes_served.load(Ordering::Relaxed),
        served_before,
        "no file byte was served"
    );

    // Missing token, malformed and out-of-range ranges; a valid range serves the tail.
    let file = format!("{base}/files/main/pages.img");
    let (status, code, body) = raw_get(&source, &file, None, None).await;
    assert_eq!((status, code.as_str()), (401, "unauthorized"));
    assert_eq!(
        String::from_utf8_lossy(&body).trim(),
        "missing bearer token"
    );
    let (status, code, _) = raw_get(
        &source,
        &file,
        Some(&token),
        Some(&format!("bytes={}-", MIB)),
    )
    .await;
    assert_eq!((status, code.as_str()), (416, "bad-range"));
    let (status, _, _) = raw_get(&source, &file, Some(&token), Some("bytes=0-10")).await;
    assert_eq!(status, 416);
    let (status, _, body) = raw_get(&source, &file, Some(&token), Some("bytes=1048000-")).await;
    assert_eq!(status, 206);
    let full = fs::read(image.file_path("main/pages.img").unwrap()).unwrap();
    assert_eq!(&body[..], &full[1_048_000..]);
    let (status, _, body) = raw_get(&source, &format!("{base}/manifest"), Some(&token), None).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], &image.manifest_bytes[..]);
    assert_intact(&source_store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_partials_are_checked_not_trusted() {
    let (_tmp, source_store, target_store) = stores(64 * MIB);
    let image = publish(
        &source_store,
        SOURCE_LOCATION,
        &[
            ("a.img", 2 * MIB),
            ("b.img", 2 * MIB),
            ("c.img", 2 * MIB),
            ("d.img", 2 * MIB),
        ],
    );
    // What an earlier attempt might have left: a good prefix, a complete but corrupt file,
    // a file longer than the manifest says, and a complete good file.
    let staging = target_store.resume(TARGET_LOCATION).unwrap();
    let source_bytes = |name: &str| fs::read(image.file_path(name).unwrap()).unwrap();
    fs::write(
        staging.file_path("a.img").unwrap(),
        &source_bytes("a.img")[..MIB as usize + 3],
    )
    .unwrap();
    let mut corrupt = source_bytes("b.img");
    corrupt[10] ^= 0xff;
    fs::write(staging.file_path("b.img").unwrap(), &corrupt).unwrap();
    let mut long = source_bytes("c.img");
    long.extend_from_slice(b"trailing");
    fs::write(staging.file_path("c.img").unwrap(), &long).unwrap();
    fs::write(staging.file_path("d.img").unwrap(), source_bytes("d.img")).unwrap();

    let source = Source::start(source_store.clone()).await;
    let report = pull_ok(&source, &source.spec(), &target_store).await;
    // a.img resumed from its prefix, d.img kept, b.img and c.img fetched again.
    assert_eq!(report.bytes_resumed, MIB + 3 + 2 * MIB, "{report:?}");
    assert_eq!(report.bytes_transferred, 8 * MIB - report.bytes_resumed);
    let pulled = target_store.open_image(TARGET_LOCATION).unwrap();
    pulled.verify().unwrap();
    assert_eq!(pulled.digest, image.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_the_logs() {
    let logs = captured_logs();
    let (_tmp, source_store, target_store) = stores(64 * MIB);
    publish(&source_store, SOURCE_LOCATION, &[("f", MIB)]);
    let source = Source::start(source_store.clone()).await;
    let wrong = Token::generate().unwrap();
    let err = pull(
        &PullSpec {
            token: wrong.clone(),
            ..source.spec()
        },
        &source.target,
        &target_store,
        |_, _| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TransferError::Unauthorized(_)));
    pull_ok(&source, &source.spec(), &target_store).await;
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(text.contains("transfer refused: bad token"), "{text}");
    assert!(text.contains("image pulled and verified"), "{text}");
    for secret in [source.token.expose_secret(), wrong.expose_secret()] {
        assert!(!text.contains(secret), "a token reached the logs");
    }
    // The header's value, as sent ("Bearer <hex>"); the refusal reasons say "bearer token".
    assert!(
        !text.contains("Bearer "),
        "an Authorization header reached the logs"
    );
}
