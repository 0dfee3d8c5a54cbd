//! The gRPC contract (`berth.bgp.v1`) between Berth's operator and its bgp-server replicas.
//!
//! The `.proto` file (`proto/berth/bgp/v1/speaker.proto`) is the documentation; this crate is
//! its generated Rust: messages, the `Speaker` server trait and client.

/// `berth.bgp.v1`: the speaker's control API.
pub mod v1 {
    #![allow(
        missing_docs,
        clippy::all,
        clippy::pedantic,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )]
    tonic::include_proto!("berth.bgp.v1");
}

pub mod groups;

/// Largest message a server or client accepts: a 100,000-route desired state is about 6 MB.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A channel to the speaker's Unix socket (`--grpc-socket`), for any of its services.
pub async fn unix_channel(
    path: impl AsRef<std::path::Path>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.as_ref().to_path_buf();
    // The URI is required by the API and unused: the connector below decides where to go.
    tonic::transport::Endpoint::from_static("http://berth.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// A client of the speaker's control API over its Unix socket (`--grpc-socket`).
pub async fn connect_unix(
    path: impl AsRef<std::path::Path>,
) -> Result<v1::speaker_client::SpeakerClient<tonic::transport::Channel>, tonic::transport::Error> {
    Ok(
        v1::speaker_client::SpeakerClient::new(unix_channel(path).await?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
}

/// PEM material for a mutual-TLS client.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The CA that signed the server's certificate.
    pub ca: Vec<u8>,
    /// This client's certificate chain.
    pub cert: Vec<u8>,
    /// Its private key.
    pub key: Vec<u8>,
    /// The name the server's certificate must carry.
    pub server_name: String,
}

/// How long opening a TCP connection to a speaker may take: a replica whose node is down
/// (packets dropped) must not hold the caller for the kernel's minutes of SYN retries.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// How long one call may take, a full `Apply` of a large table included.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// HTTP/2 keepalive: a PING this often, also while idle, and the connection is dropped when
/// one goes unanswered for [`KEEPALIVE_TIMEOUT`] (a replica that vanished without a FIN).
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// See [`KEEPALIVE_INTERVAL`].
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A TCP endpoint with the timeouts and keepalive every speaker connection uses.
fn tcp_endpoint(uri: String) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(uri)?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_keepalive(Some(std::time::Duration::from_secs(30))))
}

/// A client of the speaker's control API over TCP with mutual TLS (`https://host:port`).
pub async fn connect_tls(
    uri: String,
    tls: &ClientTls,
) -> Result<v1::speaker_client::SpeakerClient<tonic::transport::Channel>, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca))
        .identity(Identity::from_pem(&tls.cert, &tls.key))
        .domain_name(tls.server_name.clone());
    let channel = tcp_endpoint(uri)?.tls_config(config)?.connect().await?;
    Ok(v1::speaker_client::SpeakerClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// A client over TCP without TLS (loopback only; the server refuses plaintext elsewhere).
pub async fn connect_plain(
    uri: String,
) -> Result<v1::speaker_client::SpeakerClient<tonic::transport::Channel>, tonic::transport::Error> {
    let channel = tcp_endpoint(uri)?.connect().await?;
    Ok(v1::speaker_client::SpeakerClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}
