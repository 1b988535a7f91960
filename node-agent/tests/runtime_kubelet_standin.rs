//! Path (a) against a **stand-in kubelet**: a local HTTPS server (rustls, client certificates
//! required, like the kubelet's x509 authn) that answers `POST /checkpoint/...` the way the
//! kubelet does and leaves an archive in its "checkpoints dir". Real kubelets are exercised by
//! the e2e suite; this checks the agent's request, TLS client auth, answer parsing and the
//! archive's move into the image.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry_agent::runtime::RuntimeError;
use ferry_agent::runtime::checkpoint::{CheckpointJob, Checkpointer, ContainerTarget};
use ferry_agent::runtime::kubelet::KubeletApi;
use ferry_agent::store::{ImageKind, ImageSource, Store};
use ferry_api::stats::{GpuVendor, Operation, PluginStats};
use http_body_util::Full;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
    other_ca_client: (String, String),
}

fn pki() -> Pki {
    let issue = |issuer: &Issuer<'_, KeyPair>, names: Vec<String>, usage| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let ca = |cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        (cert.pem(), Issuer::new(p, key))
    };
    let (ca_pem, issuer) = ca("stand-in kubelet CA");
    let (_, other) = ca("some other CA");
    Pki {
        ca_pem,
        server: issue(
            &issuer,
            vec!["localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        client: issue(
            &issuer,
            vec!["ferry-agent".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
        other_ca_client: issue(
            &other,
            vec!["intruder".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
    }
}

/// A checkpoint archive like the kubelet's: a tar with `checkpoint/` (CRIU images; for "app"
/// with ferry's dump stats, as when the plugin ran in the kubelet's CRIU) and `config.dump`.
fn write_archive(path: &std::path::Path, container: &str) {
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("checkpoint")).unwrap();
    std::fs::write(src.path().join("checkpoint/pages-1.img"), container).unwrap();
    std::fs::write(src.path().join("config.dump"), b"{}").unwrap();
    if container == "app" {
        let stats = PluginStats::new(Operation::Dump, GpuVendor::Sim);
        std::fs::write(
            src.path()
                .join("checkpoint")
                .join(ferry_api::stats::DUMP_STATS_FILE),
            stats.to_json(),
        )
        .unwrap();
    }
    let st = std::process::Command::new("tar")
        .arg("-cf")
        .arg(path)
        .arg("-C")
        .arg(src.path())
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success(), "tar failed");
}

/// What the stand-in saw.
#[derive(Default, Debug)]
struct Seen {
    requests: Vec<(String, String)>,
}

/// Starts the stand-in kubelet on 127.0.0.1; it writes `checkpoint-<pod>_<ns>-<container>-…`
/// archives into `dir` and answers with their *host* path under /var/lib/kubelet/checkpoints.
fn stand_in_kubelet(p: &Pki, dir: PathBuf, seen: Arc<Mutex<Seen>>) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(p.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(p.server.0.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(p.server.1.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Ok(tls) = acceptor.accept(tcp).await else {
                    continue; // a client without an accepted cert
                };
                let dir = dir.clone();
                let seen = seen.clone();
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let dir = dir.clone();
                        let seen = seen.clone();
                        async move {
                            let path = req.uri().path_and_query().unwrap().to_string();
                            seen.lock()
                                .unwrap()
                                .requests
                                .push((req.method().to_string(), path.clone()));
                            let parts: Vec<&str> = req.uri().path().split('/').collect();
                            let resp = match (req.method(), parts.as_slice()) {
                                (&hyper::Method::POST, ["", "checkpoint", ns, pod, container]) => {
                                    let name = format!(
                                        "checkpoint-{pod}_{ns}-{container}-2026-11-26T04:00:00Z.tar"
                                    );
                                    write_archive(&dir.join(&name), container);
                                    let body = serde_json::json!({
                                        "items": [format!("/var/lib/kubelet/checkpoints/{name}")]
                                    });
                                    hyper::Response::new(Full::new(Bytes::from(body.to_string())))
                                }
                                _ => {
                                    let mut r = hyper::Response::new(Full::new(Bytes::from(
                                        "404 page not found",
                                    )));
                                    *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                                    r
                                }
                            };
                            Ok::<_, Infallible>(resp)
                        }
                    },
                );
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
    });
    addr
}

#[test]
fn stand_in_kubelet_checkpoint_api_archives_move_into_the_image() {
    let p = pki();
    let tmp = tempfile::tempdir().unwrap();
    let kubelet_dir = tmp.path().join("kubelet-checkpoints");
    std::fs::create_dir_all(&kubelet_dir).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let addr = stand_in_kubelet(&p, kubelet_dir.clone(), seen.clone());

    let tls = KubeletApi::tls_config(
        p.ca_pem.as_bytes(),
        Some((p.client.0.as_bytes(), p.client.1.as_bytes())),
    )
    .unwrap();
    let mut api = KubeletApi::new(&addr, "localhost", tls);
    api.local_checkpoints_dir = kubelet_dir.clone();

    let store = Store::open(tmp.path().join("store")).unwrap();
    let staging = store.stage("shop/web-0/ckpt").unwrap();
    let mut job = CheckpointJob::new(
        ImageSource {
            node: "node-a".into(),
            namespace: "shop".into(),
            pod: "web-0".into(),
            containers: vec![],
        },
        vec![
            ContainerTarget::Kubelet { name: "app".into() },
            ContainerTarget::Kubelet {
                name: "sidecar".into(),
            },
        ],
    );
    job.timeout = Duration::from_secs(90);
    let out = api
        .checkpoint(&job, &staging)
        .expect("checkpoint via the stand-in");

    assert_eq!(
        seen.lock().unwrap().requests,
        [
            (
                "POST".to_string(),
                "/checkpoint/shop/web-0/app?timeout=90".to_string()
            ),
            (
                "POST".to_string(),
                "/checkpoint/shop/web-0/sidecar?timeout=90".to_string()
            ),
        ]
    );
    assert_eq!(out.meta.kind, ImageKind::CheckpointArchive);
    assert_eq!(out.meta.source.containers, ["app", "sidecar"]);
    assert!(
        out.still_running,
        "the kubelet API always leaves the pod running"
    );
    // The archives left the kubelet's dir and are the image's files.
    assert_eq!(std::fs::read_dir(&kubelet_dir).unwrap().count(), 0);
    assert_eq!(
        out.plugin_stats.as_ref().map(|st| st.vendor),
        Some(GpuVendor::Sim)
    );
    assert!(out.containers[1].plugin_stats.is_none());
    let manifest = staging.build_manifest(out.meta).unwrap();
    let files: Vec<_> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(files, ["app.tar", "sidecar.tar"]);
    let manifest_vendor = manifest.meta.gpu_vendor;
    let image = staging.publish(&manifest).unwrap();
    assert_eq!(
        ferry_agent::runtime::kubelet::archive_member(
            &image.dir.join("app.tar"),
            "checkpoint/pages-1.img"
        )
        .unwrap()
        .as_deref(),
        Some(&b"app"[..])
    );
    // ferry's dump stats, read from the archive, give the image its GPU vendor.
    assert_eq!(manifest_vendor, Some(GpuVendor::Sim));
    assert_eq!(image.manifest.meta.gpu_vendor, Some(GpuVendor::Sim));
}

#[test]
fn stand_in_kubelet_refuses_a_client_cert_from_another_ca_and_the_error_says_so() {
    let p = pki();
    let tmp = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let addr = stand_in_kubelet(&p, tmp.path().to_path_buf(), seen.clone());
    let tls = KubeletApi::tls_config(
        p.ca_pem.as_bytes(),
        Some((
            p.other_ca_client.0.as_bytes(),
            p.other_ca_client.1.as_bytes(),
        )),
    )
    .unwrap();
    let api = KubeletApi::new(&addr, "localhost", tls);
    let store = Store::open(tmp.path().join("store")).unwrap();
    let staging = store.stage("ns/p/x").unwrap();
    let mut job = CheckpointJob::new(
        ImageSource {
            namespace: "ns".into(),
            pod: "p".into(),
            ..Default::default()
        },
        vec![ContainerTarget::Kubelet { name: "c".into() }],
    );
    job.timeout = Duration::from_secs(5);
    let err = api.checkpoint(&job, &staging).unwrap_err();
    assert!(matches!(err, RuntimeError::Kubelet(_)), "{err}");
    assert!(seen.lock().unwrap().requests.is_empty());

    // A wrong server name fails the handshake too (the agent checks the kubelet's cert).
    let tls = KubeletApi::tls_config(
        p.ca_pem.as_bytes(),
        Some((p.client.0.as_bytes(), p.client.1.as_bytes())),
    )
    .unwrap();
    let api = KubeletApi::new(&addr, "not-the-kubelet", tls);
    let err = api.checkpoint(&job, &staging).unwrap_err().to_string();
    assert!(err.contains("TLS handshake"), "{err}");

    // An unknown path answers 404; its text surfaces.
    let api = KubeletApi::new(
        &addr,
        "localhost",
        KubeletApi::tls_config(
            p.ca_pem.as_bytes(),
            Some((p.client.0.as_bytes(), p.client.1.as_bytes())),
        )
        .unwrap(),
    );
    let (status, body) = api.post("/nope", Duration::from_secs(5)).unwrap();
    let err = KubeletApi::parse_response(status, &body)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("404") && err.contains("page not found"),
        "{err}"
    );
}
