//! Certificates for tests and the lab, made in process: a CA, and server and client
//! certificates it signs, as PEM files the binaries read like production ones.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// A certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate (PEM).
    pub pem: String,
}

/// A certificate and its key (PEM).
pub struct Leaf {
    /// Certificate.
    pub cert: String,
    /// Private key.
    pub key: String,
}

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Result<Ca, String> {
        let key = KeyPair::generate().map_err(e)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).map_err(e)?;
        Ok(Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A certificate for `names` (DNS names or IP addresses), for a server or a client.
    pub fn issue(&self, names: &[&str], server: bool) -> Result<Leaf, String> {
        let key = KeyPair::generate().map_err(e)?;
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).map_err(e)?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = params.signed_by(&key, &self.issuer).map_err(e)?;
        Ok(Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// Writes `ca.pem`, `<name>.pem` and `<name>-key.pem` into `dir`; returns (cert, key, ca).
pub fn write(
    dir: &Path,
    name: &str,
    ca: &Ca,
    leaf: &Leaf,
) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    std::fs::create_dir_all(dir).map_err(e)?;
    let (c, k, a) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
        dir.join("ca.pem"),
    );
    std::fs::write(&c, &leaf.cert).map_err(e)?;
    std::fs::write(&k, &leaf.key).map_err(e)?;
    std::fs::write(&a, &ca.pem).map_err(e)?;
    Ok((c, k, a))
}

/// `n` random bytes from the kernel, hex-encoded (keys made for a test or lab run).
pub fn random_hex(n: usize) -> Result<String, String> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|x| format!("/dev/urandom: {x}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
