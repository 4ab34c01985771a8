//! This gateway's TLS material: its certificate chain and key, and the trust anchors
//! for peer gateways, read from PEM files and turned into rustls configurations. The
//! files are read again every `[federation] watch_every` and at each reload; new
//! connections take the new material at once, open links keep theirs. A file that
//! does not read or parse leaves the old material in force, logged with its path and
//! counted.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::identity::{self, Names};
use crate::config::FederationConfig;
use crate::live::Live;
use crate::metrics as m;

/// The ALPN protocol of federation links.
pub const ALPN: &[u8] = b"distgate/1";

/// Where the material comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The private key (PEM).
    pub key: PathBuf,
    /// The trust anchors (PEM).
    pub ca: PathBuf,
}

impl Paths {
    /// The paths `[federation]` names, when it names all three.
    pub fn of(config: &FederationConfig) -> Option<Paths> {
        Some(Paths {
            cert: config.cert.clone()?,
            key: config.key.clone()?,
            ca: config.ca.clone()?,
        })
    }
}

/// Material that cannot be used: which file, and why.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {why}")]
pub struct MaterialError {
    /// The file at fault.
    pub path: String,
    /// What is wrong with it.
    pub why: String,
}

fn fault(path: &Path, why: impl fmt::Display) -> MaterialError {
    MaterialError {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// Loaded material, ready to serve and dial with.
pub struct Material {
    /// What peer gateways are served with (client certificates required).
    pub server: Arc<ServerConfig>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<dyn rustls::sign::SigningKey>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    /// This gateway's own certificate's names (its serial, its expiry).
    pub names: Names,
    /// A digest of the three files' bytes, to tell a change.
    digest: [u8; 32],
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Material")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// The three files' bytes.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

impl Files {
    fn read(paths: &Paths) -> Result<Files, MaterialError> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| fault(p, e));
        Ok(Files {
            cert: read(&paths.cert)?,
            key: read(&paths.key)?,
            ca: read(&paths.ca)?,
        })
    }

    fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        for part in [&self.cert, &self.key, &self.ca] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        hash.finalize().into()
    }
}

impl Material {
    /// Reads and checks the files of `paths`.
    pub fn load(paths: &Paths) -> Result<Material, MaterialError> {
        Material::build(paths, Files::read(paths)?)
    }

    fn build(paths: &Paths, files: Files) -> Result<Material, MaterialError> {
        let digest = files.digest();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files.cert)
            .collect::<Result<_, _>>()
            .map_err(|e| fault(&paths.cert, e))?;
        let Some(leaf) = chain.first() else {
            return Err(fault(&paths.cert, "holds no certificate"));
        };
        let names = identity::names(leaf).map_err(|e| fault(&paths.cert, e))?;
        let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| fault(&paths.key, e))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&files.ca) {
            let ca = ca.map_err(|e| fault(&paths.ca, e))?;
            roots.add(ca).map_err(|e| fault(&paths.ca, e))?;
        }
        if roots.is_empty() {
            return Err(fault(&paths.ca, "holds no certificate"));
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key =
            (provider.key_provider.load_private_key(key)).map_err(|e| fault(&paths.key, e))?;
        let certified = rustls::sign::CertifiedKey::new(chain.clone(), Arc::clone(&key));
        certified.keys_match().map_err(|e| {
            fault(
                &paths.key,
                format!("does not belong to the certificate: {e}"),
            )
        })?;
        let clients =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(|e| fault(&paths.ca, e))?;
        let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| fault(&paths.cert, e))?
            .with_client_cert_verifier(clients)
            .with_cert_resolver(Arc::new(Resolver(Arc::new(certified))));
        server.alpn_protocols = vec![ALPN.to_vec()];
        // Tickets would let a resumed session skip the chain check against a newer `ca`.
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(Material {
            server: Arc::new(server),
            chain,
            key,
            roots,
            provider,
            names,
            digest,
        })
    }

    /// What to dial the peer gateway `identity` with: this gateway's certificate, and
    /// a verifier that wants the chain to end at `ca` and the certificate to be
    /// `identity` (a SPIFFE ID or DNS name).
    pub fn client(&self, identity: &str) -> Arc<ClientConfig> {
        let verifier = Arc::new(PeerVerifier {
            roots: Arc::clone(&self.roots),
            provider: Arc::clone(&self.provider),
            identity: identity.to_owned(),
        });
        let certified = Arc::new(rustls::sign::CertifiedKey::new(
            self.chain.clone(),
            Arc::clone(&self.key),
        ));
        let builder = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13]);
        let mut config = match builder {
            Ok(b) => b
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_client_cert_resolver(Arc::new(Resolver(certified))),
            // Unreachable: the provider supports TLS 1.3 (checked when loaded).
            Err(_) => return Arc::new(self.fallback_client()),
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }

    fn fallback_client(&self) -> ClientConfig {
        ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_root_certificates(RootCertStore::empty())
                    .with_no_client_auth()
            })
            .unwrap_or_else(|_| {
                ClientConfig::builder()
                    .with_root_certificates(RootCertStore::empty())
                    .with_no_client_auth()
            })
    }
}

/// Always this gateway's certificate, whatever the server asks.
#[derive(Debug)]
struct Resolver(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(
        &self,
        _client_hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Checks a peer gateway's certificate: its chain ends at one of `roots`, and it is
/// `identity` (rustls's own verifier checks DNS names and IP addresses only).
struct PeerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    identity: String,
}

impl fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerVerifier")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        let algorithms = self.provider.signature_verification_algorithms;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            algorithms.all,
        )?;
        let names = identity::names(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        if !names.is(&self.identity) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The material in force, and where it is read from.
#[derive(Debug)]
pub struct Materials {
    current: Live<Arc<Material>>,
    paths: Mutex<Paths>,
    /// What failed last (a digest of the files, or the read error), so that a broken
    /// file is logged and counted once, not at every look.
    failed: Mutex<Option<String>>,
}

impl Materials {
    /// The material of `paths`, which must load.
    pub fn load(paths: Paths) -> Result<Materials, MaterialError> {
        let material = Material::load(&paths)?;
        gauge_expiry(&material);
        Ok(Materials {
            current: Live::new(Arc::new(material)),
            paths: Mutex::new(paths),
            failed: Mutex::new(None),
        })
    }

    /// The material in force now.
    pub fn get(&self) -> Arc<Material> {
        Arc::clone(&self.current.get())
    }

    /// Reads the files again (from `paths` when given: a reload may name others) and
    /// puts what they hold in force if it changed and loads; otherwise the old material
    /// stays, and a file that does not load is logged (once per content) and counted.
    pub fn refresh(&self, paths: Option<Paths>) {
        let paths = {
            let mut current = self.paths.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(paths) = paths {
                *current = paths;
            }
            current.clone()
        };
        let files = match Files::read(&paths) {
            Ok(files) => files,
            Err(e) => return self.failed(e.to_string(), &e),
        };
        let digest = files.digest();
        if digest == self.get().digest {
            *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return;
        }
        let key: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        match Material::build(&paths, files) {
            Ok(material) => {
                info!(
                    serial = %material.names.serial, identity = %material.names.shown(),
                    "federation certificate loaded; new connections use it, open links keep theirs"
                );
                gauge_expiry(&material);
                ::metrics::counter!(m::FEDERATION_CERT_RELOADS, "result" => "ok").increment(1);
                self.current.set(Arc::new(material));
                *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            Err(e) => self.failed(key, &e),
        }
    }

    fn failed(&self, key: String, e: &MaterialError) {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        let again = failed.as_ref() == Some(&key);
        *failed = Some(key);
        drop(failed);
        if !again {
            ::metrics::counter!(m::FEDERATION_CERT_RELOADS, "result" => "error").increment(1);
            warn!(path = %e.path, "federation certificate not loaded, the old one stays in force: {}", e.why);
        }
    }
}

fn gauge_expiry(material: &Material) {
    ::metrics::gauge!(m::FEDERATION_CERT_EXPIRY).set(material.names.not_after as f64);
}
