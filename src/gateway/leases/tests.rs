use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::epmd::NodeInfo;
use crate::ports::{Holder, PortPlan};
use crate::route::LeaseRule;

const IDLE: Duration = Duration::from_secs(60);

fn lease(name: &str) -> Routed {
    Routed {
        name: name.into(),
        host: format!("{name}.svc"),
        dist_port: 43691,
        info: NodeInfo::OTP23,
    }
}

fn pool(ports: std::ops::Range<u16>) -> Arc<Ports> {
    Arc::new(Ports::new(PortPlan {
        pool: ports.collect(),
        pins: Default::default(),
        clients: Default::default(),
    }))
}

fn leases(ports: &Arc<Ports>) -> Leases {
    Leases::new(Arc::clone(ports), vec!["app-*".into()])
}

/// Terms with the home `index` (a hash home).
fn at(index: usize) -> Terms {
    Terms {
        route: 0,
        home: Home {
            hashed: true,
            index,
        },
        idle: IDLE,
    }
}

/// Terms by `rule`, as the gateway gives them.
fn by(rule: LeaseRule, name: &str, pool: usize) -> Terms {
    Terms {
        route: 0,
        home: rule.home(name, pool),
        idle: IDLE,
    }
}

fn take(leases: &Leases, name: &str, terms: Terms, now: Instant) -> Option<u16> {
    leases
        .take(lease(name), terms, now)
        .ok()
        .map(|l| l.public_port)
}

fn map(leases: &Leases) -> BTreeMap<String, u16> {
    (leases.all().into_iter())
        .map(|l| (l.routed.name, l.public_port))
        .collect()
}

#[test]
fn a_name_takes_its_home_and_keeps_it_while_leased() {
    let ports = pool(100..103);
    assert_eq!(
        ports.claim("local", Holder::Local("local".into())),
        Some(100)
    );
    let leases = leases(&ports);
    let now = Instant::now();
    assert_eq!(take(&leases, "app-0", at(1), now), Some(101));
    // Home taken by app-0: the next free port, wrapping past the local node's.
    assert_eq!(take(&leases, "app-1", at(1), now), Some(102));
    assert_eq!(take(&leases, "app-0", at(1), now), Some(101), "not sticky");
    assert_eq!(ports.holder(102), Some(Holder::Routed("app-1".into())));
    assert!(leases.give_back("app-1"));
    assert!(!leases.give_back("app-1"));
    assert_eq!(ports.holder(102), None);
    let names: Vec<_> = leases.all().into_iter().map(|l| l.routed.name).collect();
    assert_eq!(names, ["app-0"]);
}

#[test]
fn a_newcomer_moves_a_name_only_when_it_wants_the_same_port_and_sorts_first() {
    let ports = pool(100..110);
    let leases = leases(&ports);
    let now = Instant::now();
    take(&leases, "b", at(3), now);
    take(&leases, "x", at(7), now);
    // A home of its own: nobody moves.
    take(&leases, "c", at(5), now);
    assert_eq!(
        map(&leases),
        [("b", 103), ("c", 105), ("x", 107)].map(own).into()
    );
    // "a" wants b's port and comes first: b moves on to the next free port.
    take(&leases, "a", at(3), now);
    let placed = [("a", 103), ("b", 104), ("c", 105), ("x", 107)];
    assert_eq!(map(&leases), placed.map(own).into());
    // "a" leaves: b is back home.
    leases.give_back("a");
    assert_eq!(
        map(&leases),
        [("b", 103), ("c", 105), ("x", 107)].map(own).into()
    );
}

fn own((name, port): (&str, u16)) -> (String, u16) {
    (name.to_owned(), port)
}

#[test]
fn ordinal_names_go_to_their_ordinal_before_hash_homes() {
    let ports = pool(100..104);
    let leases = leases(&ports);
    let now = Instant::now();
    let pool = 4;
    // app-9 has no ordinal port in a pool of 4: its hash home, which is app-N's for
    // some N; the ordinal name is placed first whenever both are leased.
    let fallback = LeaseRule::Ordinal.home("app-9", pool).index;
    let owner = format!("app-{fallback}");
    take(&leases, "app-9", by(LeaseRule::Ordinal, "app-9", pool), now);
    take(&leases, &owner, by(LeaseRule::Ordinal, &owner, pool), now);
    let placed = map(&leases);
    assert_eq!(placed[&owner], 100 + fallback as u16);
    assert_ne!(placed["app-9"], placed[&owner]);
}

#[test]
fn when_the_pool_is_short_the_least_recently_used_idle_lease_goes() {
    let ports = pool(100..102);
    let leases = leases(&ports);
    let start = Instant::now();
    take(&leases, "a", at(0), start);
    take(&leases, "b", at(1), start + Duration::from_secs(1));
    // Both used within lease_idle: the pool is exhausted for c.
    let soon = start + Duration::from_secs(30);
    assert_eq!(take(&leases, "c", at(0), soon), None);
    assert_eq!(map(&leases).len(), 2);
    // Later both are idle: a, used least recently, goes.
    let later = start + IDLE + Duration::from_secs(5);
    assert!(take(&leases, "c", at(0), later).is_some());
    let names: Vec<_> = map(&leases).into_keys().collect();
    assert_eq!(names, ["b", "c"]);
}

#[test]
fn a_lease_with_an_open_link_is_never_given_back() {
    let ports = pool(100..101);
    let leases = leases(&ports);
    let start = Instant::now();
    take(&leases, "linked", at(0), start);
    let link = leases.hold("linked").unwrap();
    let much_later = start + IDLE * 10;
    for name in ["x", "y", "z"] {
        assert_eq!(take(&leases, name, at(0), much_later), None, "{name}");
    }
    assert_eq!(map(&leases), [("linked", 100)].map(own).into());
    drop(link);
    // The link's end counts as a use: idle again only after lease_idle.
    let now = Instant::now();
    assert_eq!(take(&leases, "x", at(0), now), None);
    assert_eq!(take(&leases, "x", at(0), now + IDLE), Some(100));
}

#[test]
fn a_route_refresh_keeps_the_names_found_before_and_after() {
    let ports = pool(100..110);
    let leases = leases(&ports);
    let now = Instant::now();
    let found = |names: &[(&str, usize)]| -> Vec<(Routed, Terms)> {
        names.iter().map(|&(n, h)| (lease(n), at(h))).collect()
    };
    leases.replace_route(0, found(&[("a", 1), ("b", 2)]), now);
    assert_eq!(map(&leases), [("a", 101), ("b", 102)].map(own).into());
    leases.replace_route(0, found(&[("b", 2), ("c", 1)]), now);
    assert_eq!(map(&leases), [("b", 102), ("c", 101)].map(own).into());
}

proptest! {
    /// The ports are a function of the names leased: any order of arrival gives the
    /// same ones (what lets replicas agree), whatever the homes collide on.
    #[test]
    fn the_ports_depend_on_the_names_not_their_order(
        names in proptest::collection::btree_set("[a-c][a-c0-9-]{0,4}", 1..12),
        seed in any::<u64>(),
        rule in prop_oneof![Just(LeaseRule::Hash), Just(LeaseRule::Ordinal)],
    ) {
        let size = 12;
        let names: Vec<String> = names.into_iter().collect();
        let mut shuffled = names.clone();
        // A Fisher-Yates shuffle driven by the seed.
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let now = Instant::now();
        let place = |order: &[String]| {
            let ports = pool(100..100 + size as u16);
            let leases = leases(&ports);
            for name in order {
                prop_assert!(take(&leases, name, by(rule, name, size), now).is_some());
            }
            Ok(map(&leases))
        };
        let first = place(&names)?;
        prop_assert_eq!(&first, &place(&shuffled)?);
        let distinct: std::collections::BTreeSet<u16> = first.values().copied().collect();
        prop_assert_eq!(distinct.len(), names.len());
    }
}

#[test]
fn a_reloaded_gateway_takes_over_leases_with_their_links_and_the_old_one_takes_no_more() {
    let ports = pool(100..104);
    let old = leases(&ports);
    let now = Instant::now();
    assert_eq!(take(&old, "app-1", at(1), now), Some(101));
    assert_eq!(take(&old, "gone-1", at(2), now), Some(102));
    let link = old.hold("app-1").expect("app-1 leased");

    // The pool loses 101: app-1 is placed again, gone-1 is no longer routed.
    let lost = ports.replan(PortPlan {
        pool: vec![100, 102, 103],
        pins: Default::default(),
        clients: Default::default(),
    });
    assert!(
        lost.is_empty(),
        "routed names are not local nodes: {lost:?}"
    );
    let new = leases(&ports);
    new.adopt(&old, |lease| {
        (lease.name.starts_with("app-")).then(|| (lease.clone(), at(1)))
    });
    let views = new.views();
    assert_eq!(views.len(), 1, "{views:?}");
    assert_eq!((views[0].name.as_str(), views[0].links), ("app-1", 1));
    assert_eq!(views[0].public_port, 102, "home 1 of [100, 102, 103]");
    assert_eq!(ports.holder(102), Some(Holder::Routed("app-1".into())));
    assert_eq!(ports.holder(101), None);

    // A lookup still under way on the old gateway leases nothing.
    assert_eq!(take(&old, "app-2", at(0), now), None);
    assert_eq!(ports.holder(100), None);
    drop(link);
    assert_eq!(
        new.views()[0].links,
        0,
        "the link counted where the lease went"
    );
}
