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

/// A client of the speaker's control API over TCP with mutual TLS (`https://host:port`).
pub async fn connect_tls(
    uri: String,
    tls: &ClientTls,
) -> Result<v1::speaker_client::SpeakerClient<tonic::transport::Channel>, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca))
        .identity(Identity::from_pem(&tls.cert, &tls.key))
        .domain_name(tls.server_name.clone());
    let channel = Endpoint::from_shared(uri)?
        .tls_config(config)?
        .connect()
        .await?;
    Ok(v1::speaker_client::SpeakerClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// A client over TCP without TLS (loopback only; the server refuses plaintext elsewhere).
pub async fn connect_plain(
    uri: String,
) -> Result<v1::speaker_client::SpeakerClient<tonic::transport::Channel>, tonic::transport::Error> {
    let channel = tonic::transport::Endpoint::from_shared(uri)?
        .connect()
        .await?;
    Ok(v1::speaker_client::SpeakerClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}
