//! Test certificates for federation, made with rcgen: a CA, and leaves signed by it
//! for gateways (a SPIFFE URI SAN, server and client auth), written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// A certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A gateway's files: chain, key, and the CA that signed it.
#[derive(Debug, Clone)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf for `identity` (a SPIFFE ID, or a DNS name), with serial `serial`: its
    /// certificate and key PEM.
    pub fn leaf(&self, identity: &str, serial: u64) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let san = match identity.starts_with("spiffe://") {
            true => SanType::URI(identity.try_into().unwrap()),
            false => SanType::DnsName(identity.try_into().unwrap()),
        };
        params.subject_alt_names = vec![san];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a leaf for `identity` and this CA into `dir` as `<stem>.crt`,
    /// `<stem>.key` and `<stem>-ca.crt`.
    pub fn write(&self, dir: &Path, stem: &str, identity: &str, serial: u64) -> Files {
        let (cert, key) = self.leaf(identity, serial);
        let files = Files {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
            ca: dir.join(format!("{stem}-ca.crt")),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        std::fs::write(&files.ca, self.pem()).unwrap();
        files
    }
}

impl Files {
    /// `[federation]` with these files.
    pub fn federation(&self) -> distgate::config::FederationConfig {
        distgate::config::FederationConfig {
            cert: Some(self.cert.clone()),
            key: Some(self.key.clone()),
            ca: Some(self.ca.clone()),
            ..Default::default()
        }
    }
}
