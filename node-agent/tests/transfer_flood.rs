//! The transfer server under a flood (issue #14, finding 4; docs/security.md): real sockets,
//! real mutual TLS, a real store. Hundreds of idle connections, hundreds of requests without
//! a token, with a wrong token or for names that have no grant, and clients that request a
//! large file and never read it, all at once, while the target agent's pull of the image still
//! finishes within a bound; the bad requests cost no grant lookup (each would be an API read).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod transfer_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_agent::cluster::grants::{CacheLimits, CachedGrants};
use ferry_agent::transfer::{NodeIdentity, ServerLimits, StaticGrants, pinned_client_config};
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use transfer_common::*;

/// Idle connections opened at once (more than the server's cap below).
const IDLE: usize = 300;
/// Connections the server serves at once in this test.
const MAX_CONNECTIONS: usize = 64;
/// Bad requests per attacking connection, and attacking connections.
const BAD_PER_CONNECTION: usize = 50;
const ATTACKERS: usize = 8;
/// Clients that ask for the large file and never read it.
const SLOW_READERS: usize = 8;

/// `BAD_PER_CONNECTION` requests on one keep-alive connection with `client`'s certificate; each
/// must be refused with a status in `expect`.
async fn bad_requests(
    source: &Source,
    client: &NodeIdentity,
    path: String,
    auth: Option<String>,
    expect: &[u16],
) -> Result<(), String> {
    // The server may close a connection over its cap: the caller retries.
    let tcp = TcpStream::connect(source.server.local_addr())
        .await
        .map_err(|e| e.to_string())?;
    let config = pinned_client_config(&source.fingerprint, client).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    for i in 0..BAD_PER_CONNECTION {
        let mut request = Request::get(&path).header("host", "source");
        if let Some(auth) = &auth {
            request = request.header("authorization", auth);
        }
        let sent = async {
            sender.ready().await?;
            sender
                .send_request(request.body(Empty::<Bytes>::new()).unwrap())
                .await
        };
        let response = match sent.await {
            Ok(response) => response,
            // Refused before the first answer (the handshake's alert comes late in TLS 1.3).
            Err(e) if i == 0 => return Err(e.to_string()),
            Err(e) => panic!("{path}: {e}"),
        };
        let status = response.status().as_u16();
        response.into_body().collect().await.unwrap();
        assert!(expect.contains(&status), "{path}: {status}");
    }
    Ok(())
}

/// A client with the right certificate and token that asks for `file` and never reads.
async fn slow_reader(source: &Source, file: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(source.server.local_addr())
        .await
        .unwrap();
    let config = pinned_client_config(&source.fingerprint, &source.target).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let request = format!(
        "GET /v1/images/{NS}/{REQUEST}/files/{file} HTTP/1.1\r\nhost: source\r\nauthorization: Bearer {}\r\n\r\n",
        source.token.expose_secret()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    tls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_and_stalled_readers_do_not_stop_a_pull_or_reach_the_api() {
    let (_tmp, source_store, target_store) = stores(512 * MIB);
    publish(
        &source_store,
        SOURCE_LOCATION,
        &[
            ("big.img", 96 * MIB),
            ("a.img", 8 * MIB),
            ("b.img", 8 * MIB),
        ],
    );
    let grants = StaticGrants::new();
    let lookups = Arc::new(AtomicUsize::new(0));
    let cached = CachedGrants::with_limits(
        CountingGrants(grants.clone(), lookups.clone()),
        CacheLimits {
            found_ttl: Duration::from_secs(60),
            miss_ttl: Duration::from_secs(60),
            ..CacheLimits::default()
        },
    );
    let limits = ServerLimits {
        max_connections: MAX_CONNECTIONS,
        handshake_timeout: Duration::from_secs(1),
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        disk_readers: 2,
    };
    let source =
        Arc::new(Source::start_with(source_store.clone(), Arc::new(cached), grants, limits).await);
    let stats = source.server.stats();

    // Stalled readers first: each holds a response the server cannot write.
    let mut stalled = Vec::new();
    for _ in 0..SLOW_READERS {
        stalled.push(slow_reader(&source, "big.img").await);
    }
    // Idle connections: more than the cap, none sends a byte.
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        if let Ok(tcp) = TcpStream::connect(source.server.local_addr()).await {
            idle.push(tcp);
        }
    }
    // Requests without a token, with a non-bearer one, with a wrong token, and for a name
    // nobody granted, from an agent certificate the grant does not name.
    let attacker = Arc::new(NodeIdentity::generate().unwrap());
    let manifest = format!("/v1/images/{NS}/{REQUEST}/manifest");
    let ghost = format!("/v1/images/{NS}/ghost/manifest");
    let wrong = Some(format!("Bearer {}", "0".repeat(64)));
    let floods = [
        (manifest.clone(), None, vec![401]),
        (
            manifest.clone(),
            Some("Basic Zm9vOmJhcg==".to_string()),
            vec![401],
        ),
        (manifest.clone(), wrong.clone(), vec![401]),
        (ghost.clone(), wrong.clone(), vec![401, 503]),
    ];
    let started = Instant::now();
    let mut attacks = tokio::task::JoinSet::new();
    for i in 0..ATTACKERS {
        let (path, auth, expect) = floods[i % floods.len()].clone();
        let (source, attacker) = (source.clone(), attacker.clone());
        attacks.spawn(async move {
            // The server may refuse a connection while the idle ones fill it: retry.
            for _ in 0..50 {
                let run = bad_requests(&source, &attacker, path.clone(), auth.clone(), &expect);
                if run.await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            panic!("the attacker never got a connection");
        });
    }

    // The target agent's pull, during all of it.
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        source.pull(&source.spec(), &target_store),
    )
    .await
    .expect("the pull did not finish within 60 s")
    .unwrap();
    let pull_took = started.elapsed();
    assert_eq!(report.digest, source.digest);
    target_store
        .open_image(TARGET_LOCATION)
        .unwrap()
        .verify()
        .unwrap();
    while let Some(done) = attacks.join_next().await {
        done.unwrap();
    }
    eprintln!(
        "pull under flood: {:.1} s; refused connections {}, idle timeouts {}, handshake failures {}, auth failures {}, lookups {}",
        pull_took.as_secs_f64(),
        stats.connections_refused.load(Ordering::Relaxed),
        stats.idle_timeouts.load(Ordering::Relaxed),
        stats.handshake_failures.load(Ordering::Relaxed),
        stats.auth_failures.load(Ordering::Relaxed),
        lookups.load(Ordering::SeqCst),
    );
    assert!(pull_took < Duration::from_secs(30), "{pull_took:?}");
    // The cap held: the idle flood was more than it and was refused on accept.
    assert!(
        stats.connections_refused.load(Ordering::Relaxed) >= (IDLE - MAX_CONNECTIONS) as u64 / 2,
        "the connection cap did not refuse the flood"
    );
    // Stalled readers and idle connections were cut, not kept.
    assert!(
        stats.idle_timeouts.load(Ordering::Relaxed) >= SLOW_READERS as u64,
        "stalled readers were not cut"
    );
    // Hundreds of bad requests, and the pull: the one grant lookup of the pull, one for the
    // ungranted name, none for a request without a token.
    assert!(
        stats.auth_failures.load(Ordering::Relaxed) >= (ATTACKERS * BAD_PER_CONNECTION / 2) as u64
    );
    let n = lookups.load(Ordering::SeqCst);
    assert!(n <= 2, "{n} grant lookups for the flood");
    // A stalled reader's connection is closed by the server: a read sees its end.
    let mut first = stalled.remove(0);
    // It got what fit in the socket buffers before the cut, not the file.
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            match tokio::io::AsyncReadExt::read(&mut first, &mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got += n as u64,
            }
        }
    })
    .await
    .expect("a stalled reader's connection stayed open");
    assert!(
        drained < 96 * MIB,
        "a stalled reader got the whole file ({drained} bytes)"
    );
    drop(idle);
    assert_intact(&source_store);
}
