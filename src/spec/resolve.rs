//! Resolution of the manifest's strategy: inline, or a preset by name (on disk over built in).

use super::*;

pub(super) fn resolve_strategy(
    spec: &StrategySpec,
    sources: &Sources,
    base_dir: &Path,
    vars: source::Vars<'_>,
) -> Result<(Strategy, String), InputError> {
    let set = [
        spec.rolling.is_some(),
        spec.canary.is_some(),
        spec.blue_green.is_some(),
        spec.reference.is_some(),
    ];
    match set.iter().filter(|b| **b).count() {
        0 => {
            return Err(sources.error(
                "spec.strategy",
                "is empty: expected exactly one of rolling, canary, blueGreen, ref",
            ));
        }
        1 => {}
        _ => {
            return Err(sources.error(
                "spec.strategy",
                "has more than one of rolling, canary, blueGreen, ref: expected exactly one",
            ));
        }
    }
    let Some(name) = &spec.reference else {
        return Ok((inline_strategy(spec), "inline".into()));
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(sources.error(
            "spec.strategy.ref",
            format!("{name:?} is not a preset name: expected letters, digits, '-' or '_'"),
        ));
    }
    let file_name = format!("{name}.yaml");
    // Next to the first manifest (or in a `strategies/` folder beside it), never the current
    // directory: the same manifest resolves the same way wherever rollgate runs (issue 20).
    let candidates = [
        base_dir.join(&file_name),
        base_dir.join("strategies").join(&file_name),
    ];
    // A manifest named like a preset (blue-green.yaml) must not be read as its own preset.
    let inputs: Vec<PathBuf> = sources
        .files
        .iter()
        .filter_map(|s| s.file.canonicalize().ok())
        .collect();
    let is_input = |p: &PathBuf| p.canonicalize().is_ok_and(|c| inputs.contains(&c));
    let (preset_sources, origin) = match candidates.iter().find(|p| p.is_file() && !is_input(p)) {
        Some(path) => (
            Sources::read(std::slice::from_ref(path), None, vars)?,
            path.display().to_string(),
        ),
        None => match PRESETS.iter().find(|(n, _)| n == name) {
            Some((n, text)) => {
                let label = PathBuf::from(format!("builtin:strategies/{n}.yaml"));
                (
                    Sources::from_texts(&[(&label, text)], vars)?,
                    format!("builtin:{n}"),
                )
            }
            None => {
                let known: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
                return Err(sources.error(
                    "spec.strategy.ref",
                    format!(
                        "no preset {name:?}: looked for {} and {}, and the built-in presets are {}",
                        candidates[0].display(),
                        candidates[1].display(),
                        known.join(", ")
                    ),
                ));
            }
        },
    };
    let preset: StrategySpec = preset_sources.deserialize()?;
    if preset.reference.is_some() {
        return Err(preset_sources.error("ref", "a preset may not refer to another preset"));
    }
    let count = [
        preset.rolling.is_some(),
        preset.canary.is_some(),
        preset.blue_green.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if count != 1 {
        return Err(preset_sources.error("", "expected exactly one of rolling, canary, blueGreen"));
    }
    Ok((inline_strategy(&preset), origin))
}

fn inline_strategy(spec: &StrategySpec) -> Strategy {
    if let Some(r) = &spec.rolling {
        Strategy::Rolling(r.clone())
    } else if let Some(c) = &spec.canary {
        Strategy::Canary(c.clone())
    } else if let Some(b) = &spec.blue_green {
        Strategy::BlueGreen(b.clone())
    } else {
        unreachable!("resolve_strategy checked that exactly one strategy is set")
    }
}
