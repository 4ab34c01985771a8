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

/// A leaf's certificate and key (PEM) and its serial number as `openssl x509 -serial`
/// prints it (upper-case hex), for tests that rotate certificates.
pub struct Leaf {
    pub cert: String,
    pub key: String,
    pub serial: String,
}

/// Where a leaf's files are: certificate chain and key.
#[derive(Debug, Clone)]
pub struct LeafFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    /// [`Ca::leaf`] as a [`Leaf`] whose serial is `serial` with its first byte made
    /// 0x40..=0x7f: DER keeps its eight bytes as they are (no leading zero added or
    /// dropped), so `Leaf::serial` is what openssl prints.
    pub fn issue(&self, identity: &str, serial: u64) -> Leaf {
        let serial = (serial & (u64::MAX >> 2)) | (1 << 62);
        let (cert, key) = self.leaf(identity, serial);
        Leaf {
            cert,
            key,
            serial: format!("{serial:016X}"),
        }
    }
}

impl Leaf {
    /// Writes the certificate and key as `<dir>/<name>.crt` and `<dir>/<name>.key`.
    pub fn write(&self, dir: &Path, name: &str) -> LeafFiles {
        let files = LeafFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, &self.cert).unwrap();
        std::fs::write(&files.key, &self.key).unwrap();
        files
    }

    /// Replaces the files at `files` with this leaf: each written beside its target,
    /// then renamed over it (the key first), so no reader sees a half-written file.
    pub fn replace(&self, files: &LeafFiles) {
        for (path, text) in [(&files.key, &self.key), (&files.cert, &self.cert)] {
            let next = path.with_extension("next");
            std::fs::write(&next, text).unwrap();
            std::fs::rename(&next, path).unwrap();
        }
    }
}

/// A SPIFFE ID for the gateway of trust domain `domain`, as the tests name them.
pub fn gateway_id(domain: &str) -> String {
    format!("spiffe://{domain}/ns/distgate/sa/gateway")
}
