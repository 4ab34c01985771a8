//! A program run as another user, as Kubernetes runs a container with `runAsUser`:
//! user and group `uid`, no supplementary groups, no capabilities (`setpriv`). Shared
//! by the tests and the benchmark (`benches/proxies`, by path).

use std::path::Path;
use std::process::Command;

/// `program` as user and group `uid` when given; as this process's user without.
pub fn as_user(uid: Option<u32>, program: &Path) -> Command {
    as_ids(uid.map(|uid| (uid, uid)), program)
}

/// `program` as user and group `(uid, gid)` when given (OpenShift: an arbitrary UID
/// and GID 0); as this process's user without.
pub fn as_ids(ids: Option<(u32, u32)>, program: &Path) -> Command {
    match ids {
        Some((uid, gid)) => {
            let mut command = Command::new("setpriv");
            command
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .args(["--clear-groups", "--inh-caps=-all", "--"])
                .arg(program);
            command
        }
        None => Command::new(program),
    }
}
