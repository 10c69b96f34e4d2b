//! The order and the parts of a fleet's waves: first group first, never two zones down at once.

use std::collections::HashMap;

use super::Want;
use crate::spec::HostsTarget;

/// Whether a fleet can start a version beside the running one: only with two slots per host.
pub fn capacity(spec: &HostsTarget) -> crate::plan::Capacity {
    if spec.slots_per_host >= 2 {
        crate::plan::Capacity::TwoSlots
    } else {
        crate::plan::Capacity::InPlace
    }
}

/// Orders hosts for waves: the first group's hosts first, then by the spread label, then by name.
pub fn wave_order(spec: &HostsTarget, first_group: Option<&str>) -> Vec<String> {
    let mut hosts: Vec<_> = spec.hosts.iter().collect();
    let label = spec.spread_by.as_deref();
    hosts.sort_by_key(|h| {
        let in_first = first_group.is_some_and(|g| h.groups.iter().any(|x| x == g));
        let zone = label
            .and_then(|l| h.labels.get(l))
            .cloned()
            .unwrap_or_default();
        (!in_first, zone, h.name.clone())
    });
    hosts.into_iter().map(|h| h.name.clone()).collect()
}

/// The hosts each step changes, in wave order: the first `new` hosts run the new version and the
/// last `old` keep the old one (as `scale` applies a step), so a step changes those that start the
/// new version and those that stop the old one. Pure: `plan` shows it.
pub fn step_hosts(
    spec: &HostsTarget,
    first_group: Option<&str>,
    steps: &[crate::plan::Step],
) -> Vec<Vec<String>> {
    let order = wave_order(spec, first_group);
    let n = order.len();
    let (mut new_before, mut old_before) = (0usize, n);
    steps
        .iter()
        .map(|s| {
            let (new, old) = (s.new as usize, s.old as usize);
            let changed = order
                .iter()
                .enumerate()
                .filter(|(i, _)| {
                    let starts = *i < new && *i >= new_before;
                    let stops = *i < n.saturating_sub(old) && *i >= n.saturating_sub(old_before);
                    starts || stops
                })
                .map(|(_, h)| h.clone())
                .collect();
            (new_before, old_before) = (new, old);
            changed
        })
        .collect()
}

/// [`split_by_zone`] for hosts with what each must end with.
pub(super) fn split_by_zone_wants(
    spec: &HostsTarget,
    wave: &[(String, Want)],
) -> Vec<Vec<(String, Want)>> {
    let names: Vec<String> = wave.iter().map(|(n, _)| n.clone()).collect();
    let mut rest = wave.iter();
    split_by_zone(spec, &names)
        .into_iter()
        .map(|part| {
            part.iter()
                .map(|_| rest.next().expect("same hosts, same order").clone())
                .collect()
        })
        .collect()
}

/// Splits a wave so that no part spans two values of the spread label: never down in two zones at once.
pub fn split_by_zone(spec: &HostsTarget, wave: &[String]) -> Vec<Vec<String>> {
    let Some(label) = spec.spread_by.as_deref() else {
        return vec![wave.to_vec()];
    };
    let zone_of: HashMap<&str, &str> = spec
        .hosts
        .iter()
        .map(|h| {
            (
                h.name.as_str(),
                h.labels.get(label).map_or("", String::as_str),
            )
        })
        .collect();
    let mut parts: Vec<Vec<String>> = Vec::new();
    let mut last_zone = None;
    for host in wave {
        let zone = zone_of.get(host.as_str()).copied();
        if parts.is_empty() || zone != last_zone {
            parts.push(Vec::new());
            last_zone = zone;
        }
        parts.last_mut().expect("pushed above").push(host.clone());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> HostsTarget {
        serde_yaml::from_str(
            "hosts:
  - {name: h3, address: 'a:1', labels: {zone: b}}
  - {name: h1, address: 'a:1', labels: {zone: a}}
  - {name: h2, address: 'a:1', labels: {zone: a}, groups: [internal]}
  - {name: h4, address: 'a:1', labels: {zone: b}, groups: [internal]}
spreadBy: zone",
        )
        .unwrap()
    }

    #[test]
    fn each_step_names_the_hosts_it_changes() {
        let step = |old, new| crate::plan::Step::hold(crate::plan::StepKind::Scale, old, new, "");
        let steps = [step(3, 1), step(2, 2), step(2, 2), step(0, 4)];
        let hosts = step_hosts(&fleet(), Some("internal"), &steps);
        assert_eq!(
            hosts,
            vec![
                vec!["h2".to_string()],
                vec!["h4".to_string()],
                vec![],
                vec!["h1".to_string(), "h3".to_string()],
            ]
        );
    }

    #[test]
    fn first_group_then_zones() {
        assert_eq!(
            wave_order(&fleet(), Some("internal")),
            ["h2", "h4", "h1", "h3"]
        );
        assert_eq!(wave_order(&fleet(), None), ["h1", "h2", "h3", "h4"]);
    }

    #[test]
    fn waves_never_span_two_zones() {
        let parts = split_by_zone(&fleet(), &["h1".into(), "h2".into(), "h3".into()]);
        assert_eq!(
            parts,
            vec![
                vec!["h1".to_string(), "h2".to_string()],
                vec!["h3".to_string()]
            ]
        );
    }
}
