//! Pod security: where a pod template falls short of the recommended securityContext.

use k8s_openapi::api::core::v1::PodTemplateSpec;

/// One recommended securityContext setting that a pod template does not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityWarning {
    /// The field in a Deployment, like `spec.template.spec.containers[0].securityContext.privileged`.
    pub path: String,
    /// The container's name.
    pub container: String,
    /// What the setting is and what is recommended, like `not set (recommended: true)`.
    pub message: String,
}

impl std::fmt::Display for SecurityWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: container {}: {}",
            self.path, self.container, self.message
        )
    }
}

/// Where a pod template falls short of the recommended securityContext (runAsNonRoot true,
/// privileged false, allowPrivilegeEscalation false, readOnlyRootFilesystem true): one warning per
/// container and setting, at the field that sets it (or would). Pure: `validate`, `plan` and `apply`
/// print them.
pub fn pod_security_warnings(t: &PodTemplateSpec) -> Vec<SecurityWarning> {
    let Some(spec) = t.spec.as_ref() else {
        return Vec::new();
    };
    let pod_non_root = spec
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_non_root);
    let shown = |v: Option<bool>| v.map_or("not set".to_string(), |b| b.to_string());
    let mut out = Vec::new();
    let kinds = [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or(&[]),
        ),
        ("containers", spec.containers.as_slice()),
    ];
    for (kind, containers) in kinds {
        for (i, c) in containers.iter().enumerate() {
            let at = format!("spec.template.spec.{kind}[{i}].securityContext");
            let sc = c.security_context.as_ref();
            let mut warn = |field: &str, path: String, message: String| {
                out.push(SecurityWarning {
                    path: format!("{path}.{field}"),
                    container: c.name.clone(),
                    message,
                });
            };
            // The container's setting wins over the pod's.
            let own = sc.and_then(|s| s.run_as_non_root);
            let (value, path) = match (own, pod_non_root) {
                (None, Some(v)) => (Some(v), "spec.template.spec.securityContext".to_string()),
                (v, _) => (v, at.clone()),
            };
            if value != Some(true) {
                warn(
                    "runAsNonRoot",
                    path,
                    format!("{} (recommended: true)", shown(value)),
                );
            }
            let privileged = sc.and_then(|s| s.privileged);
            if privileged == Some(true) {
                warn("privileged", at.clone(), "true (recommended: false)".into());
            }
            let escalation = sc.and_then(|s| s.allow_privilege_escalation);
            if escalation != Some(false) {
                warn(
                    "allowPrivilegeEscalation",
                    at.clone(),
                    format!("{} (recommended: false)", shown(escalation)),
                );
            }
            let read_only = sc.and_then(|s| s.read_only_root_filesystem);
            if read_only != Some(true) {
                warn(
                    "readOnlyRootFilesystem",
                    at.clone(),
                    format!("{} (recommended: true)", shown(read_only)),
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_warnings_name_each_missing_setting() {
        let bare: PodTemplateSpec = serde_yaml::from_str(
            "spec: {containers: [{name: web, image: r/web:1, securityContext: {privileged: true}}]}",
        )
        .unwrap();
        let w = pod_security_warnings(&bare);
        assert_eq!(w.len(), 4, "{w:#?}");
        assert_eq!(
            w[1].to_string(),
            "spec.template.spec.containers[0].securityContext.privileged: container web: true (recommended: false)"
        );
        assert_eq!(
            w[0].to_string(),
            "spec.template.spec.containers[0].securityContext.runAsNonRoot: container web: not set (recommended: true)"
        );
        // A pod-level runAsNonRoot: false is reported where it is set.
        let pod_level: PodTemplateSpec = serde_yaml::from_str(
            "spec: {securityContext: {runAsNonRoot: false}, initContainers: [{name: init}], containers: [{name: web, securityContext: {runAsNonRoot: true, allowPrivilegeEscalation: false, readOnlyRootFilesystem: true}}]}",
        )
        .unwrap();
        let w: Vec<String> = pod_security_warnings(&pod_level)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            w,
            [
                "spec.template.spec.securityContext.runAsNonRoot: container init: false (recommended: true)",
                "spec.template.spec.initContainers[0].securityContext.allowPrivilegeEscalation: container init: not set (recommended: false)",
                "spec.template.spec.initContainers[0].securityContext.readOnlyRootFilesystem: container init: not set (recommended: true)",
            ]
        );
        let hardened: PodTemplateSpec = serde_yaml::from_str(
            "spec: {securityContext: {runAsNonRoot: true}, containers: [{name: web, securityContext: {privileged: false, allowPrivilegeEscalation: false, readOnlyRootFilesystem: true}}]}",
        )
        .unwrap();
        assert_eq!(pod_security_warnings(&hardened), Vec::new());
    }
}
