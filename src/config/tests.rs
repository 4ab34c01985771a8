//! Config tests: the example file is the defaults, fixtures parse, and every error
//! names its key and line.

use super::*;
use std::path::Path;

fn example_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn error_of(text: &str) -> (String, Option<usize>, String) {
    match parse(text) {
        Err(e @ ConfigError::Invalid { .. }) => (e.key().to_owned(), e.line(), e.to_string()),
        other => panic!("expected an invalid config, got {other:?}"),
    }
}

#[test]
fn example_file_is_exactly_the_defaults() {
    let config = load(&example_dir().join("config.example.toml")).unwrap();
    assert_eq!(config, Config::default());
}

#[test]
fn every_fixture_parses() {
    let dir = example_dir().join("tests/fixtures/config");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    for file in &files {
        if let Err(e) = load(file) {
            panic!("{e}");
        }
    }
    assert_eq!(files.len(), 3, "{files:?}");
}

#[test]
fn empty_file_is_the_defaults() {
    assert_eq!(parse("").unwrap(), Config::default());
    let config = Config::default();
    assert_eq!(config.epmd.listen.len(), 2);
    assert_eq!(config.dist.ports, [43691]);
}

#[test]
fn the_minimal_contract_parses() {
    let config = parse(
        r#"
[epmd]
listen = ["0.0.0.0:4369", "[::]:4369"]
[dist]
ports = [43691]
"#,
    )
    .unwrap();
    assert_eq!(config, Config::default());
}

#[test]
fn pool_ranges_expand_in_order() {
    let config = parse("[dist]\nports = [43700, \"43691-43693\"]\n").unwrap();
    assert_eq!(config.dist.ports, [43700, 43691, 43692, 43693]);
}

#[test]
fn pins_become_the_port_plan() {
    let config =
        parse("[dist]\nports = [\"43691-43692\"]\n[dist.pins]\ndb = 43692\n\"my-app\" = 43691\n")
            .unwrap();
    let plan = config.dist.port_plan();
    assert_eq!(plan.pool, [43691, 43692]);
    assert_eq!(plan.pins.get("db"), Some(&43692));
    assert_eq!(plan.pins.get("my-app"), Some(&43691));
}

#[test]
fn durations_are_human() {
    let config =
        parse("[epmd]\npacket_timeout = \"1m 30s\"\n[dist]\nconnect_timeout = \"250ms\"\n")
            .unwrap();
    assert_eq!(config.epmd.packet_timeout, Duration::from_secs(90));
    assert_eq!(config.dist.connect_timeout, Duration::from_millis(250));
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let (key, line, text) = error_of("[epmd]\nnames_from = \"any\"\nlisten_on = []\n");
    assert_eq!((key.as_str(), line), ("epmd.listen_on", Some(3)));
    assert!(text.contains("unknown field `listen_on`"), "{text}");
    let (key, line, _) = error_of("\n[telemetry]\nport = 1\n");
    assert_eq!((key.as_str(), line), ("telemetry", Some(2)));
}

#[test]
fn out_of_range_port_is_named() {
    let (key, line, text) = error_of("[dist]\n\nports = [43691, 70000]\n");
    assert_eq!((key.as_str(), line), ("dist.ports[1]", Some(3)));
    assert!(text.contains("70000 is out of range"), "{text}");
    let (key, _, _) = error_of("[dist]\nports = [0]\n");
    assert_eq!(key, "dist.ports[0]");
}

#[test]
fn bad_ranges_are_named() {
    for (text, needle) in [
        ("[dist]\nports = [\"43699-43691\"]\n", "runs backwards"),
        ("[dist]\nports = [\"4369x\"]\n", "not a port range"),
        ("[dist]\nports = [\"1-99999\"]\n", "out of range"),
        ("[dist]\nports = [43691, \"43690-43692\"]\n", "listed twice"),
        ("[dist]\nports = [\"1-2000\"]\n", "more than 1024"),
    ] {
        let (key, line, message) = error_of(text);
        assert!(key.starts_with("dist.ports"), "{text}: {key}");
        assert_eq!(line, Some(2), "{text}");
        assert!(message.contains(needle), "{text}: {message}");
    }
}

#[test]
fn wrong_types_are_named() {
    let (key, line, _) = error_of("[epmd]\nlisten = \"0.0.0.0:4369\"\n");
    assert_eq!((key.as_str(), line), ("epmd.listen", Some(2)));
    let (key, _, _) = error_of("[epmd]\nlisten = [\"localhost:4369\"]\n");
    assert_eq!(key, "epmd.listen[0]");
    let (key, _, _) = error_of("[epmd]\nnames_from = \"everyone\"\n");
    assert_eq!(key, "epmd.names_from");
    let (key, _, _) = error_of("[epmd]\npacket_timeout = \"soon\"\n");
    assert_eq!(key, "epmd.packet_timeout");
    let (key, _, _) = error_of("[dist]\nlisten = [\"0.0.0.0:43691\"]\n");
    assert_eq!(key, "dist.listen[0]");
}

#[test]
fn syntax_errors_give_the_line() {
    let (key, line, text) = error_of("[epmd]\nallow_kill = true\n[dist\n");
    assert_eq!((key.as_str(), line), ("", Some(3)));
    assert!(text.starts_with("config:3: "), "{text}");
}

#[test]
fn pins_must_be_in_the_pool_and_unique() {
    let (key, line, text) = error_of("[dist]\nports = [43691]\n[dist.pins]\napp = 43692\n");
    assert_eq!((key.as_str(), line), ("dist.pins.app", Some(4)));
    assert!(text.contains("not in `dist.ports`"), "{text}");
    let (key, _, text) = error_of("[dist]\nports = [43691]\n[dist.pins]\na = 43691\nb = 43691\n");
    assert_eq!(key, "dist.pins.b");
    assert!(text.contains("already pinned to `a`"), "{text}");
    let (key, _, _) = error_of("[dist.pins]\n\"a@host\" = 43691\n");
    assert_eq!(key, "dist.pins.a@host");
}

#[test]
fn client_names_are_name_part_globs_and_never_pinned() {
    let config = parse("[dist]\nclient_names = [\"maint*\", \"remsh?-*\"]\n").unwrap();
    assert!(config.dist.port_plan().is_client("remsh1-app"));
    assert!(!config.dist.port_plan().is_client("rpc-1-app"));
    assert!(parse("[dist]\nclient_names = []\n").is_ok());
    for (value, needle) in [
        ("[\"\"]", "not a glob"),
        ("[\"rpc-*@host\"]", "no `@host`"),
        ("[\"*\"]", "every node a client"),
    ] {
        let (key, line, text) = error_of(&format!("[dist]\nclient_names = {value}\n"));
        assert_eq!(
            (key.as_str(), line),
            ("dist.client_names", Some(2)),
            "{text}"
        );
        assert!(text.contains(needle), "{text}");
    }
    let (key, line, text) = error_of("[dist]\nports = [43691]\n[dist.pins]\nrpc-db = 43691\n");
    assert_eq!((key.as_str(), line), ("dist.pins.rpc-db", Some(4)));
    assert!(text.contains("release client"), "{text}");
}

#[test]
fn semantic_checks_name_their_key() {
    for (text, expected) in [
        ("[epmd]\nlisten = []\n", "epmd.listen"),
        ("[dist]\nlisten = []\n", "dist.listen"),
        ("[epmd]\npacket_timeout = \"0s\"\n", "epmd.packet_timeout"),
        ("[dist]\nconnect_timeout = \"0s\"\n", "dist.connect_timeout"),
        ("[dist]\nports = [4369]\n", "dist.ports"),
    ] {
        assert_eq!(error_of(text).0, expected, "{text}");
    }
}

#[test]
fn file_errors_name_the_file() {
    let dir = std::env::temp_dir().join(format!("distgate-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[dist]\nports = [\"x\"]\n").unwrap();
    let text = load(&file).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        text.starts_with(&format!("{}:2: `dist.ports[0]`: ", file.display())),
        "{text}"
    );
    let missing = load(&dir.join("missing.toml")).unwrap_err();
    assert!(matches!(missing, ConfigError::Read { .. }));
}

#[test]
fn names_from_takes_words_and_cidrs() {
    let from =
        |text: &str| parse(&format!("[epmd]\nnames_from = {text}\n")).map(|c| c.epmd.names_from);
    assert_eq!(from("\"local\"").unwrap(), Peers::LOCAL);
    assert_eq!(from("\"any\"").unwrap(), Peers::Any);
    let mixed = from("[\"local\", \"10.42.0.0/16\", \"fd00::/8\", \"192.0.2.7\"]").unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(mixed.allows(ip("127.0.0.1"), true));
    assert!(mixed.allows(ip("10.42.3.4"), false));
    assert!(mixed.allows(ip("::ffff:10.42.3.4"), false));
    assert!(mixed.allows(ip("fd12::1"), false));
    assert!(mixed.allows(ip("192.0.2.7"), false));
    assert!(!mixed.allows(ip("10.43.0.1"), false));
    let only_net = from("[\"10.42.0.0/16\"]").unwrap();
    assert!(!only_net.allows(ip("127.0.0.1"), true), "local not listed");
    for bad in [
        "[]",
        "[\"any\", \"local\"]",
        "[\"10.0.0.0/33\"]",
        "\"everyone\"",
    ] {
        let e = from(bad).unwrap_err();
        assert_eq!(e.key(), "epmd.names_from", "{bad}");
    }
}

#[test]
fn register_from_takes_local_and_addresses_but_never_any() {
    let from = |text: &str| {
        parse(&format!("[epmd]\nregister_from = {text}\n")).map(|c| c.epmd.register_from)
    };
    assert_eq!(parse("").unwrap().epmd.register_from, Peers::LOCAL);
    let only = from("[\"127.0.0.1\"]").unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(only.allows(ip("127.0.0.1"), true));
    assert!(
        !only.allows(ip("127.0.0.6"), true),
        "a mesh's loopback address"
    );
    let e = from("\"any\"").unwrap_err();
    assert_eq!(e.key(), "epmd.register_from");
    assert!(e.to_string().contains("every host"), "{e}");
}

#[test]
fn routes_parse_and_their_errors_name_the_key() {
    let config = parse(
        "[[route]]\nnodes = \"app-*\"\nupstream = \"{name}.svc\"\n\n[[route]]\nnodes = \"db\"\nupstream = \"db.other\"\nport = 43691\nepmd_port = 14369\n\n[[route]]\nnodes = \"*\"\ndiscover = \"_tcp-epmd._tcp.app\"\nrecords = \"srv\"\n\n[[route]]\nnodes = \"w*\"\ndiscover = \"web\"\n",
    )
    .unwrap();
    use crate::route::{Records, Upstream, UpstreamPort};
    assert_eq!(config.routes.len(), 4);
    assert_eq!(config.routes[0].port, UpstreamPort::Epmd);
    assert_eq!(config.routes[0].epmd_port, 4369);
    assert_eq!(config.routes[1].port, UpstreamPort::Fixed(43691));
    assert_eq!(config.routes[1].epmd_port, 14369);
    assert_eq!(
        config.routes[2].upstream,
        Upstream::Discover {
            service: "_tcp-epmd._tcp.app".into(),
            records: Records::Srv
        }
    );
    assert_eq!(
        config.routes[3].upstream,
        Upstream::Discover {
            service: "web".into(),
            records: Records::A
        }
    );
    for (text, key, line) in [
        (
            "[[route]]\nnodes = \"a@b\"\nupstream = \"x\"\n",
            "route[0].nodes",
            2,
        ),
        (
            "[[route]]\nnodes = \"a\"\nupstream = \"{host}.x\"\n",
            "route[0].upstream",
            3,
        ),
        (
            "[[route]]\nnodes = \"a\"\nupstream = \"x\"\nport = \"dns\"\n",
            "route[0].port",
            4,
        ),
        (
            "[[route]]\nnodes = \"a\"\nupstream = \"x\"\nwhere = 1\n",
            "route[0].where",
            4,
        ),
        ("[[route]]\nupstream = \"x\"\n", "route[0]", 1),
        (
            "[[route]]\nnodes = \"a\"\ndiscover = \"x\"\nrecords = \"mx\"\n",
            "route[0].records",
            4,
        ),
    ] {
        let (k, l, message) = error_of(text);
        assert_eq!((k.as_str(), l), (key, Some(line)), "{text}: {message}");
    }
}

#[test]
fn a_route_needs_one_upstream_or_discover() {
    for (text, says) in [
        ("[[route]]\nnodes = \"a\"\n", "missing `upstream`"),
        (
            "[[route]]\nnodes = \"a\"\nupstream = \"x\"\ndiscover = \"y\"\n",
            "give one of",
        ),
        (
            "[[route]]\nnodes = \"a\"\nupstream = \"x\"\nidentity = \"gw\"\n",
            "`identity` belongs to `federate`",
        ),
        (
            "[[route]]\nnodes = \"a\"\nfederate = \"gw\"\n",
            "not host:port",
        ),
        (
            "[[route]]\nnodes = \"a\"\nfederate = \"gw:1\"\nepmd_port = 4369\n",
            "a `federate` route takes neither",
        ),
        (
            "[[route]]\nnodes = \"a\"\nupstream = \"x\"\nrecords = \"srv\"\n",
            "`records` belongs to `discover`",
        ),
    ] {
        let (key, _, message) = error_of(text);
        assert_eq!(key, "route[0]", "{text}");
        assert!(message.contains(says), "{text}: {message}");
    }
}

#[test]
fn federation_needs_its_material_and_peers() {
    let (key, _, message) = error_of("[federation]\nlisten = [\"127.0.0.1:43690\"]\n");
    assert_eq!(key, "federation.cert");
    assert!(message.contains("`federation.listen` is set"), "{message}");
    let (key, _, message) = error_of(
        "[[route]]\nnodes = \"b-*\"\nfederate = \"gw:43690\"\n[federation]\ncert = \"c\"\n",
    );
    assert_eq!(key, "federation.key");
    assert!(message.contains("a route has `federate`"), "{message}");
    let files = "cert = \"c\"\nkey = \"k\"\nca = \"a\"\n";
    let (key, _, _) = error_of(&format!(
        "[federation]\nlisten = [\"127.0.0.1:1\"]\n{files}"
    ));
    assert_eq!(key, "federation.peers");
    let (key, _, _) = error_of(&format!("[federation]\n{files}watch_every = \"0s\"\n"));
    assert_eq!(key, "federation.watch_every");
    let config = parse(&format!(
        "[federation]\nlisten = [\"127.0.0.1:1\"]\npeers = [\"spiffe://a/*\"]\n{files}"
    ))
    .unwrap();
    assert!(config.federation.wanted(&config.routes));
    assert!(!distgate_defaults().federation.wanted(&[]));
}

fn distgate_defaults() -> Config {
    parse("").unwrap()
}

#[test]
fn dns_settings_are_checked() {
    let config = parse("[dns]\nnameservers = [\"127.0.0.1:5353\"]\nmin_ttl = \"0s\"\n").unwrap();
    assert_eq!(config.dns.nameservers.len(), 1);
    assert_eq!(
        error_of("[dns]\nmin_ttl = \"10m\"\nmax_ttl = \"1m\"\n").0,
        "dns.min_ttl"
    );
    assert_eq!(error_of("[dns]\ntimeout = \"0s\"\n").0, "dns.timeout");
    assert_eq!(
        error_of("[dns]\nnameservers = [\"dns.local\"]\n").0,
        "dns.nameservers[0]"
    );
}

#[test]
fn admission_keys_parse_and_their_errors_name_them() {
    let config = parse(
        "[dist]\nallow_peers = [\"app@*\"]\ntrusted = [\"local\", \"10.42.7.0/24\"]\n\
         [dist.ban]\nfailures = 0\n[metrics]\nmax_peers = 8\n",
    )
    .unwrap();
    assert!(config.dist.allow_peers.allows("app@10.0.0.1"));
    assert!(!config.dist.allow_peers.allows("web@10.0.0.1"));
    assert_eq!(config.dist.ban.failures, 0);
    assert_eq!(config.metrics.max_peers, 8);
    let trusted: std::net::IpAddr = "10.42.7.9".parse().unwrap();
    assert!(config.dist.trusted.allows(trusted, false));
    let (key, line, _) = error_of("[dist]\n\nallow_peers = []\n");
    assert_eq!((key.as_str(), line), ("dist.allow_peers", Some(3)));
    let (key, _, _) = error_of("[dist]\nlinger = \"0s\"\n");
    assert_eq!(key, "dist.linger");
    let (key, _, _) = error_of("[dist]\nfirst_frame_timeout = \"20s\"\n");
    assert_eq!(key, "dist.first_frame_timeout");
    let (key, line, _) = error_of("[dist.ban]\nwithin = \"soon\"\n");
    assert_eq!((key.as_str(), line), ("dist.ban.within", Some(2)));
}

#[test]
fn changed_keys_are_named_and_the_restart_only_ones_known() {
    let old = parse("").unwrap();
    assert!(changed(&old, &old).is_empty());
    let new = parse(
        "[epmd]\nnames_from = \"any\"\n[dist]\nports = [43691, 43692]\n[log]\nlevel = \"debug\"\n\
         [admin]\nlisten = [\"127.0.0.1:9369\"]\n",
    )
    .unwrap();
    let keys = changed(&old, &new);
    assert_eq!(
        keys,
        [
            Key::EpmdNamesFrom,
            Key::DistPorts,
            Key::AdminListen,
            Key::LogLevel
        ]
    );
    let names: Vec<_> = keys.iter().map(|k| k.name()).collect();
    assert_eq!(
        names,
        ["epmd.names_from", "dist.ports", "admin.listen", "log.level"]
    );
    let restart: Vec<_> = keys.iter().filter(|k| k.restart_only()).collect();
    assert_eq!(restart, [&Key::AdminListen]);
}

#[test]
fn a_log_level_that_is_no_filter_names_its_key() {
    let e = parse("[log]\nlevel = \"info,distgate=loud\"\n").unwrap_err();
    assert_eq!(e.key(), "log.level");
    assert_eq!(e.line(), Some(2));
}

#[test]
fn the_hash_is_the_start_of_the_sha256() {
    // sha256("") = e3b0c44298fc1c149afbf4c8996fb924...
    assert_eq!(hash(b""), "e3b0c44298fc1c14");
}

#[test]
fn what_cannot_run_is_caught_with_its_key_and_line() {
    // An empty pool: no node could be reached through a Service.
    let (key, line, message) = error_of("[dist]\nlisten = [\"0.0.0.0\"]\nports = []\n");
    assert_eq!((key.as_str(), line), ("dist.ports", Some(3)), "{message}");
    assert!(message.contains("is empty"), "{message}");
    // Any two listeners on one port of overlapping addresses, each named by its key.
    for (text, key, needle) in [
        (
            "[epmd]\nlisten = [\"0.0.0.0:4369\", \"127.0.0.1:4369\"]\n",
            "epmd.listen[1]",
            "`epmd.listen` 127.0.0.1:4369 clashes with `epmd.listen` 0.0.0.0:4369",
        ),
        (
            "[dist]\nlisten = [\"0.0.0.0\", \"10.0.0.1\"]\n",
            "dist.listen",
            "public port 43691 on `dist.listen` 10.0.0.1 clashes with",
        ),
        (
            "[epmd]\nlisten = [\"127.0.0.1:43691\"]\n",
            "dist.ports",
            "clashes with `epmd.listen` 127.0.0.1:43691",
        ),
        (
            "[admin]\nlisten = [\"[::]:9369\", \"[::1]:9369\"]\n",
            "admin.listen[1]",
            "both would listen on port 9369",
        ),
    ] {
        let (found, _, message) = error_of(text);
        assert_eq!(found, key, "{text}: {message}");
        assert!(message.contains(needle), "{text}: {message}");
    }
    // Different addresses of one family, or different families, do not clash.
    parse("[epmd]\nlisten = [\"127.0.0.1:4369\", \"127.0.0.2:4369\", \"[::]:4369\"]\n").unwrap();
    parse("[epmd]\nlisten = [\"127.0.0.1:43691\"]\n[dist]\nlisten = [\"10.0.0.1\"]\n").unwrap();
    // The admin port on a public port, or on the EPMD port of an overlapping address.
    let text = "[dist]\nports = [9369]\n[admin]\nlisten = [\"127.0.0.1:9369\"]\n";
    let (key, line, message) = error_of(text);
    assert_eq!(
        (key.as_str(), line),
        ("admin.listen[0]", Some(4)),
        "{message}"
    );
    let text = "[epmd]\nlisten = [\"0.0.0.0:4369\"]\n[admin]\nlisten = [\"127.0.0.1:4369\"]\n";
    let (key, _, message) = error_of(text);
    assert_eq!(key, "admin.listen[0]");
    assert!(
        message.contains("clashes with `epmd.listen` 0.0.0.0:4369"),
        "{message}"
    );
    // Port 0 (the system picks) never clashes; different families never do either
    // (IPv6 listeners are IPv6-only).
    parse("[epmd]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = [\"127.0.0.1:0\"]\n").unwrap();
    parse("[epmd]\nlisten = [\"0.0.0.0:4369\"]\n[admin]\nlisten = [\"[::1]:4369\"]\n").unwrap();
    // Rules between keys still say where.
    let (key, line, _) = error_of("[dns]\nmin_ttl = \"10m\"\nmax_ttl = \"1m\"\n");
    assert_eq!((key.as_str(), line), ("dns.min_ttl", Some(2)));
    let (key, line, _) = error_of("[forward]\nmode = \"auto\"\npipe_size = 10\n");
    assert_eq!((key.as_str(), line), ("forward.pipe_size", Some(3)));
    let (key, line, _) = error_of("[dist.ban]\nwithin = \"0s\"\n");
    assert_eq!((key.as_str(), line), ("dist.ban.within", Some(2)));
    // An address without a port says so.
    let (key, _, message) = error_of("[epmd]\nlisten = [\"0.0.0.0\"]\n");
    assert!(key.starts_with("epmd.listen"), "{key}");
    assert!(message.contains("an address and a port"), "{message}");
}

#[test]
fn every_toml_snippet_in_the_docs_is_a_valid_configuration() {
    let root = example_dir();
    let mut files = vec![root.join("README.md"), root.join("SECURITY.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut snippets = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let mut rest = text.as_str();
        while let Some(start) = rest.find("```toml\n") {
            let body = &rest[start + 8..];
            let end = body.find("```").expect("an unclosed ```toml block");
            let line = text[..text.len() - rest.len() + start].lines().count() + 1;
            if let Err(e) = parse(&body[..end]) {
                panic!("{}:{line}: {e}", file.display());
            }
            snippets += 1;
            rest = &body[end..];
        }
    }
    assert!(snippets >= 7, "only {snippets} snippets found");
}

#[test]
fn the_ipv6_prefix_is_a_prefix_length() {
    assert_eq!(Config::default().dist.ipv6_prefix, 64);
    assert_eq!(
        parse("[dist]\nipv6_prefix = 56\n")
            .unwrap()
            .dist
            .ipv6_prefix,
        56
    );
    for bad in ["0", "129", "300", "-1"] {
        let (key, _, message) = error_of(&format!("[dist]\nipv6_prefix = {bad}\n"));
        assert_eq!(key, "dist.ipv6_prefix", "{bad}: {message}");
    }
}

/// Of several unknown keys, the first in the file is named (not the first in
/// alphabetical order), with its line.
#[test]
fn the_first_unknown_key_in_the_file_is_named() {
    let (key, line, _) = error_of("[epmd]\nzeta = 1\nalpha = 2\n");
    assert_eq!((key.as_str(), line), ("epmd.zeta", Some(2)));
    let (key, line, _) = error_of("[zulu]\nx = 1\n[alpha]\ny = 2\n");
    assert_eq!((key.as_str(), line), ("zulu", Some(1)));
}
