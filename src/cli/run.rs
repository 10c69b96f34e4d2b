//! Executes parsed commands: loads inputs, calls the library, prints, and picks the exit code.

use std::io::Write;

use crate::cli::{Cli, Command, Format, InputArgs, PlanArgs, exit, output};
use crate::plan::{self, Capacity};
use crate::spec::{InputError, Manifest};

/// Runs a command and returns the process exit code. Errors are printed here.
pub fn run(cli: Cli) -> u8 {
    let result = match cli.command {
        Command::Validate(args) => validate(&args),
        Command::Plan(args) => plan_cmd(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            exit::INPUT
        }
    }
}

fn load(input: &InputArgs) -> Result<Manifest, InputError> {
    Manifest::load(&input.files, input.env.as_deref())
}

fn validate(args: &InputArgs) -> Result<u8, InputError> {
    let m = load(args)?;
    let files: Vec<String> = m.sources.files.iter().map(|s| s.file.display().to_string()).collect();
    println!("{}: valid ({} strategy from {}; read {})", m.name(), m.strategy.name(), m.strategy_source, files.join(", "));
    Ok(exit::OK)
}

/// N and capacity for the manifest's target.
pub fn instance_count(m: &Manifest, replicas: Option<u32>) -> Result<(u32, Capacity), InputError> {
    let t = &m.rollout.spec.target;
    if let Some(h) = &t.hosts {
        if replicas.is_some() {
            return Err(InputError::general(
                "--replicas applies to kubernetes targets: a host fleet's size is the number of hosts it lists",
            ));
        }
        let n = u32::try_from(h.hosts.len()).unwrap_or(u32::MAX);
        let cap = if h.slots_per_host >= 2 { Capacity::TwoSlots } else { Capacity::InPlace };
        return Ok((n, cap));
    }
    match replicas {
        Some(n) => Ok((n, Capacity::Elastic)),
        None => Err(InputError::general(
            "planning a kubernetes target offline needs its size: pass --replicas N",
        )),
    }
}

fn plan_cmd(args: &PlanArgs) -> Result<u8, InputError> {
    let m = load(&args.input)?;
    let (n, capacity) = instance_count(&m, args.replicas)?;
    let p = plan::plan(&m.strategy, n, capacity).map_err(|e| m.sources.error(&e.path, e.message))?;
    let mut stdout = std::io::stdout().lock();
    let text = match args.output {
        Format::Table => output::plan_table(m.name(), &m.rollout.spec.version, &m.strategy_source, &p),
        Format::Json => serde_json::to_string_pretty(&p).expect("a plan always serializes") + "\n",
        Format::Yaml => serde_yaml::to_string(&p).expect("a plan always serializes"),
    };
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = stdout.write_all(text.as_bytes());
    Ok(exit::OK)
}
