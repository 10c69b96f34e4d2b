//! The independent availability probe of the host tests: plain HTTP GETs from the root namespace,
//! sharing nothing with what they measure, and what they saw.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A plain HTTP/1.1 GET with a deadline: (status, body) or the error. No client library, so the
/// probe shares nothing with what it measures.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(left)).map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let resp = String::from_utf8_lossy(&buf);
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed response {resp:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("malformed status line in {head:?}"))?;
    Ok((status, body.trim().to_string()))
}

/// One probe of one host: when it was taken, and the version if `/` answered 200.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Duration,
    /// `Some(version)` when the host served (`GET /` answered 200 "version X").
    pub version: Option<String>,
}

/// The independent availability probe: one thread per host samples `GET /` every `interval` from
/// the root namespace until stopped. A host that is down refuses at once; the 1 s deadline only
/// bounds a host that does not answer (cut off), and is long enough that a busy machine's stalls
/// are not mistaken for a host down.
pub struct Probe {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    samples: Arc<Mutex<Vec<Vec<Sample>>>>,
    started: Instant,
    interval: Duration,
}

impl Probe {
    pub fn start(addrs: Vec<SocketAddr>, interval: Duration) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(vec![Vec::new(); addrs.len()]));
        let started = Instant::now();
        let threads = addrs
            .into_iter()
            .enumerate()
            .map(|(i, addr)| {
                let (stop, samples) = (stop.clone(), samples.clone());
                std::thread::spawn(move || {
                    let mut tick = 0u32;
                    while !stop.load(Ordering::SeqCst) {
                        let at = started.elapsed();
                        let version = match http_get(addr, "/", Duration::from_secs(1)) {
                            Ok((200, body)) => body.strip_prefix("version ").map(str::to_string),
                            _ => None,
                        };
                        samples.lock().unwrap()[i].push(Sample { at, version });
                        // The next tick on the fixed schedule; ticks missed while waiting are skipped.
                        let now = started.elapsed();
                        tick = tick.max((now.as_nanos() / interval.as_nanos()) as u32) + 1;
                        std::thread::sleep((interval * tick).saturating_sub(now));
                    }
                })
            })
            .collect();
        Probe {
            stop,
            threads,
            samples,
            started,
            interval,
        }
    }

    /// Stops sampling and returns what was seen.
    pub fn stop(self) -> ProbeReport {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        let samples = std::mem::take(&mut *self.samples.lock().unwrap());
        ProbeReport {
            samples,
            interval: self.interval,
            took: self.started.elapsed(),
        }
    }
}

/// What a [`Probe`] saw.
#[derive(Debug)]
pub struct ProbeReport {
    /// Per host, in time order.
    pub samples: Vec<Vec<Sample>>,
    pub interval: Duration,
    pub took: Duration,
}

impl ProbeReport {
    /// For each tick of the schedule, each host's state then: its last sample taken at or before
    /// the tick (a host not yet sampled counts as unavailable).
    pub fn timeline(&self) -> Vec<(Duration, Vec<Option<String>>)> {
        let first_all = self
            .samples
            .iter()
            .map(|s| s.first().map_or(self.took, |x| x.at))
            .max()
            .unwrap_or_default();
        let mut out = Vec::new();
        let mut t = first_all;
        while t <= self.took {
            let row = self
                .samples
                .iter()
                .map(|s| {
                    s.iter()
                        .take_while(|x| x.at <= t)
                        .last()
                        .and_then(|x| x.version.clone())
                })
                .collect();
            out.push((t, row));
            t += self.interval;
        }
        out
    }

    /// The fewest hosts serving at any tick, and when.
    pub fn min_available(&self) -> (usize, Duration) {
        self.timeline()
            .into_iter()
            .map(|(t, row)| (row.iter().filter(|v| v.is_some()).count(), t))
            .min_by_key(|(n, t)| (*n, *t))
            .unwrap_or((0, Duration::ZERO))
    }

    /// Number of samples taken, over all hosts.
    pub fn sample_count(&self) -> usize {
        self.samples.iter().map(Vec::len).sum()
    }

    /// The versions host `i` served, in the order first seen.
    pub fn versions_seen(&self, i: usize) -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        for s in &self.samples[i] {
            if let Some(v) = &s.version
                && seen.last() != Some(v)
            {
                seen.push(v.clone());
            }
        }
        seen
    }

    /// What host `i` served at its last sample.
    pub fn last_version(&self, i: usize) -> Option<String> {
        self.samples[i].last().and_then(|s| s.version.clone())
    }

    /// A compact rendering for failure messages: one line per tick where some host was down.
    pub fn dips(&self) -> String {
        self.timeline()
            .into_iter()
            .filter(|(_, row)| row.iter().any(Option::is_none))
            .map(|(t, row)| {
                let cells: Vec<String> = row
                    .iter()
                    .map(|v| v.clone().unwrap_or_else(|| "DOWN".into()))
                    .collect();
                format!("{:>7.2}s {}\n", t.as_secs_f64(), cells.join(" "))
            })
            .collect()
    }
}
