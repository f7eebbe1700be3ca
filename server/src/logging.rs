//! The server's log lines: text (env_logger's, `RUST_LOG` as ever) or JSON, one object per line
//! (`--log-format json`): time, level, target, pid, the worker's index in a worker process, the
//! message, and the structured fields a line carries (`log::info!(event = "drain", closed = n;
//! "…")`).

use std::io::Write;
use std::sync::OnceLock;

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// This process's worker index, for the `worker` field (unset in the supervisor).
static WORKER: OnceLock<usize> = OnceLock::new();

pub fn set_worker(index: usize) {
    let _ = WORKER.set(index);
}

/// Start logging to standard error in `format`; the level from `RUST_LOG` (default info).
pub fn init(format: LogFormat) {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    match format {
        LogFormat::Text => {
            builder.format_timestamp_millis();
        }
        LogFormat::Json => {
            builder.format(|buf, record| {
                let mut line = serde_json::Map::new();
                let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
                line.insert("ts".into(), ts.into());
                line.insert("level".into(), record.level().as_str().into());
                line.insert("target".into(), record.target().into());
                line.insert("pid".into(), std::process::id().into());
                if let Some(w) = WORKER.get() {
                    line.insert("worker".into(), (*w).into());
                }
                line.insert("msg".into(), record.args().to_string().into());
                let mut fields = Fields(&mut line);
                let _ = record.key_values().visit(&mut fields);
                writeln!(buf, "{}", serde_json::Value::Object(line))
            });
        }
    }
    let _ = builder.try_init();
}

/// A line's structured fields, as JSON values (numbers stay numbers).
struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> log::kv::VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: log::kv::Key<'kvs>, value: log::kv::Value<'kvs>) -> Result<(), log::kv::Error> {
        let v = if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(n) = value.to_f64() {
            serde_json::Value::from(n)
        } else if let Some(b) = value.to_bool() {
            b.into()
        } else {
            value.to_string().into()
        };
        self.0.insert(key.as_str().to_string(), v);
        Ok(())
    }
}
