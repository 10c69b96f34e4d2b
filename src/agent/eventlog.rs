//! The agent's log in the Windows Application Event Log: levels and stable event ids.
//!
//! ERROR → Error, WARN → Warning, INFO → Information; DEBUG and TRACE are not written. An event
//! that names its kind with an `event_id` field keeps that id; every other event gets its
//! level's id, so a filter on an id selects one kind of event across versions.

/// The Event Log source the agent registers (`service install`) and writes under.
pub const SOURCE: &str = "rollgate-agent";

/// Stable event ids.
pub mod ids {
    /// The agent service is listening (RUNNING).
    pub const STARTED: u32 = 1;
    /// The agent service stopped after a stop control.
    pub const STOPPED: u32 = 2;
    /// The agent service could not serve (STOPPED with a service-specific exit code).
    pub const FAILED: u32 = 3;
    /// Any other error.
    pub const ERROR: u32 = 100;
    /// Any other warning.
    pub const WARNING: u32 = 200;
    /// Any other information.
    pub const INFORMATION: u32 = 300;
}

/// The Event Log's level of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventLevel {
    Error,
    Warning,
    Information,
}

/// The entry a log event becomes, if any: its level and its id.
pub fn entry(level: &tracing::Level, event_id: Option<u32>) -> Option<(EventLevel, u32)> {
    let (level, default_id) = match *level {
        tracing::Level::ERROR => (EventLevel::Error, ids::ERROR),
        tracing::Level::WARN => (EventLevel::Warning, ids::WARNING),
        tracing::Level::INFO => (EventLevel::Information, ids::INFORMATION),
        _ => return None,
    };
    Some((level, event_id.unwrap_or(default_id)))
}

/// Collects an event's message, its other fields as `name=value`, and its `event_id`.
#[cfg(any(windows, test))]
#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<String>,
    event_id: Option<u32>,
}

#[cfg(any(windows, test))]
impl tracing::field::Visit for Fields {
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == "event_id" {
            self.event_id = u32::try_from(value).ok();
        } else {
            self.rest.push(format!("{}={value}", field.name()));
        }
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        if field.name() == "event_id" {
            self.event_id = u32::try_from(value).ok();
        } else {
            self.rest.push(format!("{}={value}", field.name()));
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.rest.push(format!("{}={value:?}", field.name()));
        }
    }
}

/// The text of an entry: the message, then the event's other fields.
#[cfg(any(windows, test))]
fn text(fields: &Fields) -> String {
    let mut out = fields.message.clone();
    for f in &fields.rest {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(f);
    }
    out
}

/// A `tracing` layer that writes the agent's INFO, WARN and ERROR events to the Application log
/// under [`SOURCE`] (the agent as a Windows service).
#[cfg(windows)]
pub struct EventLogLayer;

#[cfg(windows)]
impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EventLogLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let Some((level, id)) = entry(event.metadata().level(), fields.event_id) {
            // Nowhere to report a failure to log.
            let _ = super::win32::report_event(SOURCE, level, id, &text(&fields));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_event_types_and_stable_ids() {
        use tracing::Level;
        assert_eq!(
            entry(&Level::ERROR, None),
            Some((EventLevel::Error, ids::ERROR))
        );
        assert_eq!(
            entry(&Level::WARN, None),
            Some((EventLevel::Warning, ids::WARNING))
        );
        assert_eq!(
            entry(&Level::INFO, None),
            Some((EventLevel::Information, ids::INFORMATION))
        );
        assert_eq!(
            entry(&Level::INFO, Some(ids::STARTED)),
            Some((EventLevel::Information, ids::STARTED))
        );
        assert_eq!(
            entry(&Level::ERROR, Some(ids::FAILED)),
            Some((EventLevel::Error, ids::FAILED))
        );
        assert_eq!(entry(&Level::DEBUG, None), None);
        assert_eq!(entry(&Level::TRACE, Some(7)), None);
    }

    /// A layer that keeps what `Fields` saw, to test the visitor through real `tracing` events.
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Option<u32>)>>>;

    struct Keep(Seen);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Keep {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut fields = Fields::default();
            event.record(&mut fields);
            self.0
                .lock()
                .unwrap()
                .push((text(&fields), fields.event_id));
        }
    }

    #[test]
    fn the_entry_text_holds_the_message_and_fields_and_the_id_is_read() {
        use tracing_subscriber::layer::SubscriberExt;
        let seen: Seen = Default::default();
        let subscriber = tracing_subscriber::registry().with(Keep(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                event_id = ids::STARTED,
                url = "https://127.0.0.1:1",
                "running"
            );
            tracing::warn!(pid = 7, "killing");
        });
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen[0],
            (
                "running url=\"https://127.0.0.1:1\"".to_string(),
                Some(ids::STARTED)
            )
        );
        assert_eq!(seen[1], ("killing pid=7".to_string(), None));
    }
}
