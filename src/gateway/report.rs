//! What `distgate check-config` says of a gateway's pool: how many routed names it
//! holds, and how likely their home ports collide (a collision moves a name to the
//! next free port, and replicas that know different names may then disagree).

use crate::config::Config;
use crate::route::{LeaseRule, Upstream};

/// One line per route, empty without routes.
pub fn pool_report(config: &Config) -> Vec<String> {
    let pins = config.dist.pins.len();
    let size = config.dist.ports.len();
    let free = size.saturating_sub(pins);
    let mut lines = vec![];
    for route in &config.routes {
        let kind = match &route.upstream {
            Upstream::Host(_) => "upstream",
            Upstream::Discover { .. } => "discover",
            Upstream::Federate(_) => "federate",
        };
        let holds = format!(
            "route `{}` ({kind}, lease = \"{}\"): `dist.ports` holds at most {free} routed name{} at once",
            route.nodes,
            rule(route.lease),
            if free == 1 { "" } else { "s" },
        );
        let homes = match route.lease {
            LeaseRule::Ordinal => format!(
                "; names ending -0 to -{} have a port of their own, other names take hash homes among them",
                size.saturating_sub(1)
            ),
            LeaseRule::Hash => match (even_odds(size, 0.1), even_odds(size, 0.5)) {
                (Some(ten), Some(half)) => format!(
                    "; two names want the same home port with a chance of 10 % or more from {ten} names on, 50 % from {half} (a collision: docs/gateway.md#which-port-a-name-gets)"
                ),
                _ => String::new(),
            },
        };
        let short = if free == 0 {
            "; every port is pinned: no routed name can be leased"
        } else {
            ""
        };
        lines.push(format!("{holds}{homes}{short}"));
    }
    if config.routes.len() > 1 {
        lines.push(format!(
            "{} routes lease from one pool: their names share its {free} ports",
            config.routes.len()
        ));
    }
    lines
}

fn rule(rule: LeaseRule) -> &'static str {
    match rule {
        LeaseRule::Hash => "hash",
        LeaseRule::Ordinal => "ordinal",
    }
}

/// The fewest names whose hash homes in a pool of `size` collide with a chance of at
/// least `chance` (the birthday bound), if any number up to `size` does.
fn even_odds(size: usize, chance: f64) -> Option<usize> {
    let mut apart = 1.0;
    for k in 1..=size {
        apart *= (size - (k - 1)) as f64 / size as f64;
        if 1.0 - apart >= chance {
            return Some(k);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::config::parse(text).unwrap()
    }

    #[test]
    fn the_birthday_bound_is_the_known_one() {
        // 23 people share a birthday with a chance of just over half.
        assert_eq!(even_odds(365, 0.5), Some(23));
        assert_eq!(even_odds(1, 0.5), None);
        assert_eq!(even_odds(2, 0.5), Some(2));
    }

    #[test]
    fn the_report_tells_what_the_pool_holds() {
        let hash = config(
            "[dist]\nports = [\"43691-43699\"]\n[[route]]\nnodes = \"app-*\"\nupstream = \"{name}.svc\"\n",
        );
        let lines = pool_report(&hash);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].contains("holds at most 9 routed names"),
            "{}",
            lines[0]
        );
        assert!(
            lines[0].contains("from 2 names on, 50 % from 4"),
            "{}",
            lines[0]
        );
        let ordinal = config(
            "[dist]\nports = [\"43691-43699\"]\npins = { db = 43699 }\n[[route]]\nnodes = \"app-*\"\nupstream = \"{name}.svc\"\nlease = \"ordinal\"\n[[route]]\nnodes = \"web-*\"\ndiscover = \"web.svc\"\n",
        );
        let lines = pool_report(&ordinal);
        assert!(
            lines[0].contains("-0 to -8 have a port of their own"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("at most 8 routed names"), "{}", lines[0]);
        assert!(
            lines[2].contains("2 routes lease from one pool"),
            "{}",
            lines[2]
        );
        assert!(pool_report(&config("")).is_empty());
    }
}
