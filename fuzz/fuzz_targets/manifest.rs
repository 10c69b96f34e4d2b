//! Manifest loader: YAML, an overlay of two documents, `${VAR}` expansion, validation, and the
//! condition language of metric checks. Input: up to four parts separated by NUL bytes — the
//! base document, its overlay, a condition, and the value of every set variable.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rollgate::health::condition::{self, Value};
use rollgate::spec::{Manifest, Sources, source};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\0');
    let base = parts.next().unwrap_or_default();
    let overlay = parts.next();
    let cond = parts.next().unwrap_or_default();
    let value = parts.next().unwrap_or("v").to_string();
    // Variables whose name starts with `S` are set (to the fuzzed value, possibly empty); the
    // others are unset, so both `${S:-d}` and `${U:-d}` paths run.
    let vars = move |name: &str| name.starts_with('S').then(|| value.clone());

    // No file exists under this dir: a strategy file reference fails instead of reading one.
    let file = Path::new("/nonexistent/rollgate-fuzz/rollout.yaml");
    let over = Path::new("/nonexistent/rollgate-fuzz/rollout.prod.yaml");
    let mut texts = vec![(file, base)];
    if let Some(o) = overlay {
        texts.push((over, o));
    }
    if let Ok(sources) = Sources::from_texts(&texts, &vars) {
        let _ = sources.merged();
        // Errors are located by field path; the condition part doubles as a path probe.
        let _ = sources.error(cond, "probe");
        if let Ok(m) = Manifest::from_sources(sources, &vars) {
            // A valid manifest survives its own resolved form.
            let _ = m.resolved();
        }
    }
    let _ = source::expand_str(base, &vars);
    let _ = rollgate::agent::config::parse(file, base);

    if let Ok(expr) = condition::parse(cond) {
        for v in [
            Value::Scalar(0.0),
            Value::Scalar(f64::NAN),
            Value::Scalar(-1e308),
            Value::Vector(vec![]),
            Value::Vector(vec![1.0]),
            Value::Vector(vec![0.5, f64::INFINITY, -0.0]),
        ] {
            let _ = condition::eval(&expr, &v);
        }
    }
});
