//! Who the API server says the CLI's user is, whether RBAC lets them approve, and the proofs of
//! approvals (CertificateSigningRequests the API server stamps with their creator): the I/O side
//! of `approval::kube`.

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::{
    LocalSubjectAccessReview, ResourceAttributes, SelfSubjectAccessReview,
    SelfSubjectAccessReviewSpec, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::approval::Claim;
use crate::approval::kube::{
    Evidence, GROUP, KubeIdentity, PROOF_SIGNER, Proof, RESOURCE, VERB, proof_prefix,
};

/// Why an identity could not be had or proven.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("asking the API server who this is (SelfSubjectReview)")]
    Review(#[source] kube::Error),
    #[error("the API server named no user (SelfSubjectReview)")]
    Nameless,
    #[error("asking whether {user} may {VERB} {RESOURCE}.{GROUP}/{app} (SelfSubjectAccessReview)")]
    Access {
        user: String,
        app: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "{user} may not `{VERB}` {RESOURCE}.{GROUP}/{app} in namespace {namespace}: RBAC grants no verb `{VERB}`{why}; nothing was recorded (README \"Change approval\": the optional Role in manifests/kubernetes/rbac.yaml)"
    )]
    Denied {
        user: String,
        app: String,
        namespace: String,
        why: String,
    },
    #[error(
        "recording the proof of {user}'s {decision} (creating a CertificateSigningRequest needs `create certificatesigningrequests.certificates.k8s.io`: the ClusterRole rollgate-approval-proof in manifests/kubernetes/rbac.yaml)"
    )]
    Proof {
        user: String,
        decision: String,
        #[source]
        source: kube::Error,
    },
}

/// The user the API server authenticated for `client` (username and groups), no proof yet.
pub async fn who_am_i(client: &Client) -> Result<KubeIdentity, IdentityError> {
    let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = reviews
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(IdentityError::Review)?;
    let info = review
        .status
        .and_then(|s| s.user_info)
        .ok_or(IdentityError::Nameless)?;
    Ok(KubeIdentity {
        username: info.username.ok_or(IdentityError::Nameless)?,
        groups: info.groups.unwrap_or_default(),
        proof: None,
    })
}

fn approve_attributes(namespace: &str, app: &str) -> ResourceAttributes {
    ResourceAttributes {
        group: Some(GROUP.into()),
        resource: Some(RESOURCE.into()),
        verb: Some(VERB.into()),
        name: Some(app.into()),
        namespace: Some(namespace.into()),
        ..ResourceAttributes::default()
    }
}

/// Fails, naming the verb, unless RBAC lets the client's user `approve` the app.
pub async fn may_approve(
    client: &Client,
    who: &KubeIdentity,
    namespace: &str,
    app: &str,
) -> Result<(), IdentityError> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(approve_attributes(namespace, app)),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let answer = reviews
        .create(&PostParams::default(), &review)
        .await
        .map_err(|source| IdentityError::Access {
            user: who.username.clone(),
            app: app.into(),
            source,
        })?;
    let status = answer.status.unwrap_or_default();
    if status.allowed {
        return Ok(());
    }
    Err(IdentityError::Denied {
        user: who.username.clone(),
        app: app.into(),
        namespace: namespace.into(),
        why: reason(status.reason.as_deref()),
    })
}

fn reason(r: Option<&str>) -> String {
    match r.filter(|r| !r.is_empty()) {
        Some(r) => format!(" ({r})"),
        None => String::new(),
    }
}

/// Creates the proof of `who`'s `decision` on `claim`: a CertificateSigningRequest (signer
/// `rollgate.dev/approval`, which nothing signs) that the API server stamps with the user, and
/// sets `who.proof` to its name (and `who.username` to the user it was stamped with).
pub async fn prove(
    client: &Client,
    who: &mut KubeIdentity,
    namespace: &str,
    claim: Claim<'_>,
    decision: &str,
) -> Result<(), IdentityError> {
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some(proof_prefix(namespace, claim, decision)),
            labels: Some([("app.kubernetes.io/managed-by".into(), "rollgate".into())].into()),
            ..ObjectMeta::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request_pem(namespace, claim, decision).into_bytes()),
            signer_name: PROOF_SIGNER.into(),
            usages: Some(vec!["digital signature".into()]),
            ..CertificateSigningRequestSpec::default()
        },
        ..CertificateSigningRequest::default()
    };
    let made = csrs
        .create(&PostParams::default(), &csr)
        .await
        .map_err(|source| IdentityError::Proof {
            user: who.username.clone(),
            decision: decision.into(),
            source,
        })?;
    who.proof = made.metadata.name;
    if let Some(stamped) = made.spec.username {
        who.username = stamped;
    }
    Ok(())
}

/// A PKCS#10 request (the API server parses it) whose subject says what it proves; its key is
/// thrown away: nothing is ever issued for it.
fn request_pem(namespace: &str, claim: Claim<'_>, decision: &str) -> String {
    let key = rcgen::KeyPair::generate().expect("generating an ECDSA key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!(
            "rollgate {decision} {namespace}/{} rollout {} step {}",
            claim.app,
            claim.rollout,
            claim.step + 1
        ),
    );
    params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .expect("a request of fixed fields serializes")
}

/// Reads each named proof and, with `rbac`, asks (a LocalSubjectAccessReview in `namespace`)
/// whether the user it names may `approve` the app.
pub async fn evidence(
    client: &Client,
    namespace: &str,
    app: &str,
    proofs: &[String],
    rbac: bool,
) -> Evidence {
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let mut out = Evidence::new();
    for name in proofs {
        if out.contains_key(name) {
            continue;
        }
        let proof = match csrs.get_opt(name).await {
            Ok(Some(csr)) => Ok(read(client, namespace, app, csr.spec, rbac).await),
            Ok(None) => Err(
                "no such CertificateSigningRequest (never made, deleted, or cleaned after 24 h)"
                    .to_string(),
            ),
            Err(e) => Err(format!("cannot be read: {}", crate::error_chain(&e))),
        };
        out.insert(name.clone(), proof);
    }
    out
}

async fn read(
    client: &Client,
    namespace: &str,
    app: &str,
    spec: CertificateSigningRequestSpec,
    rbac: bool,
) -> Proof {
    let mut proof = Proof {
        username: spec.username.unwrap_or_default(),
        groups: spec.groups.unwrap_or_default(),
        signer: spec.signer_name,
        may_approve: None,
    };
    if !rbac {
        return proof;
    }
    let reviews: Api<LocalSubjectAccessReview> = Api::namespaced(client.clone(), namespace);
    let review = LocalSubjectAccessReview {
        metadata: ObjectMeta {
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        spec: SubjectAccessReviewSpec {
            user: Some(proof.username.clone()),
            groups: Some(proof.groups.clone()),
            uid: spec.uid,
            extra: spec.extra,
            resource_attributes: Some(approve_attributes(namespace, app)),
            ..SubjectAccessReviewSpec::default()
        },
        ..LocalSubjectAccessReview::default()
    };
    let user = &proof.username;
    proof.may_approve = Some(
        match reviews.create(&PostParams::default(), &review).await {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => Ok(()),
            Ok(r) => Err(format!(
                "{user} may not `{VERB}` {RESOURCE}.{GROUP}/{app}: RBAC grants no verb `{VERB}`{}",
                reason(r.status.as_ref().and_then(|s| s.reason.as_deref()))
            )),
            Err(e) => Err(format!(
                "whether {user} may `{VERB}` could not be asked (LocalSubjectAccessReview): {}",
                crate::error_chain(&e)
            )),
        },
    );
    proof
}
