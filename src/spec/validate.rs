//! Validation of a deserialized manifest: every error names its file, line, column and field.

use super::*;

impl Manifest {
    /// The `approvers` CA paths, absolute like every path the journal keeps.
    pub(super) fn absolutize_approver_cas(&mut self, base: &Path) {
        if let Strategy::Canary(c) = &mut self.strategy {
            for step in &mut c.steps {
                if let Some(ca) = step
                    .pause
                    .as_mut()
                    .and_then(|p| p.approvers.as_mut())
                    .and_then(|a| a.ca.as_mut())
                    && ca.is_relative()
                {
                    *ca = base.join(&*ca);
                }
            }
        }
    }

    /// An `approvers` block needs approvals and a readable CA certificate: a gate that cannot be
    /// passed is an error here, not a rollout that waits forever.
    pub(super) fn check_approver_cas(&self, base: &Path) -> Result<(), InputError> {
        let Strategy::Canary(c) = &self.strategy else {
            return Ok(());
        };
        let at = |field: &str| {
            if self.strategy_source == "inline" {
                format!("spec.strategy.canary.{field}")
            } else {
                format!(
                    "spec.strategy.ref ({}): canary.{field}",
                    self.strategy_source
                )
            }
        };
        for (i, step) in c.steps.iter().enumerate() {
            let Some(p) = &step.pause else { continue };
            let Some(a) = &p.approvers else { continue };
            let path = at(&format!("steps[{i}].pause"));
            if p.approvals == 0 {
                return Err(self.sources.error(
                    &format!("{path}.approvers"),
                    "needs approvals: 1 or more (a pause nobody has to approve checks no signatures)",
                ));
            }
            let kube_target = self.rollout.spec.target.kubernetes().is_some();
            let wrong = match (&a.ca, a.kubernetes) {
                (Some(_), true) => Some(
                    "names both `ca` and `kubernetes: true`: approvers are either certificate holders or Kubernetes users",
                ),
                (None, false) => Some(
                    "needs `ca` (approver certificates) or `kubernetes: true` (Kubernetes users)",
                ),
                (None, true) if !kube_target => {
                    Some("`kubernetes: true` needs a kubernetes target")
                }
                (Some(_), false) if a.rbac || !a.groups.is_empty() => Some(
                    "`rbac` and `groups` apply to Kubernetes users (`kubernetes: true`), not certificates",
                ),
                _ => None,
            };
            if let Some(why) = wrong {
                return Err(self.sources.error(&format!("{path}.approvers"), why));
            }
            let Some(ca) = &a.ca else { continue };
            let file = base.join(ca);
            let ok = std::fs::read_to_string(&file)
                .map_err(|e| e.to_string())
                .and_then(|pem| {
                    use rustls_pki_types::pem::PemObject;
                    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
                        .map(|_| ())
                        .map_err(|_| "not a PEM certificate".to_string())
                });
            if let Err(why) = ok {
                return Err(self.sources.error(
                    &format!("{path}.approvers.ca"),
                    format!("{}: {why}", file.display()),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn validate(&self) -> Result<(), InputError> {
        let s = &self.sources;
        let r = &self.rollout;
        if !valid_name(&r.metadata.name) {
            return Err(s.error(
                "metadata.name",
                format!("{:?} is not a valid name: expected lowercase letters, digits and '-', starting with a letter", r.metadata.name),
            ));
        }
        if r.spec.version.trim().is_empty() {
            return Err(s.error("spec.version", "must not be empty"));
        }
        if r.spec.version.contains(['/', '\\']) || r.spec.version.contains("..") {
            return Err(s.error(
                "spec.version",
                format!("{:?} must not contain '/', '\\\\' or '..'", r.spec.version),
            ));
        }
        match &r.spec.target {
            TargetSpec::Kubernetes(k) => {
                if k.image.is_some() && k.manifest.is_some() {
                    return Err(s.error(
                        "spec.target.kubernetes",
                        "has both image and manifest: expected at most one",
                    ));
                }
            }
            TargetSpec::Hosts(h) => validate_hosts(h, s)?,
        }
        let hosts = matches!(r.spec.target, TargetSpec::Hosts(_));
        super::state::validate(r.spec.state.as_ref(), hosts, s)?;
        let mut names = std::collections::HashSet::new();
        for (i, c) in r.spec.checks.iter().enumerate() {
            let at = format!("spec.checks[{i}]");
            if !names.insert(c.name.as_str()) {
                return Err(s.error(
                    &format!("{at}.name"),
                    format!(
                        "{:?} is used by another check: names must be unique",
                        c.name
                    ),
                ));
            }
            let kinds = [
                c.http.is_some(),
                c.tcp.is_some(),
                c.command.is_some(),
                c.prometheus.is_some(),
                c.web.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if kinds != 1 {
                return Err(s.error(&at, format!("has {kinds} probes: expected exactly one of http, tcp, command, prometheus, web")));
            }
            if c.is_metric() && c.success_condition.is_none() && c.failure_condition.is_none() {
                return Err(s.error(
                    &at,
                    "a metric check needs successCondition or failureCondition",
                ));
            }
            if !c.is_metric() && (c.success_condition.is_some() || c.failure_condition.is_some()) {
                return Err(s.error(
                    &at,
                    "successCondition and failureCondition apply to prometheus and web checks only",
                ));
            }
            for (field, text) in [
                ("successCondition", &c.success_condition),
                ("failureCondition", &c.failure_condition),
            ] {
                if let Some(text) = text
                    && let Err(e) = crate::health::condition::parse(text)
                {
                    // Point at the character: the value's column plus the offset (plus a quote, if quoted).
                    let path = format!("{at}.{field}");
                    let mut err = s.error(&path, format!("{text:?}: {}", e.message));
                    err.column += e.offset + usize::from(quoted_at(s, &err));
                    return Err(err);
                }
            }
            if let Some(w) = &c.web
                && !["GET", "POST"].contains(&w.method.as_str())
            {
                return Err(s.error(
                    &format!("{at}.web.method"),
                    format!("{:?}: expected GET or POST", w.method),
                ));
            }
            if let Some(cmd) = &c.command
                && cmd.run.is_empty()
            {
                return Err(s.error(
                    &format!("{at}.command.run"),
                    "is empty: expected a program and its arguments",
                ));
            }
            // A pod has no agent: what cannot reach it through the API server is refused here,
            // never passed unprobed.
            if matches!(r.spec.target, TargetSpec::Kubernetes(_))
                && let Some((field, why)) = on_pod::refusal(c)
            {
                return Err(s.error(&format!("{at}.{field}"), why));
            }
            if c.success_threshold == 0 || c.count == 0 {
                return Err(s.error(&at, "count and successThreshold must be at least 1"));
            }
            if c.success_threshold > c.count {
                return Err(s.error(
                    &format!("{at}.successThreshold"),
                    format!("{} is more than count ({})", c.success_threshold, c.count),
                ));
            }
        }
        for (i, n) in r.spec.notifications.iter().enumerate() {
            const EVENTS: [&str; 7] = [
                "started",
                "stepPassed",
                "paused",
                "promoted",
                "failed",
                "rolledBack",
                "succeeded",
            ];
            for (j, e) in n.events.iter().enumerate() {
                if !EVENTS.contains(&e.as_str()) {
                    return Err(s.error(
                        &format!("spec.notifications[{i}].events[{j}]"),
                        format!("{e:?}: expected one of {}", EVENTS.join(", ")),
                    ));
                }
            }
        }
        self.validate_strategy()
    }

    fn validate_strategy(&self) -> Result<(), InputError> {
        let s = &self.sources;
        let at = |field: &str| {
            if self.strategy_source == "inline" {
                format!("spec.strategy.{field}")
            } else {
                format!("spec.strategy.ref ({}): {field}", self.strategy_source)
            }
        };
        let check_analysis = |a: &AnalysisSpec, path: String| -> Result<(), InputError> {
            for (j, name) in a.checks.iter().enumerate() {
                if !self.rollout.spec.checks.iter().any(|c| &c.name == name) {
                    return Err(s.error(
                        &format!("{path}.checks[{j}]"),
                        format!("{name:?} is not a check in spec.checks"),
                    ));
                }
            }
            Ok(())
        };
        // Hosts with one slot replace in place: no surge, so no blue-green and no maxUnavailable
        // 0. `plan` refuses these too; here `validate` refuses them first, as `apply` would.
        let in_place = self
            .rollout
            .spec
            .target
            .hosts()
            .is_some_and(|h| h.slots_per_host < 2);
        let check_in_place = |unavailable: IntOrPercent, at: &str| {
            if in_place && unavailable.is_zero() {
                return Err(s.error(
                    &format!("{at}.maxUnavailable"),
                    "is 0, but hosts with slotsPerHost: 1 are replaced in place: set maxUnavailable to at least 1, or use slotsPerHost: 2",
                ));
            }
            Ok(())
        };
        match &self.strategy {
            Strategy::Rolling(r) => {
                check_bounds(r.max_surge, r.max_unavailable, &at("rolling"), s)?;
                check_in_place(r.max_unavailable, &at("rolling"))
            }
            Strategy::Canary(c) => {
                check_bounds(c.max_surge, c.max_unavailable, &at("canary"), s)?;
                check_in_place(c.max_unavailable, &at("canary"))?;
                if c.steps.is_empty() {
                    return Err(s.error(
                        &at("canary.steps"),
                        "is empty: expected at least one setWeight step",
                    ));
                }
                for (i, step) in c.steps.iter().enumerate() {
                    let path = at(&format!("canary.steps[{i}]"));
                    let set = [
                        step.set_weight.is_some(),
                        step.pause.is_some(),
                        step.analysis.is_some(),
                        step.set_canary_scale.is_some(),
                    ];
                    if set.iter().filter(|b| **b).count() != 1 {
                        return Err(s.error(
                            &path,
                            "expected exactly one of setWeight, pause, analysis, setCanaryScale",
                        ));
                    }
                    if let Some(w) = step.set_weight
                        && w > 100
                    {
                        return Err(s.error(
                            &format!("{path}.setWeight"),
                            format!("{w} is over 100: expected a percentage 0..=100"),
                        ));
                    }
                    if let Some(a) = &step.analysis {
                        check_analysis(a, format!("{path}.analysis"))?;
                    }
                }
                if let Some(bg) = &c.analysis {
                    if bg.starting_step >= c.steps.len() {
                        return Err(s.error(
                            &at("canary.analysis.startingStep"),
                            format!(
                                "{} is past the last step (there are {})",
                                bg.starting_step,
                                c.steps.len()
                            ),
                        ));
                    }
                    for (j, name) in bg.checks.iter().enumerate() {
                        match self.rollout.spec.checks.iter().find(|x| &x.name == name) {
                            None => {
                                return Err(s.error(
                                    &at(&format!("canary.analysis.checks[{j}]")),
                                    format!("{name:?} is not a check in spec.checks"),
                                ));
                            }
                            Some(x) if !x.is_metric() => {
                                return Err(s.error(
                                    &at(&format!("canary.analysis.checks[{j}]")),
                                    format!("{name:?} is not a prometheus or web check: background analysis measures the rollout as a whole"),
                                ));
                            }
                            Some(_) => {}
                        }
                    }
                }
                traffic::check(c, &self.rollout.spec.target, s, &at)?;
                if let (Some(group), Some(h)) = (&c.first_group, self.rollout.spec.target.hosts())
                    && !h.hosts.iter().any(|host| host.groups.contains(group))
                {
                    return Err(s.error(
                        &at("canary.firstGroup"),
                        format!("{group:?} is not a group of any host"),
                    ));
                }
                Ok(())
            }
            Strategy::BlueGreen(b) => {
                if in_place {
                    return Err(s.error(
                        &at("blueGreen"),
                        "needs room for both versions at once: use slotsPerHost: 2 on a host fleet",
                    ));
                }
                if let Some(a) = &b.pre_promotion_analysis {
                    check_analysis(a, at("blueGreen.prePromotionAnalysis"))?;
                }
                if let Some(a) = &b.post_promotion_analysis {
                    check_analysis(a, at("blueGreen.postPromotionAnalysis"))?;
                }
                Ok(())
            }
        }
    }
}

/// Whether the value at `err`'s position starts with a quote.
fn quoted_at(s: &Sources, err: &InputError) -> bool {
    let Some(file) = &err.file else { return false };
    let Some(source) = s.files.iter().find(|f| &f.file == file) else {
        return false;
    };
    let Ok(text) = std::fs::read_to_string(file) else {
        return source.file.as_os_str().is_empty();
    };
    text.lines()
        .nth(err.line.saturating_sub(1))
        .and_then(|l| l.chars().nth(err.column.saturating_sub(1)))
        .is_some_and(|c| c == '"' || c == '\'')
}

fn check_bounds(
    surge: IntOrPercent,
    unavailable: IntOrPercent,
    at: &str,
    s: &Sources,
) -> Result<(), InputError> {
    if surge.is_zero() && unavailable.is_zero() {
        return Err(s.error(
            &format!("{at}.maxUnavailable"),
            "may not be 0 when maxSurge is 0: no instance could ever be replaced",
        ));
    }
    // As Kubernetes' validation: maxUnavailable over 100% is an error; maxSurge has no such cap.
    if let IntOrPercent::Percent(p) = unavailable
        && p > 100
    {
        return Err(s.error(
            &format!("{at}.maxUnavailable"),
            format!("\"{p}%\" is over 100%: expected at most \"100%\""),
        ));
    }
    Ok(())
}

fn validate_hosts(h: &HostsTarget, s: &Sources) -> Result<(), InputError> {
    if !(1..=2).contains(&h.slots_per_host) {
        return Err(s.error(
            "spec.target.hosts.slotsPerHost",
            format!("{}: expected 1 or 2", h.slots_per_host),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, host) in h.hosts.iter().enumerate() {
        if !seen.insert(host.name.as_str()) {
            return Err(s.error(
                &format!("spec.target.hosts.hosts[{i}].name"),
                format!("{:?} is listed twice", host.name),
            ));
        }
        if !host.address.contains(':') {
            return Err(s.error(
                &format!("spec.target.hosts.hosts[{i}].address"),
                format!(
                    "{:?}: expected HOST:PORT, like \"10.0.0.1:7443\"",
                    host.address
                ),
            ));
        }
    }
    // No credentials is said out loud (issue 20): `auth: {insecure: true}`, and only for a lab.
    match &h.auth {
        Some(a)
            if a.insecure
                && (a.ca.is_some()
                    || a.cert.is_some()
                    || a.key.is_some()
                    || a.token_file.is_some()
                    || a.token_env.is_some()) =>
        {
            return Err(s.error(
                "spec.target.hosts.auth.insecure",
                "true beside credentials: expected either ca, cert and key (or ca with tokenFile/tokenEnv), or insecure: true alone",
            ));
        }
        Some(a)
            if !a.insecure
                && a.ca.is_none()
                && a.cert.is_none()
                && a.key.is_none()
                && a.token_file.is_none()
                && a.token_env.is_none() =>
        {
            return Err(s.error(
                "spec.target.hosts.auth",
                "has no credentials: expected ca, cert and key (mTLS), ca with tokenFile or tokenEnv, or insecure: true for a lab",
            ));
        }
        None => {
            if let Some((i, host)) = h
                .hosts
                .iter()
                .enumerate()
                .find(|(_, host)| !crate::agent::api::is_loopback_address(&host.address))
            {
                return Err(s.error(
                    &format!("spec.target.hosts.hosts[{i}].address"),
                    format!(
                        "{:?} is not a loopback address and spec.target.hosts has no auth: rollgate would talk to its agent over plain HTTP, unauthenticated; expected auth (ca, cert and key from `rollgate pki`, or ca with tokenFile/tokenEnv), or auth: {{insecure: true}} for a lab",
                        host.address
                    ),
                ));
            }
        }
        _ => {}
    }
    // A bearer token without a CA would go over plain HTTP (issue 17, W6).
    if let Some(a) = &h.auth
        && a.ca.is_none()
        && (a.token_file.is_some() || a.token_env.is_some())
        && let Some((i, host)) = h
            .hosts
            .iter()
            .enumerate()
            .find(|(_, host)| !crate::agent::api::is_loopback_address(&host.address))
    {
        return Err(s.error(
            &format!("spec.target.hosts.hosts[{i}].address"),
            format!(
                "{:?}: a bearer token (auth.tokenFile/tokenEnv) without auth.ca would go over plain HTTP; expected auth.ca (the agent's CA) or a loopback address",
                host.address
            ),
        ));
    }
    if let Some(a) = &h.artifact {
        match (&a.file, &a.url) {
            (Some(_), Some(_)) => {
                return Err(s.error(
                    "spec.target.hosts.artifact",
                    "has both file and url: expected one",
                ));
            }
            (None, None) => {
                return Err(s.error("spec.target.hosts.artifact", "expected file or url"));
            }
            (None, Some(_)) if a.sha256.is_none() => {
                return Err(s.error(
                    "spec.target.hosts.artifact.sha256",
                    "is required with url: artifacts are always verified",
                ));
            }
            _ => {}
        }
        if let Some(sha) = &a.sha256
            && (sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(s.error(
                "spec.target.hosts.artifact.sha256",
                "expected 64 hex digits",
            ));
        }
    }
    if let Some(t) = &h.traffic_switch {
        match (&t.command, &t.webhook) {
            (Some(c), None) if !c.is_empty() => {}
            (None, Some(u)) if u.starts_with("http://") || u.starts_with("https://") => {}
            (None, Some(u)) => {
                return Err(s.error(
                    "spec.target.hosts.trafficSwitch.webhook",
                    format!("{u:?}: expected an http:// or https:// URL"),
                ));
            }
            _ => {
                return Err(s.error(
                    "spec.target.hosts.trafficSwitch",
                    "expected exactly one of command (a non-empty list) or webhook",
                ));
            }
        }
    }
    if let Some(label) = &h.spread_by {
        for (i, host) in h.hosts.iter().enumerate() {
            if !host.labels.contains_key(label) {
                return Err(s.error(
                    &format!("spec.target.hosts.hosts[{i}].labels"),
                    format!("has no {label:?} label, which spreadBy needs on every host"),
                ));
            }
        }
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}
