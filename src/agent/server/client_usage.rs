//! The client-certificate verifier: the pinned CA's checks, plus the client-auth usage, which
//! webpki does not require of a certificate that lists no extended key usage at all.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

/// Wraps the webpki verifier; refuses an end-entity certificate without `clientAuth` usage.
#[derive(Debug)]
pub(crate) struct RequireClientAuthUsage(pub(crate) Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for RequireClientAuthUsage {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self.0.verify_client_cert(end_entity, intermediates, now)?;
        if !has_client_auth_usage(end_entity) {
            return Err(Error::InvalidCertificate(CertificateError::InvalidPurpose));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `2.5.29.37`, extended key usage.
const EKU: &[u8] = &[0x55, 0x1d, 0x25];
/// `1.3.6.1.5.5.7.3.2`, TLS client authentication.
const CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// Whether the certificate's extended key usage extension lists `clientAuth`. The certificate
/// has already been verified as signed by the pinned CA; this only reads it.
pub(super) fn has_client_auth_usage(cert: &[u8]) -> bool {
    let Some((0x30, certificate, _)) = crate::pki::tlv(cert) else {
        return false;
    };
    let Some((0x30, mut tbs, _)) = crate::pki::tlv(certificate) else {
        return false;
    };
    // Skip to the explicit [3] extensions, the last field of a v3 TBSCertificate.
    while let Some((tag, body, rest)) = crate::pki::tlv(tbs) {
        tbs = rest;
        if tag != 0xa3 {
            continue;
        }
        let Some((0x30, mut exts, _)) = crate::pki::tlv(body) else {
            return false;
        };
        while let Some((_, ext, rest)) = crate::pki::tlv(exts) {
            exts = rest;
            let Some((0x06, oid, mut fields)) = crate::pki::tlv(ext) else {
                continue;
            };
            if oid != EKU {
                continue;
            }
            // An optional `critical` BOOLEAN, then the OCTET STRING holding the usages.
            while let Some((tag, value, rest)) = crate::pki::tlv(fields) {
                fields = rest;
                if tag != 0x04 {
                    continue;
                }
                let Some((0x30, mut usages, _)) = crate::pki::tlv(value) else {
                    return false;
                };
                while let Some((tag, usage, rest)) = crate::pki::tlv(usages) {
                    usages = rest;
                    if tag == 0x06 && usage == CLIENT_AUTH {
                        return true;
                    }
                }
                return false;
            }
        }
        return false;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(ekus: Vec<rcgen::ExtendedKeyUsagePurpose>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
        params.extended_key_usages = ekus;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn client_auth_usage_is_read_from_the_certificate() {
        use rcgen::ExtendedKeyUsagePurpose as P;
        assert!(has_client_auth_usage(&cert(vec![P::ClientAuth])));
        assert!(has_client_auth_usage(&cert(vec![
            P::ServerAuth,
            P::ClientAuth
        ])));
        assert!(!has_client_auth_usage(&cert(vec![])));
        assert!(!has_client_auth_usage(&cert(vec![P::ServerAuth])));
        assert!(!has_client_auth_usage(b"not a certificate"));
    }
}
