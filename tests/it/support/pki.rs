//! Test certificates made with rcgen: a CA and leaves signed by it for federated
//! gateways, each leaf carrying one SPIFFE URI SAN and usable for server and client
//! authentication, written as PEM files (rotations write new files and rename them over
//! the old ones, as an operator's tooling would).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};

/// A certificate authority: its certificate (PEM) and what signs with it.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf's certificate and key (PEM) and its serial number as `openssl x509 -serial`
/// prints it (upper-case hex).
pub struct Leaf {
    pub cert: String,
    pub key: String,
    pub serial: String,
}

/// Where a leaf's files are: certificate chain and key.
#[derive(Clone)]
pub struct LeafFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for URI SAN `spiffe` (a SPIFFE ID) with serial number `serial`, for
    /// server and client authentication.
    pub fn leaf(&self, spiffe: &str, serial: u64) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, spiffe.to_owned());
        params.subject_alt_names = vec![SanType::URI(spiffe.try_into().unwrap())];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // The first byte in 0x40..=0x7f: DER keeps the eight bytes as they are (no
        // leading zero added or dropped), so the hex below is what openssl prints.
        let mut bytes = serial.to_be_bytes();
        bytes[0] = 0x40 | (bytes[0] & 0x3f);
        params.serial_number = Some(SerialNumber::from_slice(&bytes));
        let cert = params.signed_by(&key, &self.issuer).unwrap().pem();
        let hex: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
        Leaf {
            cert,
            key: key.serialize_pem(),
            serial: hex,
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
