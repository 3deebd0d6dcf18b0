//! TLS with `--sslkey/--sslcert`: https and wss with a certificate generated for the test, and
//! clear start-up errors for bad files.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use common::*;
use futures_util::StreamExt;
use peerjsd::config::TlsPaths;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

struct Certs {
    dir: PathBuf,
    paths: TlsPaths,
    der: CertificateDer<'static>,
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn certs(name: &str) -> Certs {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("peerjsd-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let paths = TlsPaths {
        key: dir.join("key.pem"),
        cert: dir.join("cert.pem"),
    };
    std::fs::write(&paths.key, generated.signing_key.serialize_pem()).unwrap();
    std::fs::write(&paths.cert, generated.cert.pem()).unwrap();
    Certs {
        dir,
        paths,
        der: generated.cert.der().clone(),
    }
}

async fn tls_connect(
    server: &TestServer,
    der: &CertificateDer<'static>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = RootCertStore::empty();
    roots.add(der.clone()).unwrap();
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the generated certificate")
}

#[tokio::test]
async fn https_and_wss_work_with_the_configured_certificate() {
    let certs = certs("ok");
    let server = TestServer::with(|c| c.tls = Some(certs.paths.clone())).await;

    let mut https = tls_connect(&server, &certs.der).await;
    https
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    https
        .read_to_string(&mut response)
        .await
        .unwrap_or_default();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#""status":"ok""#));

    let url = "wss://localhost/peerjs?key=peerjs&id=alice&token=t";
    let (mut alice, _) =
        tokio_tungstenite::client_async(url, tls_connect(&server, &certs.der).await)
            .await
            .unwrap();
    let (mut bob, _) = tokio_tungstenite::client_async(
        url.replace("alice", "bob"),
        tls_connect(&server, &certs.der).await,
    )
    .await
    .unwrap();
    assert_eq!(
        alice.next().await.unwrap().unwrap().to_text().unwrap(),
        r#"{"type":"OPEN"}"#
    );
    assert_eq!(
        bob.next().await.unwrap().unwrap().to_text().unwrap(),
        r#"{"type":"OPEN"}"#
    );
    use futures_util::SinkExt;
    alice
        .send(tokio_tungstenite::tungstenite::Message::text(
            r#"{"type":"OFFER","dst":"bob","payload":1}"#,
        ))
        .await
        .unwrap();
    assert_eq!(
        bob.next().await.unwrap().unwrap().to_text().unwrap(),
        r#"{"type":"OFFER","src":"alice","dst":"bob","payload":1}"#
    );
}

#[tokio::test]
async fn plain_http_to_a_tls_port_is_dropped_without_harm() {
    let certs = certs("plain");
    let server = TestServer::with(|c| {
        c.tls = Some(certs.paths.clone());
        c.handshake_timeout = std::time::Duration::from_millis(500);
    })
    .await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert!(!String::from_utf8_lossy(&buf[..n]).contains("200"));
    // The TLS side still works.
    tls_connect(&server, &certs.der).await;
}

#[tokio::test]
async fn a_tls_handshake_in_progress_holds_a_handshake_place() {
    let certs = certs("half-open");
    let server = TestServer::with(|c| {
        c.tls = Some(certs.paths.clone());
        c.max_handshakes_per_ip = Some(2);
        c.handshake_timeout = std::time::Duration::from_secs(120);
    })
    .await;
    let attacker: std::net::IpAddr = [127, 0, 0, 6].into();
    let connect = || async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((attacker, 0).into()).unwrap();
        socket.connect(server.addr).await.unwrap()
    };
    // Two connections that never send a ClientHello.
    let _held = (connect().await, connect().await);
    server
        .until("two in their TLS handshake", |s| {
            s.gate.handshakes_from(attacker) == 2
        })
        .await;
    // The third is closed at once, without a plaintext answer a TLS client could not read.
    let mut third = connect().await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, third.read(&mut buf))
        .await
        .expect("closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(
        server
            .shared
            .metrics
            .rejected(peerjsd::protocol::Rejection::HandshakesPerIp),
        1
    );
    // Another address completes its handshake, and then holds no handshake place.
    let mut tls = tls_connect(&server, &certs.der).await;
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = tokio::time::timeout(WAIT, tls.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    assert_eq!(server.shared.gate.handshakes(), 2);
}

#[test]
fn bad_tls_files_fail_at_start_with_one_clear_line() {
    let certs = certs("bad");
    let missing = certs.dir.join("missing.pem");
    let garbage = certs.dir.join("garbage.pem");
    std::fs::write(&garbage, "not a pem file\n").unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let other_key = certs.dir.join("other-key.pem");
    std::fs::write(&other_key, other.signing_key.serialize_pem()).unwrap();
    for (key, cert, expect) in [
        (&certs.paths.key, &missing, "--sslcert"),
        (&missing, &certs.paths.cert, "--sslkey"),
        (&certs.paths.key, &garbage, "no certificate"),
        (&garbage, &certs.paths.cert, "--sslkey"),
        (&other_key, &certs.paths.cert, "does not fit"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_peerjsd"))
            .args(["--port", "0", "--host", "127.0.0.1", "--sslkey"])
            .arg(key)
            .arg("--sslcert")
            .arg(cert)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expect), "{expect}: {stderr}");
    }
}
