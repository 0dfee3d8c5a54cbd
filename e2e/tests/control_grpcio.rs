//! A gRPC C-core client on the speaker's Unix socket: Python's `grpcio` (from the repo's
//! `.venv`, `scripts/ci-python-requirements.txt`) calls the health service and `GetState` on
//! `unix:PATH`. C-core sends the socket path (percent-encoded) as `:authority`; before the
//! speaker accepted any authority there, every such call was reset (RST_STREAM). Needs no root;
//! in CI (`CI` set) a missing `.venv` or `grpcio` fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth_proto::v1;

/// The client: raw bytes in and out (hand-encoded protobuf), so no generated stubs are needed.
const CLIENT: &str = r#"
import sys, grpc
channel = grpc.insecure_channel("unix:" + sys.argv[1])
def call(method, request):
    rpc = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        return "ok " + rpc(request, timeout=5).hex()
    except grpc.RpcError as e:
        return "error %s %s" % (e.code(), e.details())
print("health", call("/grpc.health.v1.Health/Check", b""))
print("state", call("/berth.bgp.v1.Speaker/GetState", b""))
"#;

/// Kills and reaps the speaker when the test ends, also when it fails.
struct Speaker(Child);

impl Drop for Speaker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let ok = Command::new(&venv)
        .args(["-c", "import grpc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(venv);
    }
    let why = format!(
        "needs {} with grpcio (python3 -m venv .venv && .venv/bin/pip install -r \
         scripts/ci-python-requirements.txt)",
        venv.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("this test {why}, and CI must run it");
    }
    eprintln!("skipped: {why}");
    None
}

/// The varint fields of a protobuf message (number → value); other fields are skipped.
fn varints(mut b: &[u8]) -> Vec<(u64, u64)> {
    fn varint(b: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (first, rest) = b.split_first().expect("truncated varint");
            *b = rest;
            v |= u64::from(first & 0x7f) << shift;
            if first & 0x80 == 0 {
                break;
            }
        }
        v
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b);
        match key & 7 {
            0 => out.push((key >> 3, varint(&mut b))),
            2 => {
                let len = usize::try_from(varint(&mut b)).unwrap();
                b = &b[len..];
            }
            other => panic!("unexpected wire type {other}"),
        }
    }
    out
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_calls_health_and_get_state_on_the_unix_socket() {
    let Some(python) = python() else { return };
    let dir = berth_e2e::test_dir("grpcio").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("api.sock");
    let log = std::fs::File::create(dir.join("speaker.log")).unwrap();
    let _speaker = Speaker(
        Command::new(berth_e2e::binary("berth-bgp-server"))
            .arg("--grpc-socket")
            .arg(&sock)
            .args(["--metrics-addr", "127.0.0.1:0"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    // Something to read back: generation 7 with two routes, applied by the Rust client.
    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) = berth_proto::connect_unix(&sock).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = client.expect("the speaker never served its Unix socket");
    let route = |prefix: &str| v1::Route {
        prefix: prefix.into(),
        next_hops: vec![v1::NextHop {
            address: "10.0.0.11".into(),
            weight: 0,
        }],
        ..Default::default()
    };
    client
        .apply(v1::ApplyRequest {
            state: Some(v1::DesiredState {
                next_hop_groups: Vec::new(),
                generation: 7,
                global: Some(v1::Global {
                    asn: 64512,
                    router_id: "10.0.0.11".into(),
                    ..Default::default()
                }),
                peers: vec![],
                routes: vec![route("198.51.100.10/32"), route("198.51.100.11/32")],
            }),
        })
        .await
        .unwrap();

    let mut child = Command::new(&python)
        .args(["-c", CLIENT])
        .arg(&sock)
        .env("GRPC_VERBOSITY", "ERROR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Each call has its own 5 s deadline; this bounds the interpreter as a whole.
    for _ in 0..300 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if child.try_wait().unwrap().is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer = |name: &str| {
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} line in {stdout}"));
        let bytes = line
            .strip_prefix("ok ")
            .unwrap_or_else(|| panic!("{name} over grpcio failed: {line}"));
        hex(bytes)
    };
    // HealthCheckResponse { status: SERVING (1) }.
    assert_eq!(answer("health"), vec![0x08, 0x01]);
    // GetStateResponse: generation (1) = 7, route_count (4) = 2.
    let fields = varints(&answer("state"));
    assert!(fields.contains(&(1, 7)), "{fields:?}");
    assert!(fields.contains(&(4, 2)), "{fields:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
