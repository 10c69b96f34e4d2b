//! Signed approvals: a small record (app, rollout, step, decision, approver, time) signed with an
//! approver certificate's key, and its verification against a CA. No I/O: callers read the files.
//!
//! An approver certificate carries its own extended key usage, [`APPROVER_EKU`], and only that,
//! so an agent's server certificate or the CLI's client certificate cannot approve.

pub mod kube;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use rcgen::{KeyPair, PublicKeyData, SigningKey};

use crate::state::RolloutSummary;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

/// The approver extended key usage: `2.25.<UUID 706deeeb-d547-4cdd-b935-c28f458c993c>` (an OID
/// under the UUID arc, ITU-T X.667, which needs no registration).
pub const APPROVER_EKU: &str = "2.25.149444341783601237741484512463932922172";
const APPROVER_UUID: u128 = 0x706d_eeeb_d547_4cdd_b935_c28f_458c_993c;

/// The DER content octets of [`APPROVER_EKU`] (no tag or length).
fn eku_oid_content() -> &'static [u8] {
    static OID: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    OID.get_or_init(|| {
        let mut out = vec![2 * 40 + 25];
        let mut groups = Vec::new();
        let mut v = APPROVER_UUID;
        loop {
            groups.push((v & 0x7f) as u8);
            v >>= 7;
            if v == 0 {
                break;
            }
        }
        for (i, g) in groups.iter().enumerate().rev() {
            out.push(if i == 0 { *g } else { g | 0x80 });
        }
        out
    })
}

/// The content of an extendedKeyUsage extension naming only [`APPROVER_EKU`].
pub(crate) fn eku_extension_content() -> Vec<u8> {
    let oid = eku_oid_content();
    let mut out = vec![0x30, (oid.len() + 2) as u8, 0x06, oid.len() as u8];
    out.extend_from_slice(oid);
    out
}

/// Why a key or certificate cannot sign. Messages name files, never their contents.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("{0}: not a PEM certificate")]
    Cert(String),
    #[error("{0}: not a PEM private key (PKCS#8)")]
    Key(String),
    #[error("the key {key} does not belong to the certificate {cert}")]
    Mismatch { key: String, cert: String },
}

/// A signature on a journal record, with the certificate that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Signed {
    /// `approve` (a promote) or `start` (an apply).
    pub decision: String,
    /// The certificate's subject (common name) as the signer claims it; verification re-reads it.
    pub subject: String,
    pub signed_ms: u64,
    /// SHA-256 of the certificate (DER), hex.
    pub fingerprint: String,
    /// The certificate, PEM.
    pub cert: String,
    /// The signature over [`payload`], hex.
    pub signature: String,
}

/// What a signature covers, besides its own decision, subject and time.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub app: &'a str,
    pub rollout: &'a str,
    pub step: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Payload<'a> {
    kind: &'static str,
    app: &'a str,
    rollout: &'a str,
    step: usize,
    decision: &'a str,
    subject: &'a str,
    signed_ms: u64,
}

fn payload(claim: Claim<'_>, decision: &str, subject: &str, signed_ms: u64) -> Vec<u8> {
    serde_json::to_vec(&Payload {
        kind: "rollgate.dev/approval/v1",
        app: claim.app,
        rollout: claim.rollout,
        step: claim.step,
        decision,
        subject,
        signed_ms,
    })
    .expect("a payload serializes")
}

/// An approver's key and certificate, loaded from PEM.
pub struct Signer {
    key: KeyPair,
    cert_pem: String,
    subject: String,
    fingerprint: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("subject", &self.subject)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// `key_name` and `cert_name` (file names) are only used in messages.
    pub fn from_pem(
        key_pem: &str,
        key_name: &str,
        cert_pem: &str,
        cert_name: &str,
    ) -> Result<Self, SignerError> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| SignerError::Cert(cert_name.to_string()))?;
        let cert = webpki::EndEntityCert::try_from(&der)
            .map_err(|_| SignerError::Cert(cert_name.to_string()))?;
        let subject = common_name(cert.subject()).unwrap_or_default();
        let key = KeyPair::from_pem(key_pem).map_err(|_| SignerError::Key(key_name.to_string()))?;
        if key.subject_public_key_info() != cert.subject_public_key_info().as_ref() {
            return Err(SignerError::Mismatch {
                key: key_name.to_string(),
                cert: cert_name.to_string(),
            });
        }
        Ok(Signer {
            key,
            cert_pem: cert_pem.to_string(),
            subject,
            fingerprint: fingerprint(&der),
            // The certificate's own checks (CA, usage, validity) are the verifier's.
        })
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Signs `decision` on `claim` at `signed_ms`.
    pub fn sign(&self, claim: Claim<'_>, decision: &str, signed_ms: u64) -> Signed {
        let msg = payload(claim, decision, &self.subject, signed_ms);
        let signature = self.key.sign(&msg).expect("a loaded key signs");
        Signed {
            decision: decision.to_string(),
            subject: self.subject.clone(),
            signed_ms,
            fingerprint: self.fingerprint.clone(),
            cert: self.cert_pem.clone(),
            signature: hex::encode(signature),
        }
    }
}

fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(der))
}

/// Verifies `signed` as `decision` on `claim`: the certificate chains to `ca_pem` with the
/// approver usage and was valid when it signed, and the signature covers this app, rollout, step,
/// decision, subject and time. Returns the certificate's subject (common name).
pub fn verify(
    ca_pem: &str,
    claim: Claim<'_>,
    decision: &str,
    signed: &Signed,
) -> Result<String, String> {
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|_| "the approvers CA is not a PEM certificate".to_string())?;
    let anchor = webpki::anchor_from_trusted_cert(&ca)
        .map_err(|e| format!("the approvers CA is not usable: {e}"))?;
    let der = CertificateDer::from_pem_slice(signed.cert.as_bytes())
        .map_err(|_| "its certificate is not PEM".to_string())?;
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| format!("its certificate does not parse: {e}"))?;
    let subject = common_name(cert.subject()).ok_or("its certificate has no common name")?;
    let when = UnixTime::since_unix_epoch(std::time::Duration::from_millis(signed.signed_ms));
    let algs = [
        webpki::ring::ECDSA_P256_SHA256,
        webpki::ring::ECDSA_P384_SHA384,
        webpki::ring::ED25519,
    ];
    cert.verify_for_usage(
        &algs,
        &[anchor],
        &[],
        when,
        webpki::KeyUsage::required(eku_oid_content()),
        None,
        None,
    )
    .map_err(|e| match e {
        webpki::Error::RequiredEkuNotFoundContext(_) => {
            format!("{subject}'s certificate is not an approver certificate (no approver usage)")
        }
        webpki::Error::UnknownIssuer => {
            format!("{subject}'s certificate is not issued by the approvers CA")
        }
        e => format!("{subject}'s certificate does not verify: {e}"),
    })?;
    if signed.decision != decision {
        return Err(format!(
            "signed as {:?}, recorded as {decision:?}",
            signed.decision
        ));
    }
    if signed.subject != subject {
        return Err(format!(
            "claims subject {:?}, the certificate says {subject:?}",
            signed.subject
        ));
    }
    if signed.fingerprint != fingerprint(&der) {
        return Err("its fingerprint does not match its certificate".into());
    }
    let sig = hex::decode(&signed.signature).map_err(|_| "its signature is not hex")?;
    let msg = payload(claim, decision, &subject, signed.signed_ms);
    algs.iter()
        .find(|alg| cert.verify_signature(**alg, &msg, &sig).is_ok())
        .map(|_| subject.clone())
        .ok_or_else(|| {
            format!(
                "{subject}'s signature does not cover this record (app {}, rollout {}, step {})",
                claim.app,
                claim.rollout,
                claim.step + 1
            )
        })
}

/// Who may approve a pause: certificates from `ca` with the approver usage, or (`kubernetes`)
/// users as the API server authenticates them; either named in `allowed` (or, for Kubernetes
/// users, members of `groups`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApproversSpec {
    /// The CA certificate (PEM), relative to the manifest's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Approvers are Kubernetes users, proven by the API server (a Kubernetes target only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kubernetes: bool,
    /// With `kubernetes`: an approver also needs the RBAC verb `approve` on
    /// `rollouts.rollgate.dev` named after the app, in the target's namespace.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rbac: bool,
    /// Certificate subjects (common names), or Kubernetes usernames, that may approve; with
    /// `groups` empty too, any approver of the CA (or any Kubernetes user) may.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<String>,
    /// With `kubernetes`: Kubernetes groups whose members may approve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// How an approval in the journal was verified.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "camelCase")]
pub enum Check {
    /// No `approvers` rule at its step: counted by the environment's user name, verified by nothing.
    #[default]
    Unverified,
    /// Signed by an allowed approver certificate of the rule's CA.
    Verified {
        subject: String,
        fingerprint: String,
    },
    /// Made by an allowed Kubernetes user, as the API server's proof says.
    #[serde(rename_all = "camelCase")]
    Kubernetes {
        username: String,
        groups: Vec<String>,
        proof: String,
    },
    /// Not counted, and why.
    Refused { reason: String },
}

/// A step's approval rule, with its CA certificate read (or why it could not be).
#[derive(Debug, Clone)]
pub struct Rule {
    pub approvers: ApproversSpec,
    pub ca_pem: Result<String, String>,
    pub approvals: u32,
    pub allow_self_approval: bool,
}

/// Who started `r`, as far as certificates tell: the subject their approver certificate claims,
/// and the subject of their client certificate. Claims are enough here: the set only refuses.
pub fn starters(r: &RolloutSummary) -> Vec<String> {
    let Some(actor) = &r.actor else {
        return Vec::new();
    };
    let signed = actor.signed.as_ref().map(|s| s.subject.clone());
    signed.into_iter().chain(actor.client.clone()).collect()
}

/// Verifies every approval of `r` under the rule of its step (`rule_for`), setting
/// `verification`. Under a rule, only a signed approval from an allowed approver certificate who
/// did not start the rollout (with two or more approvals, unless allowed) is counted.
pub fn check(app: &str, r: &mut RolloutSummary, rule_for: &dyn Fn(usize) -> Option<Rule>) {
    check_with(app, r, rule_for, None);
}

/// The cluster's side of a Kubernetes rule: the target's namespace and the proofs read there.
#[derive(Debug, Clone, Copy)]
pub struct KubeSide<'a> {
    pub namespace: &'a str,
    pub evidence: &'a kube::Evidence,
}

/// [`check`], with the proofs of Kubernetes identities (`kube`) for steps whose rule names
/// Kubernetes users: without them, such approvals are refused.
pub fn check_with(
    app: &str,
    r: &mut RolloutSummary,
    rule_for: &dyn Fn(usize) -> Option<Rule>,
    kube: Option<KubeSide<'_>>,
) {
    let starters = starters(r);
    let id = r.id.clone();
    let starter = kube_starter(app, r, kube);
    for a in &mut r.approvals {
        let Some(rule) = rule_for(a.step) else {
            a.verification = Check::Unverified;
            continue;
        };
        let claim = Claim {
            app,
            rollout: &id,
            step: a.step,
        };
        if rule.approvers.kubernetes {
            a.verification =
                kube_verdict(claim, a.actor.kubernetes.as_ref(), &rule, kube, &starter)
                    .unwrap_or_else(|reason| Check::Refused { reason });
            continue;
        }
        let verdict = match (&a.actor.signed, &rule.ca_pem) {
            (None, _) => Err(format!(
                "not signed (the name {:?} from the environment is not an identity)",
                a.actor.user
            )),
            (Some(_), Err(why)) => Err(why.clone()),
            (Some(signed), Ok(ca)) => verify(ca, claim, "approve", signed).and_then(|subject| {
                if !rule.approvers.allowed.is_empty() && !rule.approvers.allowed.contains(&subject)
                {
                    Err(format!("{subject} is not in approvers.allowed"))
                } else if rule.approvals >= 2
                    && !rule.allow_self_approval
                    && starters.contains(&subject)
                {
                    Err(format!(
                        "{subject} started this rollout and cannot approve it (allowSelfApproval: false)"
                    ))
                } else {
                    Ok(Check::Verified {
                        subject,
                        fingerprint: signed.fingerprint.clone(),
                    })
                }
            }),
        };
        a.verification = verdict.unwrap_or_else(|reason| Check::Refused { reason });
    }
}

/// Who started rollout `r` as the API server proves it (`Ok(None)`: the start carries no Kubernetes
/// identity), or why its proof fails.
fn kube_starter(
    app: &str,
    r: &RolloutSummary,
    kube: Option<KubeSide<'_>>,
) -> Result<Option<String>, String> {
    let who = r.actor.as_ref().and_then(|a| a.kubernetes.as_ref());
    let (Some(who), Some(side)) = (who, kube) else {
        return Ok(None);
    };
    let claim = Claim {
        app,
        rollout: &r.id,
        step: 0,
    };
    kube::verify(side.namespace, claim, "start", Some(who), side.evidence)
        .map(|p| Some(p.username.clone()))
}

/// An approval under a rule naming Kubernetes users: proven by the API server, allowed by name,
/// group or RBAC as the rule says, and not the starter's own when two or more are needed.
fn kube_verdict(
    claim: Claim<'_>,
    who: Option<&kube::KubeIdentity>,
    rule: &Rule,
    side: Option<KubeSide<'_>>,
    starter: &Result<Option<String>, String>,
) -> Result<Check, String> {
    let side = side.ok_or("Kubernetes identities are verified only against the cluster")?;
    let proof = kube::verify(side.namespace, claim, "approve", who, side.evidence)?;
    let user = &proof.username;
    let a = &rule.approvers;
    let named = a.allowed.contains(user) || proof.groups.iter().any(|g| a.groups.contains(g));
    let open = a.allowed.is_empty() && a.groups.is_empty();
    if !open && !named {
        return Err(format!(
            "{user} is not in approvers.allowed and in none of approvers.groups"
        ));
    }
    if a.rbac {
        match &proof.may_approve {
            Some(Ok(())) => {}
            Some(Err(why)) => return Err(why.clone()),
            None => return Err(format!("{user}'s RBAC verb `approve` was not checked")),
        }
    }
    if rule.approvals >= 2 && !rule.allow_self_approval {
        match starter {
            Ok(Some(s)) if s == user => {
                return Err(format!(
                    "{user} started this rollout and cannot approve it (allowSelfApproval: false)"
                ));
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(
                    "the start of this rollout carries no proven Kubernetes identity, so self-approval cannot be ruled out"
                        .into(),
                );
            }
            Err(why) => return Err(format!("the start of this rollout: {why}")),
        }
    }
    Ok(Check::Kubernetes {
        username: user.clone(),
        groups: proof.groups.clone(),
        proof: who.and_then(|w| w.proof.clone()).unwrap_or_default(),
    })
}

/// The first common name (2.5.4.3) in a Name's contents (a sequence of sets of attributes).
fn common_name(mut name: &[u8]) -> Option<String> {
    while let Some((0x31, set, rest)) = crate::pki::tlv(name) {
        name = rest;
        let mut attrs = set;
        while let Some((0x30, attr, rest)) = crate::pki::tlv(attrs) {
            attrs = rest;
            let (0x06, oid, value) = crate::pki::tlv(attr)? else {
                continue;
            };
            if oid == [0x55, 0x04, 0x03] {
                let (_, text, _) = crate::pki::tlv(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

/// The common name of a PEM certificate (for a client certificate: who runs the CLI).
pub fn cert_subject(cert_pem: &str) -> Option<String> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).ok()?;
    let cert = webpki::EndEntityCert::try_from(&der).ok()?;
    common_name(cert.subject())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eku_oid_encodes_the_uuid_arc() {
        // 2.25.N: N in decimal is the UUID as one integer.
        assert_eq!(APPROVER_UUID.to_string(), APPROVER_EKU["2.25.".len()..]);
        let c = eku_oid_content();
        assert_eq!(c[0], 105);
        let mut v: u128 = 0;
        for b in &c[1..] {
            v = (v << 7) | u128::from(b & 0x7f);
        }
        assert_eq!(v, APPROVER_UUID);
        assert_eq!(c.last().unwrap() & 0x80, 0);
    }

    #[test]
    fn sign_then_verify_and_what_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path();
        crate::pki::init(pki).unwrap();
        let ca = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
        let alice = crate::pki::issue_approver(pki, "alice").unwrap();
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
        let signer = Signer::from_pem(&read(&alice.key), "k", &read(&alice.cert), "c").unwrap();
        assert_eq!(signer.subject(), "alice");
        let claim = Claim {
            app: "web",
            rollout: "r1",
            step: 1,
        };
        let now = crate::state::now_ms();
        let s = signer.sign(claim, "approve", now);
        assert_eq!(verify(&ca, claim, "approve", &s).unwrap(), "alice");
        // Another step, rollout or app: the signature does not cover it.
        for other in [
            Claim { step: 2, ..claim },
            Claim {
                rollout: "r2",
                ..claim
            },
            Claim {
                app: "api",
                ..claim
            },
        ] {
            let err = verify(&ca, other, "approve", &s).unwrap_err();
            assert!(err.contains("does not cover"), "{err}");
        }
        assert!(verify(&ca, claim, "start", &s).is_err());
        // Another CA.
        let other = tempfile::tempdir().unwrap();
        crate::pki::init(other.path()).unwrap();
        let other_ca = read(&other.path().join("ca.pem"));
        let err = verify(&other_ca, claim, "approve", &s).unwrap_err();
        assert!(err.contains("not issued by the approvers CA"), "{err}");
        // A client certificate from the same CA cannot approve.
        let ci = crate::pki::issue_client(pki, "ci").unwrap();
        let ci = Signer::from_pem(&read(&ci.key), "k", &read(&ci.cert), "c").unwrap();
        let err = verify(&ca, claim, "approve", &ci.sign(claim, "approve", now)).unwrap_err();
        assert!(err.contains("not an approver certificate"), "{err}");
        // A key that is not the certificate's.
        let bob = crate::pki::issue_approver(pki, "bob").unwrap();
        assert!(matches!(
            Signer::from_pem(&read(&bob.key), "k", &read(&alice.cert), "c"),
            Err(SignerError::Mismatch { .. })
        ));
        // A tampered subject.
        let mut forged = s.clone();
        forged.subject = "bob".into();
        assert!(verify(&ca, claim, "approve", &forged).is_err());
    }
}
