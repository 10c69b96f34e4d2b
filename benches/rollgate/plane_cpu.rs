//! The control plane's CPU during one tool's rollout: each component's user + system time (from
//! `/proc/PID/stat`) and the machine's busy time (from `/proc/stat`), between two snapshots. On
//! two cores the control plane is CPU-bound through a 1,000-pod rollout: where one tool's run
//! costs it more, every pod of that run is made, bound and Ready later.

use std::collections::BTreeMap;

/// The components, by the process name (`comm`, at most 15 characters) the cluster runs them as.
const COMPONENTS: [&str; 5] = [
    "kube-apiserver",
    "etcd",
    "kube-controller",
    "kube-scheduler",
    "kwok",
];

/// `/proc` counts CPU time in USER_HZ ticks, 100 a second on Linux.
const TICKS: f64 = 100.0;

pub struct Snapshot {
    /// Ticks by component (processes of the same name added).
    each: BTreeMap<&'static str, u64>,
    /// The machine's busy and total ticks (every CPU).
    busy: u64,
    total: u64,
}

impl Snapshot {
    pub fn take() -> Snapshot {
        let mut each = BTreeMap::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid ...`: comm may hold spaces; the fields after its `)`.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = &stat[open + 1..close];
            let Some(name) = COMPONENTS.iter().find(|c| **c == comm) else {
                continue;
            };
            let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
            // utime and stime: fields 14 and 15 of the line, 12 and 13 after the state.
            let ticks = |i: usize| {
                fields
                    .get(i)
                    .and_then(|f| f.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            *each.entry(*name).or_insert(0) += ticks(11) + ticks(12);
        }
        let (mut busy, mut total) = (0, 0);
        if let Ok(stat) = std::fs::read_to_string("/proc/stat")
            && let Some(cpu) = stat.lines().next()
        {
            let v: Vec<u64> = cpu
                .split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            total = v.iter().take(8).sum();
            // idle and iowait are the 4th and 5th.
            busy = total - v.get(3).copied().unwrap_or(0) - v.get(4).copied().unwrap_or(0);
        }
        Snapshot { each, busy, total }
    }

    /// What the control plane and the machine spent since `self`, in a line: each component's CPU
    /// seconds, their sum, and the machine's busy share of all its CPUs.
    pub fn since(&self) -> String {
        let now = Snapshot::take();
        let mut parts = Vec::new();
        let mut sum = 0.0;
        for name in COMPONENTS {
            let used = now.each.get(name).copied().unwrap_or(0)
                - self
                    .each
                    .get(name)
                    .copied()
                    .unwrap_or(0)
                    .min(now.each.get(name).copied().unwrap_or(0));
            let s = used as f64 / TICKS;
            sum += s;
            parts.push(format!("{name} {s:.2}"));
        }
        let total = now.total.saturating_sub(self.total).max(1);
        let busy = now.busy.saturating_sub(self.busy);
        format!(
            "control plane CPU {sum:.2} s ({}); machine busy {:.0}%",
            parts.join(", "),
            100.0 * busy as f64 / total as f64
        )
    }
}
