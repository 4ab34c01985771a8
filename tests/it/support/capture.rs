//! Packet captures for tests: `tcpdump` on an interface inside a namespace, writing a
//! pcap file the test reads back afterwards (its packets counted by a tcpdump filter,
//! its bytes searched for what must never cross in plaintext).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::DEADLINE;
use super::beam::Output;

/// A `tcpdump` writing every packet on one interface to a file.
pub struct Capture {
    out: Output,
    pub file: PathBuf,
}

impl Capture {
    /// Starts `tcpdump` on `dev` in namespace `ns`, whole packets, written to `file` as
    /// they come; returns once it is capturing.
    pub fn start(ns: &str, dev: &str, file: &Path) -> Capture {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns, "tcpdump", "-i", dev, "-n", "-s", "0"])
            // Each packet handed over as it comes (without it the packets of the last
            // buffer timeout, 1 s, are still in the kernel's ring when tcpdump is told
            // to stop, and are lost), into a ring of 128 MiB that holds a burst of
            // GSO-sized packets at veth speed while tcpdump writes them out.
            .args(["--immediate-mode", "-B", "131072"])
            // Debian's tcpdump drops to its own user before it opens the file.
            .args(["-Z", "root", "-w"])
            .arg(file);
        let mut out = Output::spawn(&format!("tcpdump on {dev} in {ns}"), &mut command);
        out.wait_line("tcpdump to listen", DEADLINE, |l| {
            l.contains("listening on")
        });
        Capture {
            out,
            file: file.to_owned(),
        }
    }

    /// Ends the capture (SIGINT, so it writes what it holds and reports) and returns
    /// what tcpdump said; fails if the kernel dropped packets it could not take (a
    /// capture with holes proves nothing absent).
    pub fn stop(mut self) -> String {
        let pid = nix::unistd::Pid::from_raw(self.out.process.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        assert!(self.out.wait_exit(DEADLINE).success());
        let said = self.out.text();
        assert!(
            said.lines()
                .any(|l| l.trim() == "0 packets dropped by kernel"),
            "the capture lost packets:\n{said}"
        );
        said
    }
}

/// How many packets of the capture `file` match tcpdump filter `filter` (all with "").
pub fn packets(file: &Path, filter: &str) -> usize {
    let mut command = Command::new("tcpdump");
    command.args(["-n", "-r"]).arg(file);
    if !filter.is_empty() {
        command.arg(filter);
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "tcpdump -r {file:?} {filter:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count()
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
