//! Which paths a run measures: all of them, or those `--paths a,b,c` names (direct
//! always, as the baseline of every ratio); and `distgate-baseline`, the release
//! binary of another commit named by `DISTGATE_BENCH_BASELINE`, started as
//! `distgate-auto` is, so a change is measured before and after in one run.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The environment variable naming the other commit's distgate binary.
pub const BASELINE_VAR: &str = "DISTGATE_BENCH_BASELINE";

/// The path of the other commit's distgate in the report.
pub const BASELINE: &str = "distgate-baseline";

/// Every path name a report can hold, in the order its tables list them.
pub const NAMES: [&str; 20] = [
    "direct",
    "distgate-auto",
    BASELINE,
    "distgate-splice",
    "distgate-copy",
    "haproxy",
    "haproxy-splice",
    "nginx",
    "socat",
    "relay",
    "gateway+sidecar",
    "federated",
    "haproxy-tls",
    "distgate-root",
    "distgate-uid",
    "distgate-uid-held",
    "haproxy-uid",
    "haproxy-uid-held",
    "distgate-x8-root",
    "distgate-x8-uid",
];

/// The paths of one run.
#[derive(Debug)]
pub struct Paths {
    /// The names `--paths` gave; `None` for every path.
    only: Option<Vec<&'static str>>,
    /// The other commit's distgate binary, when `DISTGATE_BENCH_BASELINE` names one.
    pub baseline: Option<PathBuf>,
}

impl Paths {
    /// From the command line and the environment; the message says what is wrong.
    pub fn from_args(args: &[String]) -> Result<Paths, String> {
        let baseline = match std::env::var_os(BASELINE_VAR) {
            Some(value) if !value.is_empty() => Some(executable(Path::new(&value))?),
            _ => None,
        };
        let mut list = None;
        for (i, arg) in args.iter().enumerate() {
            if let Some(value) = arg.strip_prefix("--paths=") {
                list = Some(value.to_owned());
            } else if arg == "--paths" {
                // cargo puts its own `--bench` after ours.
                let value = args.get(i + 1).filter(|v| !v.starts_with("--"));
                list = Some(
                    value
                        .ok_or("--paths needs a list: --paths direct,distgate-auto,...")?
                        .clone(),
                );
            }
        }
        let only = match list {
            None => None,
            Some(list) => {
                let mut only = vec![];
                for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    // `haproxy` is haproxy without splice (it once stood for
                    // haproxy-splice, which is now named as itself).
                    let Some(&known) = NAMES.iter().find(|&&n| n == name) else {
                        return Err(format!(
                            "--paths: no path {name:?}; the paths are {} (haproxy is haproxy \
                             without splice, haproxy-splice with it)",
                            NAMES.join(", ")
                        ));
                    };
                    if known == BASELINE && baseline.is_none() {
                        return Err(format!(
                            "--paths: {BASELINE} needs {BASELINE_VAR} set to a distgate \
                             binary built from another commit"
                        ));
                    }
                    only.push(known);
                }
                if only.is_empty() {
                    return Err("--paths needs a list: --paths direct,distgate-auto,...".into());
                }
                Some(only)
            }
        };
        Ok(Paths { only, baseline })
    }

    /// Whether this run measures the path `name`.
    pub fn wants(&self, name: &str) -> bool {
        if name == BASELINE && self.baseline.is_none() {
            return false;
        }
        name == "direct" || self.only.as_ref().is_none_or(|only| only.contains(&name))
    }

    /// The `--paths` argument of this run, if it had one.
    pub fn flag(&self) -> Option<String> {
        self.only
            .as_ref()
            .map(|only| format!("--paths {}", only.join(",")))
    }

    /// The other commit's binary; only for a run that wants [`BASELINE`].
    pub fn baseline(&self) -> &Path {
        self.baseline
            .as_deref()
            .expect("distgate-baseline measured without DISTGATE_BENCH_BASELINE")
    }
}

/// `path` as an absolute path to a distgate binary that runs, or why not.
fn executable(path: &Path) -> Result<PathBuf, String> {
    let fail = |why: String| format!("{BASELINE_VAR}={}: {why}", path.display());
    let absolute = path.canonicalize().map_err(|e| {
        if path.is_relative() {
            fail(format!(
                "{e} (relative to {}, where cargo runs the bench)",
                cwd()
            ))
        } else {
            fail(e.to_string())
        }
    })?;
    let meta = std::fs::metadata(&absolute).map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a file".into()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(fail("not executable".into()));
    }
    let out = Command::new(&absolute)
        .arg("--version")
        .output()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let version = stdout.lines().next().unwrap_or("").trim();
    if !out.status.success() || !version.starts_with("distgate ") {
        return Err(fail(format!(
            "not a distgate binary: `--version` gave {version:?} ({})",
            out.status
        )));
    }
    Ok(absolute)
}

/// The directory relative paths are read from (cargo runs benches in the package's).
fn cwd() -> String {
    std::env::current_dir().map_or_else(|_| "?".into(), |d| d.display().to_string())
}
