//! `weft-quic-flood`: a flood of QUIC handshakes at a weft control port from a client whose certificate comes
//! from a foreign CA, for the adversarial tests. The client trusts the cluster CA (an attacker can have that public
//! certificate), so the TLS handshake gets as far as the server checking the client's certificate, which it must
//! refuse. Every attempt is classified:
//!
//! - `refused`: the connection failed or was closed with a TLS (crypto) error code;
//! - `accepted`: it stayed open for 3 s after the handshake, which must never happen;
//! - `other`: anything else (timeouts, resets).
//!
//! ```text
//! weft-quic-flood --ca ca.crt --cert rogue.crt --key rogue.key --to 198.18.0.1:7946 --server-name h1 \
//!                 --bind 198.18.0.2 --count 200 --concurrency 20
//! ```
//!
//! It prints `attempts N refused R accepted A other O` when done.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use quinn::ConnectionError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::task::JoinSet;

const USAGE: &str = "usage: weft-quic-flood --ca F --cert F --key F --to ADDR:PORT --server-name NAME --bind IP \
                     --count N --concurrency C";
/// weft's ALPN.
const ALPN: &[u8] = b"weft/1";
/// How long an established connection is watched for the server's refusal.
const WATCH: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Refused,
    Accepted,
    Other,
}

/// TLS alerts travel as QUIC CRYPTO_ERROR codes 0x100-0x1ff (RFC 9001 §4.8).
fn is_crypto(code: u64) -> bool {
    (0x100..0x200).contains(&code)
}

fn classify(error: &ConnectionError) -> Outcome {
    match error {
        ConnectionError::TransportError(e) if is_crypto(u64::from(e.code)) => Outcome::Refused,
        ConnectionError::ConnectionClosed(close) if is_crypto(u64::from(close.error_code)) => Outcome::Refused,
        _ => Outcome::Other,
    }
}

async fn attempt(endpoint: quinn::Endpoint, to: SocketAddr, name: String) -> (Outcome, String) {
    let connecting = match endpoint.connect(to, &name) {
        Ok(c) => c,
        Err(e) => return (Outcome::Other, format!("connect: {e}")),
    };
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Err(_) => (Outcome::Other, "handshake timed out".into()),
        Ok(Err(e)) => (classify(&e), e.to_string()),
        // TLS 1.3: the client is done before the server has checked its certificate; the refusal follows.
        Ok(Ok(connection)) => match tokio::time::timeout(WATCH, connection.closed()).await {
            Ok(e) => (classify(&e), e.to_string()),
            Err(_) => {
                connection.close(0u32.into(), b"done");
                (Outcome::Accepted, "still open".into())
            }
        },
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(key) = it.next() {
        let key = key.strip_prefix("--").ok_or_else(|| anyhow!("unexpected argument {key}\n{USAGE}"))?.to_owned();
        args.insert(key, it.next().ok_or_else(|| anyhow!("a value is missing\n{USAGE}"))?);
    }
    let get = |key: &str| args.get(key).ok_or_else(|| anyhow!("missing --{key}\n{USAGE}"));
    let ca = CertificateDer::from_pem_file(get("ca")?).context("--ca")?;
    let cert = CertificateDer::from_pem_file(get("cert")?).context("--cert")?;
    let key = PrivateKeyDer::from_pem_file(get("key")?).context("--key")?;
    let to: SocketAddr = get("to")?.parse().context("--to")?;
    let name = get("server-name")?.clone();
    let bind: IpAddr = get("bind")?.parse().context("--bind")?;
    let count: usize = get("count")?.parse().context("--count")?;
    let concurrency: usize = get("concurrency")?.parse().context("--concurrency")?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert], key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut endpoint = quinn::Endpoint::client(SocketAddr::new(bind, 0))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));

    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut samples: Vec<String> = Vec::new();
    let mut running = JoinSet::new();
    let mut started = 0;
    while started < count || !running.is_empty() {
        while started < count && running.len() < concurrency {
            running.spawn(attempt(endpoint.clone(), to, name.clone()));
            started += 1;
        }
        let (outcome, detail) = running.join_next().await.expect("not empty")?;
        let label = match outcome {
            Outcome::Refused => "refused",
            Outcome::Accepted => "accepted",
            Outcome::Other => "other",
        };
        *counts.entry(label).or_default() += 1;
        if samples.len() < 3 && !samples.contains(&detail) {
            samples.push(detail);
        }
    }
    endpoint.wait_idle().await;
    eprintln!("sample outcomes: {samples:?}");
    println!(
        "attempts {count} refused {} accepted {} other {}",
        counts.get("refused").unwrap_or(&0),
        counts.get("accepted").unwrap_or(&0),
        counts.get("other").unwrap_or(&0)
    );
    Ok(())
}
