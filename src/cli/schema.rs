//! `rollgate schema`: JSON Schemas of the manifest, a strategy preset and the agent config,
//! generated from the serde types the parser reads (so an editor flags what `validate` refuses).

use schemars::{JsonSchema, Schema, SchemaGenerator};

use crate::cli::{CliError, SchemaKind, exit, output};

/// The schema of `kind`, pretty JSON on stdout.
pub fn command(kind: SchemaKind) -> Result<u8, CliError> {
    let text = serde_json::to_string_pretty(&schema(kind))
        .map_err(|e| CliError::Failed(format!("printing the schema: {e}")))?;
    output::out(&format!("{text}\n"));
    Ok(exit::OK)
}

/// The schema of `kind` (JSON Schema 2020-12).
pub fn schema(kind: SchemaKind) -> Schema {
    match kind {
        SchemaKind::Manifest => titled::<crate::spec::Rollout>("rollgate manifest (kind: Rollout)"),
        SchemaKind::Strategy => titled::<crate::spec::StrategySpec>(
            "rollgate strategy preset (strategies/NAME.yaml: one strategy block)",
        ),
        SchemaKind::AgentConfig => {
            titled::<crate::agent::config::AgentConfig>("rollgate-agent configuration")
        }
    }
}

fn titled<T: JsonSchema>(title: &str) -> Schema {
    let mut schema = SchemaGenerator::default().into_root_schema_for::<T>();
    schema.insert("title".into(), title.into());
    schema
}
