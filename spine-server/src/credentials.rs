//! A deployment's credentials on disk: the root key pair tokens are issued under and an admin
//! token, written once by `spine init` (or the first `spine dev`) and never overwritten.
//!
//! ```text
//! DIR/root.key     private key (hex), mode 0600: issues tokens (`spinectl token issue`)
//! DIR/root.pub     public key (hex): what every node checks tokens against (--root-key-file)
//! DIR/admin.token  an unconstrained token (base64), mode 0600: admin calls, peer traffic
//! DIR/tls/ca.pem, ca.key      with --tls: a CA (keep ca.key secret; give ca.pem to clients)
//! DIR/tls/node.pem, node.key  a node certificate signed by it, for serving and for mutual TLS
//!                             between nodes (server and client auth; localhost, 127.0.0.1 and
//!                             any names given)
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use authz_aggregate::{Constraints, RootKey, RootPublicKey, Token, issue};

/// File names inside a credentials directory.
pub const ROOT_KEY: &str = "root.key";
/// The public half.
pub const ROOT_PUB: &str = "root.pub";
/// The admin token.
pub const ADMIN_TOKEN: &str = "admin.token";

/// Why credentials could not be created or read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CredentialsError + '_ {
    move |source| CredentialsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The credential files of a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// The private root key.
    pub root_key: PathBuf,
    /// The public root key.
    pub root_pub: PathBuf,
    /// The admin token.
    pub admin_token: PathBuf,
}

impl Paths {
    /// The files in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            root_key: dir.join(ROOT_KEY),
            root_pub: dir.join(ROOT_PUB),
            admin_token: dir.join(ADMIN_TOKEN),
        }
    }
}

/// Creates the root key pair and an admin token in `dir` unless a root key is already there;
/// returns the paths and whether it created them.
pub fn init(dir: &Path) -> Result<(Paths, bool), CredentialsError> {
    let paths = Paths::in_dir(dir);
    if paths.root_key.exists() {
        // Check what is there is usable rather than failing later.
        read_root_key(&paths.root_key)?;
        read_root_public(&paths.root_pub)?;
        read_token(&paths.admin_token)?;
        return Ok((paths, false));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let root = RootKey::generate();
    let admin = issue(&root, &Constraints::any()).map_err(|e| CredentialsError::Invalid {
        path: paths.admin_token.clone(),
        reason: e.to_string(),
    })?;
    // The private key last: its presence marks a complete directory.
    write_secret(&paths.admin_token, &admin.to_base64())?;
    write_file(&paths.root_pub, &root.public().to_hex(), 0o644)?;
    write_secret(&paths.root_key, &root.to_private_hex())?;
    Ok((paths, true))
}

fn write_secret(path: &Path, text: &str) -> Result<(), CredentialsError> {
    write_file(path, text, 0o600)
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), CredentialsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(format!("{text}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn read_text(path: &Path) -> Result<String, CredentialsError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(io(path))
}

/// Reads a private root key file.
pub fn read_root_key(path: &Path) -> Result<RootKey, CredentialsError> {
    RootKey::from_private_hex(&read_text(path)?).map_err(|e| CredentialsError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads a public root key file.
pub fn read_root_public(path: &Path) -> Result<RootPublicKey, CredentialsError> {
    RootPublicKey::from_hex(&read_text(path)?).map_err(|e| CredentialsError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads a token file (base64).
pub fn read_token(path: &Path) -> Result<Token, CredentialsError> {
    Token::from_base64(&read_text(path)?).map_err(|e| CredentialsError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The TLS files of a credentials directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// The CA certificate: what clients and nodes trust.
    pub ca_cert: PathBuf,
    /// The CA's private key.
    pub ca_key: PathBuf,
    /// The node certificate (shared by the nodes of a dev cluster).
    pub node_cert: PathBuf,
    /// Its private key.
    pub node_key: PathBuf,
}

impl TlsPaths {
    /// The files in `dir/tls`.
    pub fn in_dir(dir: &Path) -> Self {
        let tls = dir.join("tls");
        Self {
            ca_cert: tls.join("ca.pem"),
            ca_key: tls.join("ca.key"),
            node_cert: tls.join("node.pem"),
            node_key: tls.join("node.key"),
        }
    }
}

fn tls_error(path: &Path) -> impl FnOnce(rcgen::Error) -> CredentialsError + '_ {
    move |e| CredentialsError::Invalid {
        path: path.to_path_buf(),
        reason: format!("generating a certificate: {e}"),
    }
}

/// Creates a CA and a node certificate for `localhost`, `127.0.0.1` and `names` in `dir/tls`,
/// unless a node certificate is already there; returns the paths and whether it created them.
pub fn init_tls(dir: &Path, names: &[String]) -> Result<(TlsPaths, bool), CredentialsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let paths = TlsPaths::in_dir(dir);
    if paths.node_key.exists() {
        return Ok((paths, false));
    }
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir).map_err(io(&tls_dir))?;
    let fail = tls_error(&paths.ca_cert);
    let ca_key = KeyPair::generate().map_err(fail)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls_error(&paths.ca_cert))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(DnType::CommonName, "Spine deployment CA");
    let ca_cert = ca.self_signed(&ca_key).map_err(tls_error(&paths.ca_cert))?;
    let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    sans.extend(names.iter().cloned());
    let node_key = KeyPair::generate().map_err(tls_error(&paths.node_key))?;
    let mut node = CertificateParams::new(sans).map_err(tls_error(&paths.node_cert))?;
    node.distinguished_name
        .push(DnType::CommonName, "spine node");
    node.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    node.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let issuer = Issuer::new(ca, &ca_key);
    let node_cert = node
        .signed_by(&node_key, &issuer)
        .map_err(tls_error(&paths.node_cert))?;
    write_file(&paths.ca_cert, &ca_cert.pem(), 0o644)?;
    write_secret(&paths.ca_key, &ca_key.serialize_pem())?;
    write_file(&paths.node_cert, &node_cert.pem(), 0o644)?;
    // The node key last: its presence marks a complete directory.
    write_secret(&paths.node_key, &node_key.serialize_pem())?;
    Ok((paths, true))
}

/// PEM files a node serves TLS with.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Its certificate chain.
    pub cert: Vec<u8>,
    /// Its private key.
    pub key: Vec<u8>,
    /// The CA certificate peers' and clients' certificates must chain to.
    pub ca: Vec<u8>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsFiles { .. }")
    }
}

impl TlsFiles {
    /// Reads the three PEM files.
    pub fn read(cert: &Path, key: &Path, ca: &Path) -> Result<Self, CredentialsError> {
        let read = |p: &Path| -> Result<Vec<u8>, CredentialsError> {
            let bytes = std::fs::read(p).map_err(io(p))?;
            if !String::from_utf8_lossy(&bytes).contains("-----BEGIN") {
                return Err(CredentialsError::Invalid {
                    path: p.to_path_buf(),
                    reason: "not a PEM file".into(),
                });
            }
            Ok(bytes)
        };
        Ok(Self {
            cert: read(cert)?,
            key: read(key)?,
            ca: read(ca)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_creates_once_and_keeps_what_is_there() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (paths, created) = init(dir.path())?;
        assert!(created);
        let mode = std::fs::metadata(&paths.root_key)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let key = read_root_key(&paths.root_key)?;
        assert_eq!(read_root_public(&paths.root_pub)?, key.public());
        let token = read_token(&paths.admin_token)?;
        assert!(
            authz_aggregate::inspect(&key.public(), &token)?
                .ca_owner
                .is_none()
        );
        let (_, again) = init(dir.path())?;
        assert!(!again);
        assert_eq!(read_root_key(&paths.root_key)?.public(), key.public());
        let (tls, made) = init_tls(dir.path(), &["spine.example".to_string()])?;
        assert!(made);
        TlsFiles::read(&tls.node_cert, &tls.node_key, &tls.ca_cert)?;
        assert!(!init_tls(dir.path(), &[])?.1);
        std::fs::write(&paths.root_pub, "zz")?;
        assert!(matches!(
            init(dir.path()),
            Err(CredentialsError::Invalid { .. })
        ));
        Ok(())
    }
}
