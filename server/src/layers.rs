//! Where a setting comes from: a flag, else the environment (`WS_<FLAG>`), else a TOML file
//! (`--config PATH`, or `WS_CONFIG`), else the default. Every flag of a `clap::Command` gets its
//! environment variable here (`with_env`); the file's settings become flags placed before the
//! command line's (`with_file`), unless the command line or the environment gives them.
//! Unknown keys in the file are errors.

use std::ffi::OsString;

use clap::{ArgAction, Command};

/// The environment variable of flag `id`: `WS_` and the flag in upper case (`max_conns` →
/// `WS_MAX_CONNS`).
pub fn env_name(id: &str) -> String {
    format!("WS_{}", id.replace('-', "_").to_ascii_uppercase())
}

/// Every visible flag of `cmd` also read from its environment variable (hidden, internal flags
/// are not: an environment must not turn a server into one of its own workers).
pub fn with_env(cmd: Command) -> Command {
    cmd.mut_args(|a| {
        if a.is_hide_set() || a.get_long().is_none() || matches!(a.get_id().as_str(), "help" | "version") {
            return a;
        }
        let name = env_name(a.get_id().as_str());
        // A switch from the environment: 1/0, yes/no, on/off, true/false (empty: off).
        let a = match a.get_action() {
            ArgAction::SetTrue => a.value_parser(clap::builder::FalseyValueParser::new()),
            _ => a,
        };
        a.env(name)
    })
}

/// The config file named by `--config PATH` / `--config=PATH` in `argv`, or by `WS_CONFIG`.
pub fn config_path(argv: &[OsString]) -> Option<OsString> {
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            return it.next().cloned();
        }
        if let Some(path) = a.to_str().and_then(|s| s.strip_prefix("--config=")) {
            return Some(path.into());
        }
    }
    std::env::var_os("WS_CONFIG")
}

/// `argv` with the settings of the TOML text `file` put in front of the command line's flags,
/// except those the command line or the environment sets. Returns the new argv and the flags
/// the file set.
pub fn with_file(cmd: &Command, argv: Vec<OsString>, file: &str) -> Result<(Vec<OsString>, Vec<String>), String> {
    let table: toml::Table = file.parse().map_err(|e| format!("not TOML: {e}"))?;
    let on_command_line = |long: &str| {
        argv.iter().skip(1).any(|a| {
            a.to_str()
                .is_some_and(|s| s == format!("--{long}") || s.starts_with(&format!("--{long}=")))
        })
    };
    let mut injected: Vec<OsString> = Vec::new();
    let mut from_file = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && !a.is_hide_set() && long != "config")
            .ok_or_else(|| {
                let known: Vec<&str> = cmd
                    .get_arguments()
                    .filter(|a| !a.is_hide_set())
                    .filter_map(|a| a.get_long())
                    .filter(|l| !matches!(*l, "help" | "version" | "config"))
                    .collect();
                format!(
                    "unknown key '{key}' (keys are the flags without --: {})",
                    known.join(", ")
                )
            })?;
        if on_command_line(&long) || arg.get_env().is_some_and(|e| std::env::var_os(e).is_some()) {
            continue;
        }
        let is_flag = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
        let values: Vec<&toml::Value> = match value {
            toml::Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        for v in values {
            match (v, is_flag) {
                (toml::Value::Boolean(true), true) => injected.push(format!("--{long}").into()),
                (toml::Value::Boolean(false), true) => {}
                (_, true) => return Err(format!("'{key}' is a switch: give it true or false")),
                // `--flag=value`: a value that starts with `-` stays a value.
                (toml::Value::String(s), false) => injected.push(format!("--{long}={s}").into()),
                (toml::Value::Integer(_) | toml::Value::Float(_), false) => {
                    injected.push(format!("--{long}={v}").into());
                }
                (_, false) => return Err(format!("'{key}': give a string or a number")),
            }
        }
        from_file.push(long);
    }
    let mut out = Vec::with_capacity(argv.len() + injected.len());
    out.extend(argv.first().cloned());
    out.extend(injected);
    out.extend(argv.into_iter().skip(1));
    Ok((out, from_file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Arg;

    fn cmd() -> Command {
        Command::new("t")
            .arg(Arg::new("max_conns").long("max-conns"))
            .arg(Arg::new("echo").long("echo").action(ArgAction::SetTrue))
            .arg(Arg::new("origin").long("origin").action(ArgAction::Append))
            .arg(Arg::new("config").long("config"))
            .arg(Arg::new("worker").long("worker").hide(true).action(ArgAction::SetTrue))
            .args_override_self(true)
    }

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_file_comes_first_and_the_command_line_wins() {
        let file = "max_conns = 5000\necho = true\norigin = [\"https://a\", \"https://b\"]\n";
        let (out, keys) = with_file(&cmd(), argv(&["t", "--max-conns=7"]), file).unwrap();
        assert_eq!(
            out,
            argv(&[
                "t",
                "--echo",
                "--origin=https://a",
                "--origin=https://b",
                "--max-conns=7"
            ])
        );
        assert_eq!(keys, vec!["echo".to_string(), "origin".to_string()]);
        let m = with_env(cmd()).get_matches_from(out);
        assert_eq!(m.get_one::<String>("max_conns").map(String::as_str), Some("7"));
        assert!(m.get_flag("echo"));
    }

    #[test]
    fn unknown_keys_wrong_types_and_internal_flags_are_refused() {
        let e = with_file(&cmd(), argv(&["t"]), "max_con = 1").unwrap_err();
        assert!(e.contains("unknown key 'max_con'") && e.contains("max-conns"), "{e}");
        assert!(with_file(&cmd(), argv(&["t"]), "worker = true")
            .unwrap_err()
            .contains("unknown key"));
        assert!(with_file(&cmd(), argv(&["t"]), "echo = 3")
            .unwrap_err()
            .contains("switch"));
        assert!(with_file(&cmd(), argv(&["t"]), "max_conns = {a = 1}").is_err());
        assert!(with_file(&cmd(), argv(&["t"]), "= nonsense")
            .unwrap_err()
            .contains("not TOML"));
    }

    #[test]
    fn every_visible_flag_has_its_variable() {
        let c = with_env(cmd());
        let env = |id: &str| {
            c.get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        };
        assert_eq!(env("max_conns").as_deref(), Some("WS_MAX_CONNS"));
        assert_eq!(env("worker"), None, "not the internal flag");
    }

    #[test]
    fn the_config_path_from_the_command_line() {
        assert_eq!(config_path(&argv(&["t", "--config", "a.toml"])), Some("a.toml".into()));
        assert_eq!(config_path(&argv(&["t", "--config=b.toml"])), Some("b.toml".into()));
    }
}
