//! Test hosts: one network namespace per node, joined by a bridge in a hub namespace, each with
//! its own IPv6 address. Everything is removed on drop, also when a test fails.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::harness::run_ok;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A set of hosts on one IPv6 link.
pub struct Hosts {
    prefix: String,
    count: usize,
}

impl Hosts {
    /// `addresses.len()` hosts, host `i` (from 0) holding `addresses[i]`/64.
    pub fn new(addresses: &[&str]) -> Hosts {
        let prefix = format!(
            "kpki{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let hosts = Hosts {
            prefix,
            count: addresses.len(),
        };
        let hub = hosts.hub();
        run_ok("ip", &["netns", "add", &hub]);
        run_ok("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        run_ok("ip", &["-n", &hub, "link", "set", "br0", "up"]);
        for (i, address) in addresses.iter().enumerate() {
            let ns = hosts.ns(i);
            let port = format!("h{i}");
            run_ok("ip", &["netns", "add", &ns]);
            run_ok(
                "ip",
                &[
                    "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            );
            run_ok(
                "ip",
                &["-n", &hub, "link", "set", &port, "master", "br0", "up"],
            );
            run_ok("ip", &["-n", &ns, "link", "set", "lo", "up"]);
            run_ok("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
            run_ok(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{address}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            );
        }
        hosts
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    /// The namespace of host `i`.
    pub fn ns(&self, i: usize) -> String {
        format!("{}-n{i}", self.prefix)
    }

    /// A command that runs the program at `path` on host `i`.
    pub fn command_at(&self, i: usize, path: &std::path::Path) -> Command {
        let mut cmd = Command::new(crate::harness::require("ip"));
        cmd.args(["netns", "exec", &self.ns(i)]).arg(path);
        cmd
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in (0..self.count).map(|i| self.ns(i)).chain([self.hub()]) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}
