//! The page's actions, each run as the CLI command of the same name (`cli::run`), on a thread of
//! its own: a promote or resume may drive the rest of a rollout, which takes minutes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::api::{Shared, layout};
use crate::cli::{AppArgs, Command, Progress, PromoteArgs, RollbackArgs, SignerArgs};
use crate::hold::Env;
use crate::state::{history, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    Promote,
    Pause,
    Resume,
    Abort,
    Rollback,
}

impl Action {
    /// The CLI command of the same name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Promote => "promote",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Abort => "abort",
            Action::Rollback => "rollback",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActionRequest {
    pub action: Action,
    /// `promote --full`: skip to all-new.
    #[serde(default)]
    pub full: bool,
}

/// The last action started from this dashboard for an app.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionStatus {
    pub action: Action,
    /// `running`, then the exit code's meaning: `ok`, `failed`, `paused`, or `error`.
    pub state: &'static str,
    pub code: Option<u8>,
    pub message: String,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
}

/// Why an action was not started, as the HTTP answer.
pub struct Refused {
    pub status: StatusCode,
    pub body: Value,
}

/// Starts `request` on `app` unless an action of this dashboard still runs on it, or it would
/// need a signature (which the page never makes: it answers with the CLI command instead).
pub fn start(
    shared: &Arc<Shared>,
    app: &str,
    request: ActionRequest,
) -> Result<ActionStatus, Refused> {
    if request.action == Action::Promote
        && let Some(command) = needs_signature(shared, app)
    {
        return Err(Refused {
            status: StatusCode::CONFLICT,
            body: json!({
                "error": "this pause needs signed approvals: approve with your approver certificate from a terminal",
                "cli": command,
            }),
        });
    }
    let status = ActionStatus {
        action: request.action,
        state: "running",
        code: None,
        message: String::new(),
        started_ms: now_ms(),
        finished_ms: None,
    };
    {
        let mut actions = shared.actions.lock().expect("actions lock");
        if let Some(a) = actions.get(app).filter(|a| a.state == "running") {
            return Err(Refused {
                status: StatusCode::CONFLICT,
                body: json!({"error": format!("{:?} is still running on {app}", a.action)}),
            });
        }
        actions.insert(app.to_string(), status.clone());
    }
    shared.generation.fetch_add(1, Ordering::SeqCst);
    let command = command(app, &request);
    let (shared2, app2) = (shared.clone(), app.to_string());
    let thread = std::thread::Builder::new()
        .name(format!("dashboard {app}"))
        // The CLI runs a rollout on the main thread's 8 MiB; a debug build's rollout future
        // overflows a spawned thread's default 2 MiB.
        .stack_size(32 << 20)
        .spawn(move || {
            let result = crate::cli::runtime()
                .map_err(|e| crate::cli::CliError::Failed(format!("a tokio runtime: {e}")))
                .and_then(|rt| {
                    let env = Env::new(shared2.store.clone(), None, None);
                    rt.block_on(crate::cli::run::run_async(command, &env))
                });
            let (state, code, message) = match result {
                Ok(code) => (word(code), Some(code), format!("exit code {code}")),
                Err(e) => {
                    eprintln!("dashboard: {app2}: {e}");
                    ("error", Some(e.code()), e.to_string())
                }
            };
            if let Some(a) = shared2.actions.lock().expect("actions lock").get_mut(&app2) {
                a.state = state;
                a.code = code;
                a.message = message;
                a.finished_ms = Some(now_ms());
            }
            shared2.generation.fetch_add(1, Ordering::SeqCst);
        });
    match thread {
        Ok(t) => shared.threads.lock().expect("threads lock").push(t),
        Err(e) => {
            shared.actions.lock().expect("actions lock").remove(app);
            return Err(Refused {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                body: json!({"error": format!("starting the action: {e}")}),
            });
        }
    }
    Ok(status)
}

fn word(code: u8) -> &'static str {
    match code {
        crate::cli::exit::OK => "ok",
        crate::cli::exit::PAUSED => "paused",
        _ => "failed",
    }
}

/// The CLI command an action is.
fn command(app: &str, request: &ActionRequest) -> Command {
    let args = AppArgs {
        app: app.to_string(),
        output: Progress::Plain,
    };
    match request.action {
        // No signer: the page never signs (the environment's approver files are not read here).
        Action::Promote => Command::Promote(PromoteArgs {
            app: args,
            full: request.full,
            signer: SignerArgs {
                key: None,
                cert: None,
            },
        }),
        Action::Pause => Command::Pause(args),
        Action::Resume => Command::Resume(args),
        Action::Abort => Command::Abort(args),
        Action::Rollback => Command::Rollback(RollbackArgs {
            app: args,
            to: None,
            fast: false,
        }),
    }
}

/// When the app's last rollout is paused at a step whose approvals must be signed: the command
/// that approves it from a terminal.
fn needs_signature(shared: &Shared, app: &str) -> Option<String> {
    let records = shared.store.read(app).ok()?;
    let last = history(&records).pop()?;
    last.paused.as_ref()?;
    let step = last.steps.last()?.step;
    let planned = layout(&shared.store, app, &last.id, &records);
    if !planned.steps.get(step)?.signed {
        return None;
    }
    let root = shared.store.app_dir("");
    let root = root.display().to_string();
    let root = root.trim_end_matches(['/', '\\']);
    Some(format!(
        "ROLLGATE_STATE={} rollgate promote {} --key YOUR-APPROVER-KEY.pem --cert YOUR-APPROVER-CERT.pem",
        quote(root),
        quote(app)
    ))
}

/// A word for a POSIX shell, quoted when it needs to be.
fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_a_known_action() {
        let r: ActionRequest = serde_json::from_str(r#"{"action":"promote","full":true}"#).unwrap();
        assert_eq!((r.action, r.full), (Action::Promote, true));
        assert!(serde_json::from_str::<ActionRequest>(r#"{"action":"deploy"}"#).is_err());
        assert!(serde_json::from_str::<ActionRequest>(r#"{"action":"pause","x":1}"#).is_err());
    }

    #[test]
    fn shell_words_are_quoted_when_needed() {
        assert_eq!(quote("/var/lib/x"), "/var/lib/x");
        assert_eq!(quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
