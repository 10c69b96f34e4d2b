//! Metric checks: a Prometheus query or a JSON web endpoint, judged by the condition language.
//!
//! [`MetricGate`] is the pure fold over measurements (success, failure, inconclusive, error) with
//! Argo-style limits; [`measure`] takes one measurement over HTTP.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Verdict;
use super::condition::{self, Value};
use crate::spec::Check;

/// One measurement of a metric check.
#[derive(Debug, Clone, PartialEq)]
pub enum Measurement {
    Success(String),
    Failure(String),
    /// No data (an empty query result): neither success nor failure.
    Inconclusive(String),
    /// The query itself failed (transport, HTTP status, bad JSON): not a failure until the limit.
    Error(String),
}

/// The limits of one metric check, folded over its measurements.
#[derive(Debug, Clone)]
pub struct MetricGate {
    count: u32,
    failure_limit: u32,
    inconclusive_limit: u32,
    consecutive_error_limit: u32,
    measured: u32,
    failures: u32,
    inconclusives: u32,
    consecutive_errors: u32,
    last: String,
}

impl MetricGate {
    pub fn new(check: &Check) -> Self {
        MetricGate {
            count: check.count.max(1),
            failure_limit: check.failure_limit,
            inconclusive_limit: check.inconclusive_limit,
            consecutive_error_limit: check.consecutive_error_limit,
            measured: 0,
            failures: 0,
            inconclusives: 0,
            consecutive_errors: 0,
            last: String::new(),
        }
    }

    pub fn observe(&mut self, m: Measurement) -> Verdict {
        match m {
            Measurement::Error(why) => {
                self.consecutive_errors += 1;
                if self.consecutive_errors > self.consecutive_error_limit {
                    return Verdict::Fail(format!(
                        "{} consecutive errors (consecutiveErrorLimit {}): {why}",
                        self.consecutive_errors, self.consecutive_error_limit
                    ));
                }
                return Verdict::Pending;
            }
            Measurement::Success(what) => {
                self.last = what;
            }
            Measurement::Failure(what) => {
                self.failures += 1;
                self.last = what;
            }
            Measurement::Inconclusive(what) => {
                self.inconclusives += 1;
                self.last = what;
            }
        }
        self.consecutive_errors = 0;
        self.measured += 1;
        if self.failures > self.failure_limit {
            Verdict::Fail(format!(
                "{} of {} measurements failed (failureLimit {}): {}",
                self.failures, self.measured, self.failure_limit, self.last
            ))
        } else if self.inconclusives > self.inconclusive_limit {
            Verdict::Inconclusive(format!(
                "{} of {} measurements inconclusive (inconclusiveLimit {}): {}",
                self.inconclusives, self.measured, self.inconclusive_limit, self.last
            ))
        } else if self.measured >= self.count {
            Verdict::Pass
        } else {
            Verdict::Pending
        }
    }
}

/// Judges a value with the check's conditions: failureCondition first, then successCondition.
pub fn judge(check: &Check, value: &Value) -> Measurement {
    if matches!(value, Value::Vector(v) if v.is_empty()) {
        return Measurement::Inconclusive("the query returned no data".into());
    }
    let shown = match value {
        Value::Scalar(s) => format!("result {s}"),
        Value::Vector(v) => format!("result {v:?}"),
    };
    let run = |text: &Option<String>| -> Option<Result<bool, String>> {
        let text = text.as_ref()?;
        Some(
            condition::parse(text)
                .map_err(|e| e.to_string())
                .and_then(|e| condition::eval(&e, value)),
        )
    };
    match run(&check.failure_condition) {
        Some(Ok(true)) => {
            return Measurement::Failure(format!(
                "{shown}: failureCondition {:?} holds",
                check.failure_condition.as_deref().unwrap_or("")
            ));
        }
        Some(Err(e)) => return Measurement::Error(format!("{shown}: failureCondition: {e}")),
        _ => {}
    }
    match run(&check.success_condition) {
        Some(Ok(true)) | None => Measurement::Success(shown),
        Some(Ok(false)) => Measurement::Failure(format!(
            "{shown}: successCondition {:?} does not hold",
            check.success_condition.as_deref().unwrap_or("")
        )),
        Some(Err(e)) => Measurement::Error(format!("{shown}: successCondition: {e}")),
    }
}

/// Replaces `{{name}}` with its value in a query or URL.
pub fn fill(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = text.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    out
}

/// Takes one measurement of a metric check (`prometheus` or `web`).
pub async fn measure(
    http: &reqwest::Client,
    check: &Check,
    vars: &BTreeMap<String, String>,
) -> Measurement {
    measure_value(http, check, vars).await.1
}

/// The number a measurement is drawn as: a scalar, or a vector's first element.
pub fn plotted(value: &Value) -> Option<f64> {
    match value {
        Value::Scalar(s) => Some(*s),
        Value::Vector(v) => v.first().copied(),
    }
}

/// One measurement, with the number it is drawn as (none when the query gave none).
pub async fn measure_value(
    http: &reqwest::Client,
    check: &Check,
    vars: &BTreeMap<String, String>,
) -> (Option<f64>, Measurement) {
    let timeout = check.timeout.0;
    let value = if let Some(p) = &check.prometheus {
        prometheus(
            http,
            &fill(&p.address, vars),
            &fill(&p.query, vars),
            timeout,
        )
        .await
    } else if let Some(w) = &check.web {
        web(http, w, vars, timeout).await
    } else {
        Err("not a metric check".to_string())
    };
    match value {
        Ok(v) => (plotted(&v).filter(|x| x.is_finite()), judge(check, &v)),
        Err(e) => (None, Measurement::Error(e)),
    }
}

async fn prometheus(
    http: &reqwest::Client,
    address: &str,
    query: &str,
    timeout: Duration,
) -> Result<Value, String> {
    let url = format!("{}/api/v1/query", address.trim_end_matches('/'));
    let resp = http
        .get(&url)
        .query(&[("query", query)])
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("prometheus {url}: {e}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| format!("prometheus {url}: status {status}, body is not JSON: {e}"))?;
    if body["status"] != "success" {
        return Err(format!(
            "prometheus {url}: {}",
            body["error"].as_str().unwrap_or("query failed")
        ));
    }
    prometheus_value(&body["data"])
}

/// The value of a Prometheus `data` object: scalar, or the vector's sample values.
pub fn prometheus_value(data: &serde_json::Value) -> Result<Value, String> {
    let sample = |v: &serde_json::Value| -> Result<f64, String> {
        v.get(1)
            .and_then(|x| x.as_str())
            .and_then(|x| x.parse::<f64>().ok())
            .ok_or_else(|| format!("unexpected sample {v}"))
    };
    match data["resultType"].as_str() {
        Some("scalar") => Ok(Value::Scalar(sample(&data["result"])?)),
        Some("vector") => {
            let items = data["result"]
                .as_array()
                .ok_or("vector result is not a list")?;
            Ok(Value::Vector(
                items
                    .iter()
                    .map(|i| sample(&i["value"]))
                    .collect::<Result<_, _>>()?,
            ))
        }
        other => Err(format!(
            "unsupported result type {other:?}: expected scalar or vector"
        )),
    }
}

async fn web(
    http: &reqwest::Client,
    w: &crate::spec::WebProbe,
    vars: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<Value, String> {
    let url = fill(&w.url, vars);
    let mut req = match w.method.as_str() {
        "POST" => http.post(&url),
        _ => http.get(&url),
    };
    if let Some(body) = &w.body {
        req = req
            .header("content-type", "application/json")
            .body(fill(body, vars));
    }
    let resp = req
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: status {}", resp.status()));
    }
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| format!("{url}: body is not JSON: {e}"))?;
    let picked = json_path(&body, &w.json_path).map_err(|e| format!("{url}: {e}"))?;
    to_value(picked).map_err(|e| format!("{url}: {} {e}", w.json_path))
}

fn to_value(v: &serde_json::Value) -> Result<Value, String> {
    let num = |x: &serde_json::Value| {
        x.as_f64()
            .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
    };
    match v {
        serde_json::Value::Array(items) => items
            .iter()
            .map(|i| num(i).ok_or_else(|| format!("holds {i}, not a number")))
            .collect::<Result<_, _>>()
            .map(Value::Vector),
        serde_json::Value::Null => Ok(Value::Vector(Vec::new())),
        other => num(other)
            .map(Value::Scalar)
            .ok_or_else(|| format!("is {other}, not a number")),
    }
}

/// A small JSONPath: `$`, `.name`, `['name']` and `[index]`.
pub fn json_path<'a>(
    root: &'a serde_json::Value,
    path: &str,
) -> Result<&'a serde_json::Value, String> {
    let p = path.trim();
    let mut rest = p
        .strip_prefix('$')
        .ok_or_else(|| format!("jsonPath {path:?} must start with \"$\""))?;
    let mut cur = root;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            cur = cur
                .get(key)
                .ok_or_else(|| format!("jsonPath {path:?}: no field {key:?}"))?;
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r
                .find(']')
                .ok_or_else(|| format!("jsonPath {path:?}: missing \"]\""))?;
            let inner = r[..end].trim();
            cur = if let Ok(i) = inner.parse::<usize>() {
                cur.get(i)
                    .ok_or_else(|| format!("jsonPath {path:?}: no element {i}"))?
            } else {
                let key = inner.trim_matches(['\'', '"']);
                cur.get(key)
                    .ok_or_else(|| format!("jsonPath {path:?}: no field {key:?}"))?
            };
            rest = &r[end + 1..];
        } else {
            return Err(format!("jsonPath {path:?}: unexpected {rest:?}"));
        }
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(extra: &str) -> Check {
        serde_yaml::from_str(&format!(
            "{{name: m, prometheus: {{address: 'http://x', query: 'up'}}, {extra}}}"
        ))
        .unwrap()
    }

    #[test]
    fn conditions_judge_values() {
        let c = check("successCondition: 'result[0] >= 0.99'");
        assert!(matches!(
            judge(&c, &Value::Vector(vec![0.995])),
            Measurement::Success(_)
        ));
        assert!(matches!(
            judge(&c, &Value::Vector(vec![0.9])),
            Measurement::Failure(_)
        ));
        assert!(matches!(
            judge(&c, &Value::Vector(vec![])),
            Measurement::Inconclusive(_)
        ));
        let c = check("failureCondition: 'result > 0.05'");
        assert!(matches!(
            judge(&c, &Value::Scalar(0.01)),
            Measurement::Success(_)
        ));
        assert!(matches!(
            judge(&c, &Value::Scalar(0.2)),
            Measurement::Failure(_)
        ));
    }

    #[test]
    fn limits() {
        let mut g = MetricGate::new(&check(
            "successCondition: 'result > 0', count: 3, failureLimit: 1, consecutiveErrorLimit: 2",
        ));
        assert_eq!(
            g.observe(Measurement::Failure("x".into())),
            Verdict::Pending
        );
        assert_eq!(g.observe(Measurement::Error("e".into())), Verdict::Pending);
        assert_eq!(g.observe(Measurement::Error("e".into())), Verdict::Pending);
        assert!(
            matches!(g.observe(Measurement::Error("e".into())), Verdict::Fail(m) if m.contains("3 consecutive errors"))
        );
        let mut g = MetricGate::new(&check("successCondition: 'result > 0', count: 2"));
        assert_eq!(
            g.observe(Measurement::Success("a".into())),
            Verdict::Pending
        );
        assert_eq!(g.observe(Measurement::Success("a".into())), Verdict::Pass);
        let mut g = MetricGate::new(&check(
            "successCondition: 'result > 0', count: 5, inconclusiveLimit: 1",
        ));
        assert_eq!(
            g.observe(Measurement::Inconclusive("none".into())),
            Verdict::Pending
        );
        assert!(matches!(
            g.observe(Measurement::Inconclusive("none".into())),
            Verdict::Inconclusive(_)
        ));
    }

    #[test]
    fn prometheus_shapes() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"0.5"]}]}"#,
        )
        .unwrap();
        assert_eq!(prometheus_value(&v), Ok(Value::Vector(vec![0.5])));
        let v: serde_json::Value =
            serde_json::from_str(r#"{"resultType":"scalar","result":[1,"2"]}"#).unwrap();
        assert_eq!(prometheus_value(&v), Ok(Value::Scalar(2.0)));
        let v: serde_json::Value =
            serde_json::from_str(r#"{"resultType":"vector","result":[]}"#).unwrap();
        assert_eq!(prometheus_value(&v), Ok(Value::Vector(vec![])));
    }

    #[test]
    fn json_paths() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"a":{"b":[1,{"c":"0.25"}]},"d e":3}"#).unwrap();
        assert_eq!(
            to_value(json_path(&v, "$.a.b[1].c").unwrap()),
            Ok(Value::Scalar(0.25))
        );
        assert_eq!(json_path(&v, "$['d e']").unwrap(), 3);
        assert!(json_path(&v, "a.b").is_err());
        assert!(json_path(&v, "$.zz").unwrap_err().contains("no field"));
    }

    #[test]
    fn vars_fill() {
        let vars: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        assert_eq!(fill("rate{app=\"{{app}}\"}", &vars), "rate{app=\"web\"}");
    }
}
