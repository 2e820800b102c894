//! The cluster PKI: a CA that weft creates, node certificates it signs, and the checks every node applies.
//!
//! ```text
//!   weft ca init  ──► DIR/ca.crt, DIR/ca.key (0600)          Ed25519 everywhere; the CA may sign only end entities
//!   weft ca issue ──► OUT/NAME.crt, OUT/NAME.key (0600)      CN = SAN = NAME, EKU serverAuth + clientAuth, not a CA
//!
//!   NodeIdentity::load(ca.crt, NAME.crt, NAME.key) ──► NodeId = SHA-256(SubjectPublicKeyInfo)[..16]
//!                       └─ refuses a group/world-readable key, a foreign or expired certificate, a key of another cert
//!   PkiAuthenticator (gossip's Authenticator): credential = certificate DER, checked against the same CA
//! ```
//!
//! What is verified, and why it is enough (docs/pki.md has the operator's view):
//! - a certificate chains directly to the cluster CA (rustls-webpki path building with the CA as the only trust
//!   anchor, no intermediates), is inside its validity period at the current wall time, and may be used for both
//!   TLS server and client authentication;
//! - its subject key is Ed25519, because gossip signatures are checked with that key;
//! - the node id a peer claims is the hash of that key, so a node cannot speak for another.
//!
//! Not here: revocation (there is no CRL; remove a node by rotating the CA), and the TLS handshake itself
//! (`transport`).

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use overlay_proto::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, PKCS_ED25519,
};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, DnsName, PrivateKeyDer, PrivatePkcs8KeyDer, TrustAnchor, UnixTime};
use time::{Duration as TimeDuration, OffsetDateTime};
use webpki::{EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeId, KeyPurposeIdIter};
use x509_parser::oid_registry::OID_SIG_ED25519;
use zeroize::{Zeroize, Zeroizing};

/// The CA certificate's file name inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA private key's file name inside the CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// Default CA validity: ten years.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Default node certificate validity: one year.
pub const DEFAULT_NODE_DAYS: u32 = 365;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Certificates start this long before they are made, so a peer whose clock is a little behind accepts them.
const BACKDATE: TimeDuration = TimeDuration::minutes(5);
/// How many accepted credentials [`PkiAuthenticator`] remembers by default.
const DEFAULT_CACHE_CAPACITY: usize = 4096;

/// DER contents of the id-kp-serverAuth OID (1.3.6.1.5.5.7.3.1, RFC 5280 §4.2.1.12).
const EKU_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
/// DER contents of the id-kp-clientAuth OID (1.3.6.1.5.5.7.3.2).
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// Signature algorithms accepted on the path from a node certificate to the CA. weft itself only makes Ed25519
/// certificates; the list is ring's, as in the TLS handshake, so both checks agree.
static CHAIN_ALGORITHMS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ED25519,
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
];

/// What is wrong with a certificate, wherever it came from (a file, a TLS handshake, a gossip record).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// The bytes are not one DER-encoded X.509 certificate.
    #[error("not a DER X.509 certificate")]
    Malformed,
    /// The certificate's subject key is not Ed25519; weft signs and verifies gossip with Ed25519 only.
    #[error("the subject key is not Ed25519")]
    NotEd25519,
    /// The certificate given as the CA is not a CA certificate (no basicConstraints CA:TRUE).
    #[error("not a CA certificate")]
    NotCa,
    /// The certificate given as the CA cannot be used as a trust anchor.
    #[error("unusable as a trust anchor: {0}")]
    BadCa(webpki::Error),
    /// The certificate does not chain to the cluster CA, or may not be used for TLS server and client auth.
    #[error("not issued by the cluster CA for node use: {0}")]
    NotIssuedByCa(webpki::Error),
    /// The certificate's validity period ended.
    #[error("expired on {}", utc(*not_after))]
    Expired {
        /// The certificate's notAfter.
        not_after: UnixTime,
    },
    /// The certificate's validity period has not started (or this host's clock is behind).
    #[error("not valid before {}", utc(*not_before))]
    NotYetValid {
        /// The certificate's notBefore.
        not_before: UnixTime,
    },
    /// The certificate is valid but belongs to another node than the one it was presented for.
    #[error("belongs to node {actual}, not to node {claimed}")]
    WrongNode {
        /// The node id the certificate was presented under.
        claimed: NodeId,
        /// The node id its key hashes to.
        actual: NodeId,
    },
}

/// Errors creating, writing or loading the cluster PKI. Each names the file involved and the cause.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading, writing or creating a file or directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// `ca init` or `ca issue` would overwrite an existing file.
    #[error("{} already exists; pass --force to overwrite it", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// A private key file may be read or written by group or others.
    #[error(
        "{}: private key is accessible by group or others (mode {mode:04o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file does not hold the expected PEM section.
    #[error("{}: no {expected} PEM section: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was looked for: "CERTIFICATE" or "PRIVATE KEY" (PKCS#8).
        expected: &'static str,
        /// The PEM parser's error.
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate file holds a certificate that is malformed, foreign, expired or of the wrong kind.
    #[error("{}: {source}", path.display())]
    Certificate {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        source: CertificateError,
    },
    /// A key file does not hold an Ed25519 PKCS#8 private key.
    #[error("{}: not an Ed25519 PKCS#8 private key: {source}", path.display())]
    InvalidKey {
        /// The key file.
        path: PathBuf,
        /// ring's reason.
        source: ring::error::KeyRejected,
    },
    /// A key file holds a valid key, but not the one whose public half is in the certificate.
    #[error("{}: this key does not belong to the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// A node name is not usable as a DNS name (it becomes the certificate's CN, its DNS SAN and a file name).
    #[error("node name {name:?} is not a valid DNS name (letters, digits, '-' and '.', at most 253 characters)")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// A validity of zero days, or one that overflows the calendar.
    #[error("validity of {days} days is out of range")]
    InvalidValidity {
        /// The requested number of days.
        days: u32,
    },
    /// rcgen failed to create a key or a certificate.
    #[error("creating the certificate failed: {source}")]
    Generate {
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// Options for [`init_ca`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaOptions {
    /// The cluster's name, written into the CA certificate's subject.
    pub name: String,
    /// Validity in days.
    pub days: u32,
    /// Overwrite existing files.
    pub force: bool,
}

impl Default for CaOptions {
    fn default() -> Self {
        Self { name: "weft".into(), days: DEFAULT_CA_DAYS, force: false }
    }
}

/// Options for [`issue_node`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueOptions {
    /// Validity in days; cut to the CA's own end of validity.
    pub days: u32,
    /// Overwrite existing files.
    pub force: bool,
}

impl Default for IssueOptions {
    fn default() -> Self {
        Self { days: DEFAULT_NODE_DAYS, force: false }
    }
}

/// What [`init_ca`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    /// The CA certificate (PEM).
    pub cert: PathBuf,
    /// The CA private key (PEM, mode 0600).
    pub key: PathBuf,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// What [`issue_node`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedNode {
    /// The node certificate (PEM).
    pub cert: PathBuf,
    /// The node private key (PEM, mode 0600).
    pub key: PathBuf,
    /// The node id derived from the new key.
    pub id: NodeId,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// Creates a cluster CA in `dir` (created with mode 0700 if missing): `ca.crt` and `ca.key`.
pub fn init_ca(dir: &Path, options: &CaOptions) -> Result<CaFiles, PkiError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    if !options.force {
        refuse_existing(&[&cert_path, &key_path])?;
    }
    let now = OffsetDateTime::now_utc();
    let not_after = now + days(options.days)?;

    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::OrganizationName, "weft");
    subject.push(DnType::CommonName, format!("{} cluster CA", options.name));
    params.distinguished_name = subject;
    // Path length 0: the CA signs node certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = now - BACKDATE;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);

    let key = KeyPair::generate_for(&PKCS_ED25519).map_err(|source| PkiError::Generate { source })?;
    let cert = params.self_signed(&key).map_err(|source| PkiError::Generate { source })?;

    create_dir(dir)?;
    let key_pem = Zeroizing::new(key.serialize_pem());
    write_file(&key_path, key_pem.as_bytes(), 0o600, options.force)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644, options.force)?;
    Ok(CaFiles { cert: cert_path, key: key_path, not_after })
}

/// Issues a node certificate and key signed by the CA in `ca_dir`, written to `out_dir/NAME.crt` and
/// `out_dir/NAME.key`.
pub fn issue_node(ca_dir: &Path, name: &str, out_dir: &Path, options: &IssueOptions) -> Result<IssuedNode, PkiError> {
    let now = OffsetDateTime::now_utc();
    let not_after = now + days(options.days)?;
    issue_node_valid(ca_dir, name, out_dir, options.force, now - BACKDATE, not_after)
}

fn issue_node_valid(
    ca_dir: &Path,
    name: &str,
    out_dir: &Path,
    force: bool,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<IssuedNode, PkiError> {
    // The name becomes a file name too; a DNS name cannot hold '/' or be "..".
    if DnsName::try_from(name).is_err() || name.starts_with('.') {
        return Err(PkiError::InvalidName { name: name.into() });
    }
    let cert_path = out_dir.join(format!("{name}.crt"));
    let key_path = out_dir.join(format!("{name}.key"));
    if !force {
        refuse_existing(&[&cert_path, &key_path])?;
    }

    let ca_cert_path = ca_dir.join(CA_CERT_FILE);
    let ca_key_path = ca_dir.join(CA_KEY_FILE);
    let ca_der = read_certificate(&ca_cert_path)?;
    let ca = parse(&ca_der).map_err(|source| PkiError::Certificate { path: ca_cert_path.clone(), source })?;
    if !ca.is_ca {
        return Err(PkiError::Certificate { path: ca_cert_path, source: CertificateError::NotCa });
    }
    let ca_pkcs8 = read_private_key(&ca_key_path)?;
    let ca_key = KeyPair::try_from(ca_pkcs8.as_slice()).map_err(|source| PkiError::Generate { source })?;
    if ca_key.public_key_raw() != ca.public_key {
        return Err(PkiError::KeyMismatch { key: ca_key_path, cert: ca_cert_path });
    }
    let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key).map_err(|source| PkiError::Generate { source })?;

    // A node certificate cannot outlive the CA that vouches for it.
    let ca_not_after = OffsetDateTime::from_unix_timestamp(ca.not_after)
        .map_err(|_| PkiError::Certificate { path: ca_cert_path.clone(), source: CertificateError::Malformed })?;
    let not_after = not_after.min(ca_not_after);

    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, name);
    params.distinguished_name = subject;
    params.subject_alt_names =
        vec![SanType::DnsName(name.try_into().map_err(|_| PkiError::InvalidName { name: name.into() })?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);

    let key = KeyPair::generate_for(&PKCS_ED25519).map_err(|source| PkiError::Generate { source })?;
    let cert = params.signed_by(&key, &issuer).map_err(|source| PkiError::Generate { source })?;
    let id = node_id_of(cert.der()).map_err(|source| PkiError::Certificate { path: cert_path.clone(), source })?;

    create_dir(out_dir)?;
    let key_pem = Zeroizing::new(key.serialize_pem());
    write_file(&key_path, key_pem.as_bytes(), 0o600, force)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644, force)?;
    Ok(IssuedNode { cert: cert_path, key: key_path, id, not_after })
}

/// A node's id: the first 16 bytes of SHA-256 over the certificate's SubjectPublicKeyInfo (DER). It depends on the
/// key only, so a renewed certificate for the same key keeps the id.
pub fn node_id_of(cert_der: &[u8]) -> Result<NodeId, CertificateError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|_| CertificateError::Malformed)?;
    if !rest.is_empty() {
        return Err(CertificateError::Malformed);
    }
    Ok(node_id_of_spki(cert.public_key().raw))
}

fn node_id_of_spki(spki_der: &[u8]) -> NodeId {
    let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
    let mut id = [0u8; NodeId::LEN];
    id.copy_from_slice(&digest.as_ref()[..NodeId::LEN]);
    NodeId(id)
}

/// This node's identity: its certificate, the cluster CA and its Ed25519 key.
pub struct NodeIdentity {
    id: NodeId,
    name: Option<String>,
    cert: CertificateDer<'static>,
    ca: CertificateDer<'static>,
    not_after: UnixTime,
    key: Ed25519KeyPair,
    /// PKCS#8 bytes of `key`, kept for the TLS configuration; wiped on drop.
    key_pkcs8: Zeroizing<Vec<u8>>,
}

impl NodeIdentity {
    /// Loads and checks a node identity: the key file must be private to its owner (no group or other bits), the
    /// certificate must chain to `ca_cert` and be valid now, both may be used for TLS server and client auth, and
    /// the key must be the certificate's.
    pub fn load(ca_cert: &Path, cert: &Path, key: &Path) -> Result<NodeIdentity, PkiError> {
        Self::load_at(ca_cert, cert, key, UnixTime::now())
    }

    fn load_at(ca_path: &Path, cert_path: &Path, key_path: &Path, now: UnixTime) -> Result<NodeIdentity, PkiError> {
        let cert_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PkiError::Certificate { path, source }
        };
        // The key's permissions are checked first: a leaked key is worse news than a bad certificate.
        let key_pkcs8 = read_private_key(key_path)?;
        let ca = read_certificate(ca_path)?;
        let ca_parsed = parse(&ca).map_err(cert_error(ca_path))?;
        if !ca_parsed.is_ca {
            return Err(PkiError::Certificate { path: ca_path.into(), source: CertificateError::NotCa });
        }
        check_validity(&ca_parsed, now).map_err(cert_error(ca_path))?;
        let anchor = webpki::anchor_from_trusted_cert(&ca)
            .map_err(|e| PkiError::Certificate { path: ca_path.into(), source: CertificateError::BadCa(e) })?;

        let cert = read_certificate(cert_path)?;
        let parsed = verify_node_certificate(&anchor, &cert, now).map_err(cert_error(cert_path))?;

        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&key_pkcs8)
            .map_err(|source| PkiError::InvalidKey { path: key_path.into(), source })?;
        if key.public_key().as_ref() != parsed.public_key {
            return Err(PkiError::KeyMismatch { key: key_path.into(), cert: cert_path.into() });
        }
        Ok(NodeIdentity {
            id: parsed.id,
            name: parsed.common_name,
            not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(parsed.not_after.max(0) as u64)),
            cert,
            ca,
            key,
            key_pkcs8,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The certificate's common name (the node name given to `weft ca issue`), if it has one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// This node's certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The cluster CA certificate (DER).
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca
    }

    /// When this node's certificate expires.
    pub fn not_after(&self) -> UnixTime {
        self.not_after
    }

    /// Signs `message` with this node's Ed25519 key.
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(self.key.sign(message).as_ref());
        out
    }

    /// A copy of the private key for the TLS configuration.
    pub(crate) fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.to_vec()))
    }
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("NodeIdentity")
            .field("id", &format_args!("{}", self.id))
            .field("name", &self.name)
            .field("not_after", &format_args!("{}", utc(self.not_after)))
            .finish_non_exhaustive()
    }
}

/// Verifies that `cert_der` is a usable node certificate under `anchor` at `now`, returning its parsed fields.
pub(crate) fn verify_node_certificate(
    anchor: &TrustAnchor<'_>,
    cert_der: &CertificateDer<'_>,
    now: UnixTime,
) -> Result<ParsedCertificate, CertificateError> {
    let parsed = parse(cert_der)?;
    if parsed.is_ca {
        // webpki refuses a CA certificate as an end entity too; say so plainly.
        return Err(CertificateError::NotIssuedByCa(webpki::Error::CaUsedAsEndEntity));
    }
    check_validity(&parsed, now)?;
    let end_entity = EndEntityCert::try_from(cert_der).map_err(|_| CertificateError::Malformed)?;
    end_entity
        .verify_for_usage(CHAIN_ALGORITHMS, std::slice::from_ref(anchor), &[], now, NodeUsage, None, None)
        .map_err(|e| match e {
            webpki::Error::CertExpired { not_after, .. } => CertificateError::Expired { not_after },
            webpki::Error::CertNotValidYet { not_before, .. } => CertificateError::NotYetValid { not_before },
            other => CertificateError::NotIssuedByCa(other),
        })?;
    if !parsed.ed25519 {
        return Err(CertificateError::NotEd25519);
    }
    Ok(parsed)
}

/// The fields of a certificate that weft uses.
#[derive(Debug, Clone)]
pub(crate) struct ParsedCertificate {
    /// The node id (hash of the SubjectPublicKeyInfo).
    pub(crate) id: NodeId,
    /// The raw subject public key (32 bytes for Ed25519).
    pub(crate) public_key: Vec<u8>,
    /// The subject key is Ed25519.
    pub(crate) ed25519: bool,
    /// basicConstraints CA:TRUE.
    pub(crate) is_ca: bool,
    /// notBefore and notAfter, seconds since the Unix epoch.
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    /// The subject's first common name.
    pub(crate) common_name: Option<String>,
}

fn parse(der: &[u8]) -> Result<ParsedCertificate, CertificateError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| CertificateError::Malformed)?;
    if !rest.is_empty() {
        return Err(CertificateError::Malformed);
    }
    let spki = cert.public_key();
    let common_name = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
    Ok(ParsedCertificate {
        id: node_id_of_spki(spki.raw),
        public_key: spki.subject_public_key.data.to_vec(),
        ed25519: spki.algorithm.algorithm == OID_SIG_ED25519 && spki.subject_public_key.data.len() == 32,
        is_ca: cert.is_ca(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        common_name,
    })
}

fn check_validity(cert: &ParsedCertificate, now: UnixTime) -> Result<(), CertificateError> {
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let at = |secs: i64| UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs.max(0) as u64));
    if now < cert.not_before {
        return Err(CertificateError::NotYetValid { not_before: at(cert.not_before) });
    }
    if now > cert.not_after {
        return Err(CertificateError::Expired { not_after: at(cert.not_after) });
    }
    Ok(())
}

/// A node certificate serves both ends of a connection, so it must allow serverAuth and clientAuth. As in
/// RFC 5280 §4.2.1.12 (and rustls' own verifiers), a certificate without the EKU extension allows every usage.
struct NodeUsage;

impl ExtendedKeyUsageValidator for NodeUsage {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        let (mut server, mut client) = (false, false);
        let mut present = Vec::new();
        for id in iter {
            let id = id?;
            server |= id == KeyPurposeId::new(EKU_SERVER_AUTH);
            client |= id == KeyPurposeId::new(EKU_CLIENT_AUTH);
            present.push(id.to_decoded_oid());
        }
        let missing = match (present.is_empty(), server, client) {
            (true, _, _) | (false, true, true) => return Ok(()),
            (false, false, _) => EKU_SERVER_AUTH,
            (false, true, false) => EKU_CLIENT_AUTH,
        };
        Err(webpki::Error::RequiredEkuNotFoundContext(webpki::RequiredEkuNotFoundContext {
            required: webpki::KeyUsage::required(missing),
            present,
        }))
    }
}

/// A credential that passed [`PkiAuthenticator::check`].
#[derive(Debug, Clone)]
struct Accepted {
    id: NodeId,
    public_key: Vec<u8>,
    not_after: i64,
}

/// gossip's [`Authenticator`](overlay_proto::gossip::auth::Authenticator) with the cluster PKI: credentials are node
/// certificates (DER), signatures are Ed25519.
pub struct PkiAuthenticator {
    identity: Arc<NodeIdentity>,
    anchor: TrustAnchor<'static>,
    /// Accepted credentials by SHA-256 of their DER. Bounded: when full, one entry is forgotten and checked again
    /// the next time it is seen.
    accepted: HashMap<[u8; 32], Accepted>,
    capacity: usize,
}

impl PkiAuthenticator {
    /// An authenticator for `identity`, trusting `identity`'s CA.
    pub fn new(identity: Arc<NodeIdentity>) -> PkiAuthenticator {
        Self::with_capacity(identity, DEFAULT_CACHE_CAPACITY)
    }

    /// Like [`new`](Self::new), remembering at most `capacity` accepted credentials.
    pub fn with_capacity(identity: Arc<NodeIdentity>, capacity: usize) -> PkiAuthenticator {
        // The CA was parsed as a trust anchor when the identity was loaded, so this cannot fail.
        let anchor = webpki::anchor_from_trusted_cert(identity.ca_der())
            .expect("NodeIdentity::load checked the CA certificate")
            .to_owned();
        PkiAuthenticator { identity, anchor, accepted: HashMap::new(), capacity: capacity.max(1) }
    }

    /// This node's identity.
    pub fn identity(&self) -> &Arc<NodeIdentity> {
        &self.identity
    }

    /// Checks that `credential` is a node certificate from the cluster CA, valid at `now`, whose key hashes to `id`,
    /// and remembers it.
    pub fn check(&mut self, id: NodeId, credential: &[u8], now: UnixTime) -> Result<(), CertificateError> {
        let digest = sha256(credential);
        let accepted = match self.accepted.get(&digest) {
            Some(accepted) => accepted.clone(),
            None => {
                let accepted = check_uncached(&self.anchor, credential, now)?;
                if self.accepted.len() >= self.capacity {
                    if let Some(old) = self.accepted.keys().next().copied() {
                        self.accepted.remove(&old);
                    }
                }
                self.accepted.insert(digest, accepted.clone());
                accepted
            }
        };
        if i64::try_from(now.as_secs()).unwrap_or(i64::MAX) > accepted.not_after {
            self.accepted.remove(&digest);
            return Err(CertificateError::Expired {
                not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(accepted.not_after.max(0) as u64)),
            });
        }
        if accepted.id != id {
            return Err(CertificateError::WrongNode { claimed: id, actual: accepted.id });
        }
        Ok(())
    }

    /// Verifies an Ed25519 `signature` over `message` by the key in `credential`. A credential that is not in the
    /// cache of accepted ones is checked in full first (chain, validity), so a forgotten one still verifies and a
    /// foreign one never does.
    pub fn verify_at(&self, credential: &[u8], message: &[u8], signature: &[u8], now: UnixTime) -> bool {
        let public_key = match self.accepted.get(&sha256(credential)) {
            Some(accepted) => accepted.public_key.clone(),
            None => match check_uncached(&self.anchor, credential, now) {
                Ok(accepted) => accepted.public_key,
                Err(_) => return false,
            },
        };
        signature::UnparsedPublicKey::new(&signature::ED25519, public_key).verify(message, signature).is_ok()
    }
}

fn check_uncached(anchor: &TrustAnchor<'_>, credential: &[u8], now: UnixTime) -> Result<Accepted, CertificateError> {
    let der = CertificateDer::from(credential);
    let parsed = verify_node_certificate(anchor, &der, now)?;
    Ok(Accepted { id: parsed.id, public_key: parsed.public_key, not_after: parsed.not_after })
}

impl fmt::Debug for PkiAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PkiAuthenticator")
            .field("identity", &self.identity)
            .field("accepted", &self.accepted.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl overlay_proto::gossip::auth::Authenticator for PkiAuthenticator {
    fn local_id(&self) -> NodeId {
        self.identity.id()
    }

    fn local_credential(&self) -> &[u8] {
        self.identity.cert_der()
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.identity.sign(message).to_vec()
    }

    fn check_credential(&mut self, id: NodeId, credential: &[u8]) -> bool {
        self.check(id, credential, UnixTime::now()).is_ok()
    }

    fn verify(&self, credential: &[u8], message: &[u8], signature: &[u8]) -> bool {
        self.verify_at(credential, message, signature, UnixTime::now())
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// A random, positive 16-byte serial number (RFC 5280 §4.1.2.2 allows up to 20 octets). The top bit is cleared so
/// the DER INTEGER needs no padding byte, and the next one set so the serial always has all 16 bytes.
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut serial = [0u8; 16];
    SystemRandom::new().fill(&mut serial).map_err(|_| PkiError::Random)?;
    serial[0] &= 0x7f;
    serial[0] |= 0x01 << 6;
    Ok(SerialNumber::from_slice(&serial))
}

fn days(days: u32) -> Result<TimeDuration, PkiError> {
    if days == 0 || days > 100 * 366 {
        return Err(PkiError::InvalidValidity { days });
    }
    Ok(TimeDuration::days(i64::from(days)))
}

/// Formats a time as `YYYY-MM-DD HH:MM:SS UTC` for messages.
pub fn utc(at: UnixTime) -> String {
    match OffsetDateTime::from_unix_timestamp(i64::try_from(at.as_secs()).unwrap_or(i64::MAX)) {
        Ok(t) => format!("{} {:02}:{:02}:{:02} UTC", t.date(), t.hour(), t.minute(), t.second()),
        Err(_) => format!("{} s after the epoch", at.as_secs()),
    }
}

fn refuse_existing(paths: &[&Path]) -> Result<(), PkiError> {
    for path in paths {
        // symlink_metadata: a dangling link is also something we would overwrite.
        if fs::symlink_metadata(path).is_ok() {
            return Err(PkiError::Exists { path: path.to_path_buf() });
        }
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PkiError::Io { path: dir.into(), source })
}

/// Writes `contents` to `path`, creating the file with `mode` so it is never readable by others, not even briefly.
/// Without `force` an existing file is an error (O_EXCL, so no race either). With `force` the contents go to a new
/// temporary file that is renamed over `path`: the old file's permissions are never reused.
fn write_file(path: &Path, contents: &[u8], mode: u32, force: bool) -> Result<(), PkiError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PkiError::Io { path, source }
    };
    let create = |target: &Path| -> Result<(), PkiError> {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(target).map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                PkiError::Exists { path: target.to_path_buf() }
            } else {
                PkiError::Io { path: target.to_path_buf(), source }
            }
        })?;
        file.write_all(contents).and_then(|()| file.sync_all()).map_err(io_error(target))
    };
    if !force {
        return create(path);
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(PkiError::Io { path: tmp, source }),
    }
    create(&tmp)?;
    fs::rename(&tmp, path).map_err(io_error(path))
}

/// When the certificate in `path` (PEM) expires: for `weft doctor`, which warns before it happens.
pub fn certificate_not_after(path: &Path) -> Result<UnixTime, PkiError> {
    let cert = read_certificate(path)?;
    let parsed = parse(&cert).map_err(|source| PkiError::Certificate { path: path.into(), source })?;
    Ok(UnixTime::since_unix_epoch(std::time::Duration::from_secs(parsed.not_after.max(0) as u64)))
}

fn read_certificate(path: &Path) -> Result<CertificateDer<'static>, PkiError> {
    let bytes = fs::read(path).map_err(|source| PkiError::Io { path: path.into(), source })?;
    CertificateDer::from_pem_slice(&bytes).map_err(|source| PkiError::Pem {
        path: path.into(),
        expected: "CERTIFICATE",
        source,
    })
}

/// Reads a PKCS#8 private key, refusing it if group or others have any access (checked on the open file, so the
/// file checked is the file read).
fn read_private_key(path: &Path) -> Result<Zeroizing<Vec<u8>>, PkiError> {
    let io_error = |source| PkiError::Io { path: path.into(), source };
    let mut file = File::open(path).map_err(io_error)?;
    let mode = file.metadata().map_err(io_error)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PkiError::KeyPermissions { path: path.into(), mode });
    }
    let mut pem = Zeroizing::new(Vec::new());
    file.read_to_end(&mut pem).map_err(io_error)?;
    let mut der = PrivatePkcs8KeyDer::from_pem_slice(&pem).map_err(|source| PkiError::Pem {
        path: path.into(),
        expected: "PRIVATE KEY",
        source,
    })?;
    let out = Zeroizing::new(der.secret_pkcs8_der().to_vec());
    der.zeroize();
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use overlay_proto::gossip::auth::Authenticator;

    /// A CA in `dir/ca` and node certificates for `names` in `dir/nodes`.
    pub(crate) fn make_cluster(dir: &Path, names: &[&str]) -> (PathBuf, Vec<IssuedNode>) {
        let ca_dir = dir.join("ca");
        init_ca(&ca_dir, &CaOptions::default()).unwrap();
        let out = dir.join("nodes");
        let nodes = names.iter().map(|n| issue_node(&ca_dir, n, &out, &IssueOptions::default()).unwrap()).collect();
        (ca_dir, nodes)
    }

    pub(crate) fn load(ca_dir: &Path, node: &IssuedNode) -> NodeIdentity {
        NodeIdentity::load(&ca_dir.join(CA_CERT_FILE), &node.cert, &node.key).unwrap()
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_dir, nodes) = make_cluster(dir.path(), &["node-a", "node-b"]);
        assert_eq!(mode_of(&ca_dir.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode_of(&ca_dir), 0o700);
        assert_eq!(mode_of(&nodes[0].key), 0o600);
        assert!(nodes[0].cert.ends_with("nodes/node-a.crt"));

        let a = load(&ca_dir, &nodes[0]);
        let b = load(&ca_dir, &nodes[1]);
        assert_ne!(a.id(), b.id());
        assert_eq!(a.id(), nodes[0].id);
        assert_eq!(a.name(), Some("node-a"));
        // Stable: the id depends on the key only, however often it is derived.
        assert_eq!(load(&ca_dir, &nodes[0]).id(), a.id());
        assert_eq!(node_id_of(a.cert_der()).unwrap(), a.id());

        // Debug never shows the key.
        let debug = format!("{a:?}");
        assert!(debug.contains("node-a") && !debug.contains("key_pkcs8"), "{debug}");

        let mut auth_b = PkiAuthenticator::new(Arc::new(b));
        let auth_a = PkiAuthenticator::new(Arc::new(a));
        let message = b"alive incarnation 7";
        let signature = auth_a.sign(message);
        assert_eq!(signature.len(), SIGNATURE_LEN);
        assert!(auth_b.check_credential(auth_a.local_id(), auth_a.local_credential()));
        assert!(auth_b.verify(auth_a.local_credential(), message, &signature));
        for bit in [0, 100, SIGNATURE_LEN * 8 - 1] {
            let mut bad = signature.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(!auth_b.verify(auth_a.local_credential(), message, &bad), "bit {bit}");
        }
        let mut bad_message = message.to_vec();
        bad_message[0] ^= 1;
        assert!(!auth_b.verify(auth_a.local_credential(), &bad_message, &signature));
        // Its own credential under its own id is fine too; b's key does not verify a's signature.
        let b_credential = auth_b.local_credential().to_vec();
        assert!(auth_b.check_credential(auth_b.local_id(), &b_credential));
        assert!(!auth_b.verify(&b_credential, message, &signature));
    }

    #[test]
    fn node_certificate_profile() {
        let dir = tempfile::tempdir().unwrap();
        let (_, nodes) = make_cluster(dir.path(), &["db-1.example"]);
        let der = read_certificate(&nodes[0].cert).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(!cert.is_ca());
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names, vec![x509_parser::extensions::GeneralName::DNSName("db-1.example")]);
        let eku = cert.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth && eku.value.client_auth);
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86400;
        assert_eq!(days, 365);
    }

    #[test]
    fn refuses_group_readable_key() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_dir, nodes) = make_cluster(dir.path(), &["node-a"]);
        fs::set_permissions(&nodes[0].key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = NodeIdentity::load(&ca_dir.join(CA_CERT_FILE), &nodes[0].cert, &nodes[0].key).unwrap_err();
        assert!(matches!(err, PkiError::KeyPermissions { mode: 0o644, .. }), "{err:?}");
        let message = err.to_string();
        let key = nodes[0].key.display().to_string();
        assert!(message.contains(&format!("chmod 600 {key}")) && message.starts_with(&key), "{message}");

        // The CA key is checked the same way before issuing.
        fs::set_permissions(ca_dir.join(CA_KEY_FILE), fs::Permissions::from_mode(0o640)).unwrap();
        let err = issue_node(&ca_dir, "node-b", dir.path(), &IssueOptions::default()).unwrap_err();
        assert!(matches!(err, PkiError::KeyPermissions { mode: 0o640, .. }), "{err:?}");
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_dir, nodes) = make_cluster(dir.path(), &["node-a"]);
        let err = init_ca(&ca_dir, &CaOptions::default()).unwrap_err();
        assert!(matches!(err, PkiError::Exists { .. }), "{err:?}");
        let out = dir.path().join("nodes");
        let err = issue_node(&ca_dir, "node-a", &out, &IssueOptions::default()).unwrap_err();
        assert!(matches!(err, PkiError::Exists { .. }), "{err:?}");

        // --force replaces the key (a new id) and the new file is 0600 even if the old one was not.
        fs::set_permissions(&nodes[0].key, fs::Permissions::from_mode(0o644)).unwrap();
        let again = issue_node(&ca_dir, "node-a", &out, &IssueOptions { force: true, ..Default::default() }).unwrap();
        assert_ne!(again.id, nodes[0].id);
        assert_eq!(mode_of(&again.key), 0o600);
        assert_eq!(load(&ca_dir, &again).id(), again.id);
        init_ca(&ca_dir, &CaOptions { force: true, ..Default::default() }).unwrap();
        assert_eq!(mode_of(&ca_dir.join(CA_KEY_FILE)), 0o600);
    }

    #[test]
    fn refuses_bad_names_and_validity() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_dir, _) = make_cluster(dir.path(), &[]);
        for name in ["", "../evil", "a/b", "with space", ".hidden", ".."] {
            let err = issue_node(&ca_dir, name, dir.path(), &IssueOptions::default()).unwrap_err();
            assert!(matches!(err, PkiError::InvalidName { .. }), "{name:?}: {err:?}");
        }
        let err = issue_node(&ca_dir, "ok", dir.path(), &IssueOptions { days: 0, force: false }).unwrap_err();
        assert!(matches!(err, PkiError::InvalidValidity { days: 0 }), "{err:?}");
    }

    #[test]
    fn refuses_other_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_dir, nodes) = make_cluster(&dir.path().join("one"), &["node-a"]);
        let (_, strangers) = make_cluster(&dir.path().join("two"), &["node-x"]);
        let ca = ca_dir.join(CA_CERT_FILE);

        let err = NodeIdentity::load(&ca, &strangers[0].cert, &strangers[0].key).unwrap_err();
        assert!(matches!(err, PkiError::Certificate { source: CertificateError::NotIssuedByCa(_), .. }), "{err:?}");
        assert!(err.to_string().contains("node-x.crt"), "{err}");

        let mut auth = PkiAuthenticator::new(Arc::new(load(&ca_dir, &nodes[0])));
        let stranger_der = read_certificate(&strangers[0].cert).unwrap();
        assert!(!auth.check_credential(strangers[0].id, &stranger_der));
        assert!(matches!(
            auth.check(strangers[0].id, &stranger_der, UnixTime::now()),
            Err(CertificateError::NotIssuedByCa(_))
        ));
        // Whatever it signs does not verify, even unasked.
        let two = dir.path().join("two/ca");
        let stranger = NodeIdentity::load(&two.join(CA_CERT_FILE), &strangers[0].cert, &strangers[0].key).unwrap();
        assert!(!auth.verify(&stranger_der, b"m", &stranger.sign(b"m")));
        // Nor is a CA certificate a node credential, even ours.
        let ca_der = read_certificate(&ca).unwrap();
        assert!(!auth.check_credential(node_id_of(&ca_der).unwrap(), &ca_der));
        assert!(!auth.check_credential(NodeId([0; 16]), b"not a certificate"));
    }

    #[test]
    fn refuses_credential_under_wrong_id() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_dir, nodes) = make_cluster(dir.path(), &["node-a", "node-b"]);
        let a = load(&ca_dir, &nodes[0]);
        let b_der = read_certificate(&nodes[1].cert).unwrap();
        let mut auth = PkiAuthenticator::new(Arc::new(a));
        // Before and after the credential is cached under its real id.
        assert!(!auth.check_credential(nodes[0].id, &b_der));
        assert!(auth.check_credential(nodes[1].id, &b_der));
        assert_eq!(
            auth.check(nodes[0].id, &b_der, UnixTime::now()),
            Err(CertificateError::WrongNode { claimed: nodes[0].id, actual: nodes[1].id })
        );
    }

    #[test]
    fn refuses_expired_and_not_yet_valid() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_dir, nodes) = make_cluster(dir.path(), &["node-a"]);
        let now = OffsetDateTime::now_utc();
        let out = dir.path().join("old");
        let old =
            issue_node_valid(&ca_dir, "old", &out, false, now - TimeDuration::days(30), now - TimeDuration::days(1))
                .unwrap();
        let err = NodeIdentity::load(&ca_dir.join(CA_CERT_FILE), &old.cert, &old.key).unwrap_err();
        assert!(matches!(err, PkiError::Certificate { source: CertificateError::Expired { .. }, .. }), "{err:?}");
        assert!(err.to_string().contains("expired on"), "{err}");

        let mut auth = PkiAuthenticator::new(Arc::new(load(&ca_dir, &nodes[0])));
        let old_der = read_certificate(&old.cert).unwrap();
        assert!(!auth.check_credential(old.id, &old_der));

        // A cached credential is refused once its time is up.
        let a_der = read_certificate(&nodes[0].cert).unwrap();
        assert!(auth.check_credential(nodes[0].id, &a_der));
        let later = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            (now + TimeDuration::days(400)).unix_timestamp() as u64,
        ));
        assert!(matches!(auth.check(nodes[0].id, &a_der, later), Err(CertificateError::Expired { .. })));

        let future =
            issue_node_valid(&ca_dir, "future", &out, false, now + TimeDuration::days(1), now + TimeDuration::days(2))
                .unwrap();
        let err = NodeIdentity::load(&ca_dir.join(CA_CERT_FILE), &future.cert, &future.key).unwrap_err();
        assert!(matches!(err, PkiError::Certificate { source: CertificateError::NotYetValid { .. }, .. }), "{err:?}");
    }

    #[test]
    fn refuses_key_of_another_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_dir, nodes) = make_cluster(dir.path(), &["node-a", "node-b"]);
        let err = NodeIdentity::load(&ca_dir.join(CA_CERT_FILE), &nodes[0].cert, &nodes[1].key).unwrap_err();
        assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err:?}");
        // A certificate where a key belongs: a PEM error naming the file.
        let not_a_key = dir.path().join("not-a-key.pem");
        write_file(&not_a_key, &fs::read(ca_dir.join(CA_CERT_FILE)).unwrap(), 0o600, false).unwrap();
        let err = NodeIdentity::load(&ca_dir.join(CA_CERT_FILE), &nodes[0].cert, &not_a_key).unwrap_err();
        assert!(matches!(err, PkiError::Pem { expected: "PRIVATE KEY", .. }), "{err:?}");
        assert!(err.to_string().starts_with(&not_a_key.display().to_string()), "{err}");
        // And a key where the certificate belongs.
        let err = NodeIdentity::load(&ca_dir.join(CA_CERT_FILE), &nodes[0].key, &nodes[0].key).unwrap_err();
        assert!(matches!(err, PkiError::Pem { expected: "CERTIFICATE", .. }), "{err:?}");
        // A node certificate in the CA's place.
        let err = NodeIdentity::load(&nodes[0].cert, &nodes[0].cert, &nodes[0].key).unwrap_err();
        assert!(matches!(err, PkiError::Certificate { source: CertificateError::NotCa, .. }), "{err:?}");
    }

    #[test]
    fn cache_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_dir, nodes) = make_cluster(dir.path(), &["a", "b", "c"]);
        let mut auth = PkiAuthenticator::with_capacity(Arc::new(load(&ca_dir, &nodes[0])), 2);
        for node in &nodes {
            let der = read_certificate(&node.cert).unwrap();
            assert!(auth.check_credential(node.id, &der));
            assert!(auth.accepted.len() <= 2);
        }
        // A forgotten credential still verifies (checked in full again).
        let c = load(&ca_dir, &nodes[2]);
        for node in &nodes[..2] {
            let der = read_certificate(&node.cert).unwrap();
            let signer = load(&ca_dir, node);
            assert!(auth.verify(&der, b"m", &signer.sign(b"m")));
        }
        assert!(auth.verify(c.cert_der(), b"m", &c.sign(b"m")));
    }
}
