//! The distgate binary on loopback ports the OS picks (EPMD and admin on port 0, one
//! free public port), with JSON logs read back for the addresses it bound.

use std::net::SocketAddr;

use super::beam::Output;
use super::{DEADLINE, TempDir, free_port};

/// A running distgate binary.
pub struct Running {
    pub out: Output,
    pub epmd: SocketAddr,
    pub admin: SocketAddr,
    pub public: SocketAddr,
    /// The configuration file it reads (and reloads).
    pub config: std::path::PathBuf,
    /// The directory that holds it.
    _dir: TempDir,
}

/// The configuration [`Running`] writes: its listeners with `epmd` and `dist` keys,
/// then `more` tables.
fn config_text(epmd: &str, ports: &str, dist: &str, more: &str) -> String {
    format!(
        "[epmd]\nlisten = [\"127.0.0.1:0\"]\n{epmd}\n[dist]\nlisten = [\"127.0.0.1\"]\nports = [{ports}]\n{dist}\n\
         [admin]\nlisten = [\"127.0.0.1:0\"]\n{more}"
    )
}

/// The address a listener line of the JSON log names.
pub fn listening(out: &mut Output, message: &str) -> SocketAddr {
    let line = out.wait_line(message, DEADLINE, |l| l.contains(message));
    let value: serde_json::Value = serde_json::from_str(&line).unwrap();
    value["addr"].as_str().unwrap().parse().unwrap()
}

impl Running {
    /// Starts it with `more` appended to the configuration (whole tables, after
    /// `[epmd]`, `[dist]` and `[admin]`, which are set here).
    pub fn start(more: &str) -> Running {
        Self::start_with("", more)
    }

    /// [`Running::start`] with `dist` (keys) added to its `[dist]` table. The public
    /// port is one the OS just had free; should another process take it before
    /// distgate binds it, distgate exits saying so and is started again on another.
    pub fn start_with(dist: &str, more: &str) -> Running {
        Self::start_as(None, dist, more)
    }

    /// [`Running::start_with`] as user and group `uid` without capabilities (as
    /// Kubernetes runs it), when given.
    pub fn start_as(uid: Option<u32>, dist: &str, more: &str) -> Running {
        Self::start_as_ids(uid.map(|uid| (uid, uid)), dist, more)
    }

    /// [`Running::start_with`] as user and group `(uid, gid)`, no capabilities, no
    /// `HOME`, in `/`, when given.
    pub fn start_as_ids(ids: Option<(u32, u32)>, dist: &str, more: &str) -> Running {
        let dir = TempDir::new("distgate-bin-");
        let config = dir.join("distgate.toml");
        let mut attempts = 0;
        let mut out = loop {
            attempts += 1;
            std::fs::write(
                &config,
                config_text("", &free_port().to_string(), dist, more),
            )
            .unwrap();
            let binary = std::path::Path::new(env!("CARGO_BIN_EXE_distgate"));
            let mut command = super::as_user::as_ids(ids, binary);
            if ids.is_some() {
                command.env_remove("HOME").current_dir("/");
            }
            command
                .args(["--log-format", "json", "--config"])
                .arg(&config);
            let mut out = Output::spawn("distgate", &mut command);
            let bound = super::eventually_blocking(DEADLINE, "distgate to bind or exit", || {
                let text = out.text();
                if text.contains("\"public dist port listening\"") {
                    return Some(true);
                }
                out.process.exited().map(|_| false)
            });
            let taken = !bound && out.text().contains("in use");
            if bound || !taken || attempts == 3 {
                break out;
            }
        };
        let epmd = listening(&mut out, "\"EPMD listening\"");
        let admin = listening(&mut out, "\"admin HTTP listening");
        let public = listening(&mut out, "\"public dist port listening\"");
        Running {
            out,
            epmd,
            admin,
            public,
            config,
            _dir: dir,
        }
    }

    /// Writes its configuration file anew, with the same listeners: `epmd` keys,
    /// public ports `ports` (a TOML list's items), `dist` keys, `more` tables.
    pub fn rewrite(&self, epmd: &str, ports: &str, dist: &str, more: &str) {
        std::fs::write(&self.config, config_text(epmd, ports, dist, more)).unwrap();
    }

    /// Sends signal `name` (`HUP`, `TERM`, …) to it.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.out.process.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The number of JSON log lines with `message` so far.
    pub fn said(&self, message: &str) -> usize {
        let quoted = format!("\"{message}\"");
        self.out
            .text()
            .lines()
            .filter(|l| l.contains(&quoted))
            .count()
    }
}
