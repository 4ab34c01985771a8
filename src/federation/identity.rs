//! Who a peer gateway is: the names its certificate carries (URI and DNS SANs), and
//! whether they are the identity a route expects or one that `[federation] peers`
//! admits. rustls checks the chain; it does not read URI SANs, so SPIFFE IDs are
//! checked here: a SPIFFE identity is a certificate's one and only URI SAN, and a
//! certificate that is a CA is nobody's identity.

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::glob::wildcard_match;

/// Longest identity shown (a log line, `/links`).
pub const MAX_IDENTITY: usize = 255;
/// Longest SAN that can be an identity at all (longer ones are nobody: a name is
/// never cut and then matched).
const MAX_SAN: usize = 2048;

/// The names a certificate carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    /// URI SANs.
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// Whether it says it is a CA (`basicConstraints CA:TRUE`).
    pub is_ca: bool,
    /// Its serial, hex with `:` (as `openssl x509 -serial` groups it).
    pub serial: String,
    /// Its not-after, seconds since the Unix epoch.
    pub not_after: i64,
}

/// The names of DER certificate `der`, or why it cannot be read.
pub fn names(der: &[u8]) -> Result<Names, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let mut names = Names {
        is_ca: cert.is_ca(),
        serial: cert.raw_serial_as_string(),
        not_after: cert.validity().not_after.timestamp(),
        ..Names::default()
    };
    let san = cert.subject_alternative_name().map_err(|e| e.to_string())?;
    for name in san.iter().flat_map(|san| &san.value.general_names) {
        match name {
            GeneralName::URI(uri) => names.uris.push((*uri).to_owned()),
            GeneralName::DNSName(dns) => names.dns.push((*dns).to_owned()),
            _ => {}
        }
    }
    Ok(names)
}

/// `s` cut to [`MAX_IDENTITY`] characters, control characters replaced: for logs.
pub fn bounded(s: &str) -> String {
    let shown = s.chars().take(MAX_IDENTITY);
    shown
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

impl Names {
    /// The identities this certificate can stand for: its URI SAN when it has exactly
    /// one (a SPIFFE SVID has one), then its DNS names. None for a CA.
    fn identities(&self) -> impl Iterator<Item = &str> {
        self.uri().into_iter().chain(self.dns_names())
    }

    /// Its one URI SAN (a SPIFFE SVID carries exactly one); none for a CA.
    fn uri(&self) -> Option<&str> {
        let one = !self.is_ca && self.uris.len() == 1 && self.uris[0].len() <= MAX_SAN;
        one.then(|| self.uris[0].as_str())
    }

    /// Its DNS SANs (none for a CA), leaving out any that look like a URI.
    fn dns_names(&self) -> impl Iterator<Item = &str> {
        let names = self.dns.iter().map(String::as_str);
        names.filter(|name| !self.is_ca && name.len() <= MAX_SAN && !name.contains("://"))
    }

    /// Whether the certificate is `expected`: a SPIFFE ID equal to its one URI SAN,
    /// or a DNS name among its DNS SANs (letter case aside).
    pub fn is(&self, expected: &str) -> bool {
        match expected.starts_with("spiffe://") {
            true => self.uri() == Some(expected),
            false => self
                .dns_names()
                .any(|name| name.eq_ignore_ascii_case(expected)),
        }
    }

    /// The first of its identities that a glob of `peers` matches, with that glob
    /// (the bounded `peer` label: the configuration holds so many).
    pub fn admitted_by<'p>(&self, peers: &'p [String]) -> Option<(String, &'p str)> {
        self.identities().find_map(|id| {
            let glob = peers.iter().find(|glob| wildcard_match(glob, id))?;
            Some((id.to_owned(), glob.as_str()))
        })
    }

    /// What a log line says the certificate is, bounded.
    pub fn shown(&self) -> String {
        let all: Vec<&str> = (self.uris.iter().chain(&self.dns))
            .map(String::as_str)
            .collect();
        let shown = all.join(",");
        bounded(if shown.is_empty() { "(no SAN)" } else { &shown })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(uris: &[&str], dns: &[&str], is_ca: bool) -> Names {
        Names {
            uris: uris.iter().map(|s| s.to_string()).collect(),
            dns: dns.iter().map(|s| s.to_string()).collect(),
            is_ca,
            ..Names::default()
        }
    }

    #[test]
    fn a_spiffe_identity_is_the_one_uri_san() {
        let id = "spiffe://b.example/ns/distgate/sa/gateway";
        assert!(names(&[id], &[], false).is(id));
        assert!(!names(&[id, "spiffe://b.example/other"], &[], false).is(id));
        assert!(!names(&[id], &[], true).is(id), "a CA is nobody");
        assert!(!names(&["spiffe://b.example/ns/distgate/sa/gatewayX"], &[], false).is(id));
        // A DNS SAN that spells the ID is no URI SAN.
        assert!(!names(&[], &[id], false).is(id));
    }

    #[test]
    fn a_dns_identity_is_any_dns_san() {
        let n = names(
            &["spiffe://b.example/x"],
            &["gw-b.example", "GW.b.example"],
            false,
        );
        assert!(n.is("gw-b.example") && n.is("gw.B.example"));
        assert!(!n.is("b.example"));
    }

    #[test]
    fn peers_admit_by_glob_over_uri_and_dns_sans() {
        let peers = vec![
            "spiffe://b.example/ns/*/sa/gateway".to_owned(),
            "*.gw.example".into(),
        ];
        let n = names(&["spiffe://b.example/ns/distgate/sa/gateway"], &[], false);
        let admitted = n.admitted_by(&peers).unwrap();
        assert_eq!(
            admitted,
            (
                "spiffe://b.example/ns/distgate/sa/gateway".to_owned(),
                peers[0].as_str()
            )
        );
        let n = names(
            &["spiffe://c.example/ns/distgate/sa/gateway"],
            &["c.gw.example"],
            false,
        );
        assert_eq!(n.admitted_by(&peers).unwrap().0, "c.gw.example");
        // A name too long to be anyone's is not cut into one a glob matches.
        let long = format!("spiffe://b.example/ns/{}/sa/gateway", "x".repeat(3000));
        assert_eq!(names(&[&long], &[], false).admitted_by(&peers), None);
        assert_eq!(
            names(&["spiffe://c.example/x"], &["gw.c.example"], false).admitted_by(&peers),
            None
        );
        assert_eq!(
            names(&[], &["c.gw.example"], true).admitted_by(&peers),
            None
        );
    }
}
