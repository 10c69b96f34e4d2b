//! Kubernetes identities in approvals: the user the API server authenticated, the proof it stamped
//! (a CertificateSigningRequest it wrote the user into), and the verdict on a record. No I/O.
//!
//! Why a CertificateSigningRequest: it is the one object the API server stamps with the identity of
//! the client that created it (`spec.username`, `spec.groups`, `spec.uid`, `spec.extra`), which no
//! client can set and nobody can change afterwards. A record in the journal ConfigMap that names a
//! user is only a claim; the CSR it points to is the API server's word. The proof's name covers the
//! namespace, app, rollout, step and decision, so it cannot be replayed elsewhere.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Claim;

/// The signer name of the proofs. No controller signs them: they stay pending, and the
/// controller-manager's cleaner deletes them after 24 hours.
pub const PROOF_SIGNER: &str = "rollgate.dev/approval";

/// The RBAC verb, group and resource an approver needs on the app (`rollouts.rollgate.dev/<app>`).
pub const VERB: &str = "approve";
pub const GROUP: &str = "rollgate.dev";
pub const RESOURCE: &str = "rollouts";

/// Who the API server says the CLI's user is (`SelfSubjectReview`), and the proof, when one was
/// made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeIdentity {
    pub username: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The name of the CertificateSigningRequest the API server stamped with this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
}

/// A proof as the API server returns it, and, when the rule asks, its RBAC answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proof {
    pub username: String,
    pub groups: Vec<String>,
    pub signer: String,
    /// `Some(Err(why))`: the user may not `approve` the app (a SubjectAccessReview said so).
    pub may_approve: Option<Result<(), String>>,
}

/// Proofs by CSR name: `Err` when it could not be read (gone, or forbidden), and why.
pub type Evidence = BTreeMap<String, Result<Proof, String>>;

/// The name every proof of `decision` on `claim` in `namespace` starts with (the API server adds
/// a random suffix): a digest of all of them, so a proof covers one record only.
pub fn proof_prefix(namespace: &str, claim: Claim<'_>, decision: &str) -> String {
    use sha2::Digest;
    let text = format!(
        "rollgate.dev/approval/v1\n{namespace}\n{}\n{}\n{}\n{decision}",
        claim.app, claim.rollout, claim.step
    );
    let digest = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    format!("rollgate-{decision}-{}-", &digest[..24])
}

/// The API server's word on a record's identity: the proof exists, covers this record and names
/// the user the record names. Returns the proof.
pub fn verify<'a>(
    namespace: &str,
    claim: Claim<'_>,
    decision: &str,
    who: Option<&KubeIdentity>,
    evidence: &'a Evidence,
) -> Result<&'a Proof, String> {
    let who = who.ok_or(
        "it carries no Kubernetes identity (not made by `rollgate promote` with a kubeconfig)",
    )?;
    let name = who.proof.as_deref().ok_or_else(|| {
        format!(
            "{} is named but not proven (no CertificateSigningRequest)",
            who.username
        )
    })?;
    if !name.starts_with(&proof_prefix(namespace, claim, decision)) {
        return Err(format!(
            "its proof {name} was made for another app, rollout, step or decision"
        ));
    }
    let proof = match evidence.get(name) {
        Some(Ok(p)) => p,
        Some(Err(why)) => return Err(format!("its proof {name}: {why}")),
        None => return Err(format!("its proof {name} was not read")),
    };
    if proof.signer != PROOF_SIGNER {
        return Err(format!(
            "its proof {name} has signer {:?}, not {PROOF_SIGNER}",
            proof.signer
        ));
    }
    if proof.username != who.username {
        return Err(format!(
            "it names {}, but the API server authenticated {} (CertificateSigningRequest {name})",
            who.username, proof.username
        ));
    }
    Ok(proof)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(step: usize) -> Claim<'static> {
        Claim {
            app: "web",
            rollout: "web-1",
            step,
        }
    }

    #[test]
    fn a_proof_covers_one_record_and_names_its_user() {
        let name = format!("{}abcde", proof_prefix("shop", claim(1), "approve"));
        let proof = Proof {
            username: "system:serviceaccount:shop:alice".into(),
            groups: vec!["system:serviceaccounts".into()],
            signer: PROOF_SIGNER.into(),
            may_approve: None,
        };
        let evidence: Evidence = [(name.clone(), Ok(proof))].into();
        let who = KubeIdentity {
            username: "system:serviceaccount:shop:alice".into(),
            groups: vec![],
            proof: Some(name.clone()),
        };
        assert!(verify("shop", claim(1), "approve", Some(&who), &evidence).is_ok());
        // Replayed on another step, decision or namespace.
        for (ns, step, decision) in [
            ("shop", 2, "approve"),
            ("shop", 1, "start"),
            ("dev", 1, "approve"),
        ] {
            let err = verify(ns, claim(step), decision, Some(&who), &evidence).unwrap_err();
            assert!(err.contains("another app"), "{err}");
        }
        // Another user's name on the same proof.
        let forged = KubeIdentity {
            username: "system:serviceaccount:shop:bob".into(),
            ..who.clone()
        };
        let err = verify("shop", claim(1), "approve", Some(&forged), &evidence).unwrap_err();
        assert!(
            err.contains("authenticated system:serviceaccount:shop:alice"),
            "{err}"
        );
        // No proof, or one that does not exist.
        let bare = KubeIdentity {
            proof: None,
            ..who.clone()
        };
        assert!(verify("shop", claim(1), "approve", Some(&bare), &evidence).is_err());
        assert!(verify("shop", claim(1), "approve", None, &evidence).is_err());
        let gone = KubeIdentity {
            proof: Some(format!(
                "{}zzzzz",
                proof_prefix("shop", claim(1), "approve")
            )),
            ..who
        };
        assert!(verify("shop", claim(1), "approve", Some(&gone), &evidence).is_err());
    }
}
