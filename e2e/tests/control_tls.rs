//! The control API's TCP listener with mutual TLS, on loopback (no root needed): a client with
//! a certificate from the configured CA is served; one without a certificate, or with one from
//! another CA, is refused before any call runs; new files on disk are picked up without a
//! restart; plaintext on a non-loopback address is refused at start.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::pki::{self, Ca};
use berth_proto::{ClientTls, v1};

static SPEAKER: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| berth_e2e::binary("berth-bgp-server"));

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn client_tls(ca: &Ca, signer: &Ca) -> ClientTls {
    let leaf = signer.issue(&["operator"], false).unwrap();
    ClientTls {
        ca: ca.pem.clone().into_bytes(),
        cert: leaf.cert.into_bytes(),
        key: leaf.key.into_bytes(),
        server_name: "speaker".into(),
    }
}

async fn works(uri: &str, tls: &ClientTls) -> Result<u64, String> {
    let mut c = berth_proto::connect_tls(uri.to_owned(), tls)
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    c.get_state(v1::GetStateRequest::default())
        .await
        .map(|r| r.into_inner().generation)
        .map_err(|e| format!("call: {e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_of_the_ca_and_follows_new_files() {
    let dir = berth_e2e::test_dir("tls").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let ca = Ca::new("berth test CA").unwrap();
    let server = ca.issue(&["speaker", "127.0.0.1"], true).unwrap();
    let (cert, key, ca_file) = pki::write(&dir, "speaker", &ca, &server).unwrap();
    let listen = port();
    let uri = format!("https://127.0.0.1:{listen}");
    let log = std::fs::File::create(dir.join("speaker.log")).unwrap();
    let _speaker = Killed(
        Command::new(&*SPEAKER)
            .args(["--grpc-listen", &format!("127.0.0.1:{listen}")])
            .args(["--tls-cert", &cert.display().to_string()])
            .args(["--tls-key", &key.display().to_string()])
            .args(["--tls-ca", &ca_file.display().to_string()])
            .args(["--metrics-addr", &format!("127.0.0.1:{}", port())])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let speaker_log = || std::fs::read_to_string(dir.join("speaker.log")).unwrap_or_default();

    let good = client_tls(&ca, &ca);
    let deadline = Instant::now() + Duration::from_secs(15);
    while works(&uri, &good).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "never served a good client:\n{}",
            speaker_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(works(&uri, &good).await, Ok(0));

    // No client certificate: plain TLS that trusts the server, and nothing else.
    let no_cert = tonic::transport::Endpoint::from_shared(uri.clone())
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&ca.pem))
                .domain_name("speaker"),
        )
        .unwrap();
    let refused = match no_cert.connect().await {
        Err(e) => Err(format!("{e:?}")),
        Ok(ch) => v1::speaker_client::SpeakerClient::new(ch)
            .get_state(v1::GetStateRequest::default())
            .await
            .map(|_| ())
            .map_err(|e| format!("{e:?}")),
    };
    assert!(
        refused.is_err(),
        "a client without a certificate was served"
    );

    // A certificate from another CA.
    let rogue_ca = Ca::new("someone else").unwrap();
    let rogue = client_tls(&ca, &rogue_ca);
    assert!(
        works(&uri, &rogue).await.is_err(),
        "a foreign certificate was served"
    );
    assert!(speaker_log().contains("control API client refused (TLS)"));

    // Rotation: a new CA and server certificate on disk; within a few seconds the new clients
    // are served and the old ones refused, with no restart.
    let ca2 = Ca::new("rotated CA").unwrap();
    let server2 = ca2.issue(&["speaker", "127.0.0.1"], true).unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // a new mtime even on coarse clocks
    pki::write(&dir, "speaker", &ca2, &server2).unwrap();
    let good2 = client_tls(&ca2, &ca2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while works(&uri, &good2).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "new material never used:\n{}",
            speaker_log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        works(&uri, &good).await.is_err(),
        "the old client is still served"
    );
    assert!(speaker_log().contains("TLS material reloaded"));
}

#[test]
fn plaintext_on_a_node_address_is_refused_at_start() {
    let out = Command::new(&*SPEAKER)
        .args(["--grpc-listen", "10.0.0.11:50051"])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plaintext gRPC is only allowed on loopback"),
        "{err}"
    );
}
