//! Every kustomization under deploy/kubernetes renders with `kubectl kustomize`, and
//! every rendered object validates offline against the Kubernetes schemas with the
//! PyPI package `kubernetes-validate` (installed by scripts/test). The native sidecar
//! needs Kubernetes 1.29; the legacy variant must validate against 1.27.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

fn validator() -> Option<PathBuf> {
    let installed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/venv/bin/kubernetes-validate");
    std::env::var_os("KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .or_else(|| installed.is_file().then_some(installed))
        .or_else(|| have("kubernetes-validate").then(|| PathBuf::from("kubernetes-validate")))
}

/// `kubernetes-validate --strict` of `file` against Kubernetes `version`: its report,
/// or the report of what failed.
pub(super) fn validated(validate: &Path, file: &Path, version: &str) -> Result<String, String> {
    let out = Command::new(validate)
        .args(["--strict", "--quiet", "-k", version])
        .arg(file)
        .output()
        .unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    match out.status.success() && !report.contains("ERROR") {
        true => Ok(report),
        false => Err(report),
    }
}

/// Every directory under deploy/kubernetes that renders on its own (components, which
/// only modify others, apart).
fn kustomizations() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let renders = |p: &PathBuf| {
        std::fs::read_to_string(p.join("kustomization.yaml"))
            .is_ok_and(|text| !text.lines().any(|l| l == "kind: Component"))
    };
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(renders)
        .collect();
    dirs.sort();
    dirs
}

fn render(dir: &Path) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The custom resources the manifests use, which `kubernetes-validate` has no schema
/// for: kind and API version.
const CRDS: [(&str, &str); 4] = [
    ("PodMonitor", "monitoring.coreos.com/v1"),
    ("PrometheusRule", "monitoring.coreos.com/v1"),
    ("Certificate", "cert-manager.io/v1"),
    ("Issuer", "cert-manager.io/v1"),
];

#[test]
fn every_manifest_renders_and_validates() {
    if !require(&["kubectl"]) {
        return;
    }
    let Some(validate) = validator() else {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI=true but kubernetes-validate is not installed"
        );
        eprintln!("skipped: kubernetes-validate not installed (scripts/test installs it)");
        return;
    };
    let dirs = kustomizations();
    let names: Vec<_> = dirs
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "base",
            "deployment",
            "federation",
            "federation-spiffe",
            "gateway",
            "monitoring",
            "network-policy",
            "openshift",
            "openshift-deployment",
            "sidecar-config",
            "sidecar-legacy",
            "statefulset"
        ]
    );
    let scratch = std::env::temp_dir().join(unique("distgate-manifests-"));
    std::fs::create_dir_all(&scratch).unwrap();
    for (dir, name) in dirs.iter().zip(&names) {
        let rendered = render(dir);
        let file = scratch.join(format!("{name}.yaml"));
        std::fs::write(&file, &rendered).unwrap();
        let version = if name == "sidecar-legacy" {
            "1.27.0"
        } else {
            "1.29.0"
        };
        let report = validated(&validate, &file, version)
            .unwrap_or_else(|report| panic!("{name}:\n{report}"));
        // Only the CRDs of the prometheus-operator and cert-manager lack a built-in
        // schema.
        for line in report.lines().filter(|l| l.contains("WARN")) {
            assert!(
                CRDS.iter()
                    .any(|(kind, api)| line
                        .contains(&format!("kind {kind} with api version {api} "))),
                "{name}: {line}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn services_declare_only_epmd_and_the_public_dist_port() {
    if !require(&["kubectl"]) {
        return;
    }
    for dir in ["base", "statefulset"] {
        let rendered = render(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy/kubernetes")
                .join(dir),
        );
        for doc in rendered
            .split("\n---\n")
            .filter(|d| d.contains("kind: Service\n"))
        {
            let ports: Vec<&str> = doc
                .lines()
                .filter(|l| l.trim_start().starts_with("port:"))
                .collect();
            assert_eq!(
                ports,
                ["    port: 4369", "    port: 43691"],
                "{dir}:\n{doc}"
            );
            for needle in ["name: tcp-epmd", "name: tcp-dist", "appProtocol: tcp"] {
                assert!(doc.contains(needle), "{dir}: no {needle}:\n{doc}");
            }
        }
        assert!(
            !rendered.contains("cluster.local"),
            "{dir} hard-codes the cluster domain"
        );
    }
    let headless =
        render(&Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/statefulset"));
    assert!(
        headless.contains("clusterIP: None") && headless.contains("publishNotReadyAddresses: true")
    );
}

/// The head of deploy/distgate.yaml, above the rendered StatefulSet setup.
const ONE_FILE_HEADER: &str = "# distgate in one file: `kubectl kustomize deploy/kubernetes/statefulset`, for\n\
# `kubectl apply -f distgate.yaml`. A StatefulSet `app` of three pods, each a BEAM node\n\
# with distgate as a native sidecar (Kubernetes 1.29+), its headless Service and the\n\
# NetworkPolicy. Set the `app` image to your release's (and the distgate image to yours)\n\
# and create the cookie first:\n\
#   kubectl create secret generic app-cookie --from-literal=cookie=\"$(openssl rand -hex 32)\"\n\
# docs/kubernetes.md explains each part. Generated: edit the kustomize bases, then run\n\
# tests/it/process/manifests.rs with DISTGATE_BLESS=1 to write this file again.\n";

#[test]
fn the_one_file_install_is_the_rendered_statefulset() {
    if !require(&["kubectl"]) {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let want = format!(
        "{ONE_FILE_HEADER}{}",
        render(&root.join("deploy/kubernetes/statefulset"))
    );
    let path = root.join("deploy/distgate.yaml");
    if std::env::var_os("DISTGATE_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "deploy/distgate.yaml differs from the rendered bases: run tests/it/process/manifests.rs with DISTGATE_BLESS=1"
    );
}

#[test]
fn the_dashboard_ships_as_a_configmap_for_the_grafana_sidecar() {
    if !require(&["kubectl"]) {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rendered = render(&root.join("deploy/kubernetes/monitoring"));
    let at = rendered.find("kind: ConfigMap").expect("a ConfigMap");
    let configmap = &rendered[..at];
    assert!(configmap.contains("distgate.json: |"), "{configmap}");
    let tail = &rendered[at..];
    assert!(tail.contains("grafana_dashboard: \"1\""), "{tail}");
    assert!(tail.contains("name: distgate-dashboard"), "{tail}");
    // The file people import by hand is the same dashboard.
    let by_hand = std::fs::read_to_string(root.join("deploy/grafana/distgate.json")).unwrap();
    let shipped =
        std::fs::read_to_string(root.join("deploy/kubernetes/monitoring/distgate-dashboard.json"))
            .unwrap();
    assert_eq!(by_hand, shipped);
}

#[test]
fn the_openshift_overlay_leaves_the_uid_to_the_platform() {
    if !require(&["kubectl"]) {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let openshift = render(&root.join("openshift"));
    for key in ["runAsUser", "runAsGroup", "fsGroup"] {
        assert!(
            !openshift.contains(key),
            "openshift sets {key}:\n{openshift}"
        );
    }
    // The same StatefulSet otherwise.
    let statefulset = render(&root.join("statefulset"));
    let without: String = statefulset
        .lines()
        .filter(|l| !l.contains("runAsUser: 65532") && !l.contains("runAsGroup: 65532"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(openshift, without);
}

/// Every workload has an OpenShift form: the component openshift-uid removes every
/// fixed UID, GID and fsGroup from whatever it is applied to (restricted-v2 refuses a
/// pod that asks for them), and the two shipped OpenShift overlays carry none.
#[test]
fn no_openshift_form_carries_a_fixed_uid() {
    if !require(&["kubectl"]) {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scratch = root.join("target").join(unique("openshift-"));
    std::fs::create_dir_all(&scratch).unwrap();
    let mut forms = vec![];
    for base in [
        "base",
        "gateway",
        "sidecar-legacy",
        "deployment",
        "statefulset",
    ] {
        // kustomize takes relative paths only: the scratch directory is two levels down.
        std::fs::write(
            scratch.join("kustomization.yaml"),
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
                 resources:\n  - ../../deploy/kubernetes/{base}\n\
                 components:\n  - ../../deploy/kubernetes/openshift-uid\n"
            ),
        )
        .unwrap();
        let plain = render(&root.join("deploy/kubernetes").join(base));
        assert!(
            plain.contains("runAsUser: 65532"),
            "{base} sets no UID to remove"
        );
        forms.push((format!("{base} + openshift-uid"), render(&scratch)));
    }
    let _ = std::fs::remove_dir_all(&scratch);
    for dir in ["openshift", "openshift-deployment"] {
        forms.push((
            dir.to_owned(),
            render(&root.join("deploy/kubernetes").join(dir)),
        ));
    }
    for (what, rendered) in forms {
        for key in ["runAsUser", "runAsGroup", "fsGroup"] {
            assert!(!rendered.contains(key), "{what} sets {key}");
        }
        assert!(rendered.contains("runAsNonRoot: true"), "{what}");
    }
}

#[test]
fn pods_meet_the_restricted_profile() {
    if !require(&["kubectl"]) {
        return;
    }
    for dir in ["base", "statefulset", "sidecar-legacy", "openshift"] {
        let rendered = render(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy/kubernetes")
                .join(dir),
        );
        for needle in [
            "runAsNonRoot: true",
            "type: RuntimeDefault",
            "allowPrivilegeEscalation: false",
            "readOnlyRootFilesystem: true",
        ] {
            assert!(rendered.contains(needle), "{dir}: no {needle}");
        }
        // Every container drops every capability and none asks for privileges.
        assert_eq!(
            rendered.matches("allowPrivilegeEscalation: false").count(),
            rendered.matches("- ALL").count(),
            "{dir}"
        );
        assert_eq!(
            rendered.matches("allowPrivilegeEscalation: false").count(),
            2,
            "{dir}"
        );
        assert!(!rendered.contains("privileged: true"), "{dir}");
    }
}

#[test]
fn the_gateways_config_is_valid() {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/gateway/distgate.toml");
    let config = distgate::config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.routes.len(), 1);
    assert_eq!(config.dist.ports.len(), 10);
    assert_eq!(config.routes[0].lease, distgate::route::LeaseRule::Ordinal);
}

/// The Deployment overlay (the gateway way): its gateway discovers the app's pods
/// behind the headless Service, its sidecars let the gateway list their names, its
/// nodes are named after their pods at the gateway's host, and the gateway's pods may
/// reach the app's EPMD and dist ports.
#[test]
fn the_deployment_overlay_puts_the_gateway_way_together() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/deployment");
    let gateway =
        distgate::config::load(&dir.join("gateway.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(gateway.routes.len(), 1);
    assert!(gateway.routes[0].nodes.matches("app-7f9c8d-x2x1z"));
    assert!(matches!(
        &gateway.routes[0].upstream,
        distgate::route::Upstream::Discover { service, .. } if service == "app-headless"
    ));
    let sidecar =
        distgate::config::load(&dir.join("sidecar.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(
        sidecar.epmd.names_from,
        distgate::config::Config::default().epmd.names_from
    );
    if !require(&["kubectl"]) {
        return;
    }
    let rendered = render(&dir);
    for needle in [
        "value: $(POD_NAME)@distgate-gateway.$(POD_NAMESPACE)",
        "fieldPath: metadata.name",
        "name: app-headless",
        "clusterIP: None",
        "name: app-from-gateway",
        "app.kubernetes.io/name: distgate-gateway",
        "discover = \"app-headless\"",
    ] {
        assert!(
            rendered.contains(needle),
            "no {needle:?} in the rendered overlay"
        );
    }
    // POD_NAME and POD_NAMESPACE come before the name that refers to them.
    let at = |needle: &str| rendered.find(needle).unwrap();
    assert!(at("name: POD_NAME") < at("name: RELEASE_NODE"));
    assert!(at("name: POD_NAMESPACE") < at("name: RELEASE_NODE"));
}

#[test]
fn the_gateway_runs_replicas_that_are_never_all_down() {
    if !require(&["kubectl"]) {
        return;
    }
    let rendered = render(&Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/gateway"));
    for needle in [
        "replicas: 2",
        "maxUnavailable: 0",
        "kind: PodDisruptionBudget",
        "minAvailable: 1",
        "topologyKey: kubernetes.io/hostname",
        "sessionAffinity: ClientIP",
        "path: /readyz",
    ] {
        assert!(rendered.contains(needle), "no {needle}:\n{rendered}");
    }
}

/// The containers of every pod template in `rendered` (`kubectl kustomize` output:
/// list items at their key's indentation, fields two spaces deeper), init containers
/// apart: each one's name and its lines.
fn containers(rendered: &str) -> Vec<(String, Vec<&str>)> {
    listed(rendered, "containers:")
}

/// The items of every list under `key` (`containers:`, `initContainers:`) in
/// `rendered`: each one's name and its lines.
fn listed<'a>(rendered: &'a str, key: &str) -> Vec<(String, Vec<&'a str>)> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let lines: Vec<&str> = rendered.lines().collect();
    let mut found = vec![];
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != key {
            i += 1;
            continue;
        }
        let at = indent(lines[i]);
        i += 1;
        while i < lines.len() && indent(lines[i]) == at && lines[i].trim_start().starts_with("- ") {
            let mut block = vec![lines[i]];
            i += 1;
            while i < lines.len() && indent(lines[i]) > at {
                block.push(lines[i]);
                i += 1;
            }
            let name = block
                .iter()
                .filter(|l| indent(l) == at + 2 || indent(l) == at)
                .find_map(|l| {
                    l.trim_start()
                        .trim_start_matches("- ")
                        .strip_prefix("name: ")
                })
                .unwrap_or("")
                .to_owned();
            found.push((name, block));
        }
    }
    found
}

/// Every shipped workload of app pods, rendered: the kustomize directories that carry a
/// sidecar, and the one-file install.
fn app_workloads() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs = [
        "base",
        "statefulset",
        "sidecar-legacy",
        "openshift",
        "deployment",
    ];
    let mut renders: Vec<(String, String)> = dirs
        .iter()
        .map(|dir| {
            (
                dir.to_string(),
                render(&root.join("deploy/kubernetes").join(dir)),
            )
        })
        .collect();
    renders.push((
        "distgate.yaml".into(),
        std::fs::read_to_string(root.join("deploy/distgate.yaml")).unwrap(),
    ));
    renders
}

/// Every app container the manifests ship starts no epmd, whatever command runs in it:
/// `ERL_AFLAGS` is read by every `erl`, `bin/app rpc`, `remote` and `eval` included
/// (README, "Set ERL_AFLAGS"), where `vm.args` reaches only the node.
#[test]
fn every_app_container_sets_erl_aflags_start_epmd_false() {
    if !require(&["kubectl"]) {
        return;
    }
    for (what, rendered) in app_workloads() {
        let apps: Vec<_> = containers(&rendered)
            .into_iter()
            .filter(|(name, _)| name != "distgate")
            .collect();
        assert!(!apps.is_empty(), "{what}: no app container found");
        for (name, block) in apps {
            let flag = block.windows(2).any(|pair| {
                pair[0].trim() == "- name: ERL_AFLAGS"
                    && pair[1].trim().starts_with("value:")
                    && pair[1].contains("-start_epmd false")
            });
            assert!(
                flag,
                "{what}: container {name} has no ERL_AFLAGS with -start_epmd false"
            );
        }
    }
}

/// kube-prometheus-stack ignores a PodMonitor or PrometheusRule without its `release`
/// label: every monitoring object carries it, and a PodMonitor selects the gateway's
/// pods as well as the sidecars'.
#[test]
fn the_monitoring_objects_carry_the_stacks_selector_label() {
    if !require(&["kubectl"]) {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rendered = render(&root.join("deploy/kubernetes/monitoring"));
    let docs: Vec<&str> = rendered.split("\n---\n").collect();
    let kinds = |kind: &str| -> Vec<&str> {
        docs.iter()
            .copied()
            .filter(|d| d.lines().any(|l| l == format!("kind: {kind}")))
            .collect()
    };
    let monitors = kinds("PodMonitor");
    let rules = kinds("PrometheusRule");
    assert_eq!((monitors.len(), rules.len()), (2, 1), "{rendered}");
    for doc in monitors.iter().chain(&rules) {
        assert!(doc.contains("    release: kube-prometheus-stack"), "{doc}");
    }
    let gateway = render(&root.join("deploy/kubernetes/gateway"));
    assert!(gateway.contains("app.kubernetes.io/name: distgate-gateway"));
    assert!(
        monitors
            .iter()
            .any(|m| m.contains("app.kubernetes.io/name: distgate-gateway")
                && m.contains("port: admin")),
        "no PodMonitor for the gateway's pods"
    );
}

/// Every shipped sidecar reads its configuration file from the ConfigMap
/// `distgate-sidecar` (mounted whole, no subPath, so an edit reaches the pod), so
/// `distgate reload`, SIGHUP and POST /reload work as shipped; the file is valid.
#[test]
fn every_sidecar_reads_its_configmap() {
    if !require(&["kubectl"]) {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (what, rendered) in app_workloads() {
        let sidecars: Vec<_> = listed(&rendered, "containers:")
            .into_iter()
            .chain(listed(&rendered, "initContainers:"))
            .filter(|(name, _)| name == "distgate")
            .collect();
        // The sidecar, and in the Deployment overlay the gateway too.
        assert!(!sidecars.is_empty(), "{what}");
        for (_, block) in &sidecars {
            let block = block.join("\n");
            assert!(
                block.contains("- --config\n") && block.contains("- /etc/distgate/distgate.toml"),
                "{what}: distgate runs without --config:\n{block}"
            );
            assert!(
                block.contains("mountPath: /etc/distgate") && !block.contains("subPath"),
                "{what}"
            );
        }
        assert!(rendered.contains("kind: ConfigMap"), "{what}");
        assert!(rendered.contains("  name: distgate-sidecar\n"), "{what}");
        assert!(rendered.contains("  distgate.toml: |"), "{what}");
        let lines: Vec<&str> = rendered.lines().map(str::trim).collect();
        assert!(
            lines
                .windows(2)
                .any(|w| w == ["- configMap:", "name: distgate-sidecar"]),
            "{what}: no volume of the ConfigMap"
        );
    }
    let file = root.join("deploy/kubernetes/sidecar-config/distgate.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_distgate"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The documents of `rendered` (`kubectl kustomize` output) of `kind`, each with its
/// name.
fn objects<'a>(rendered: &'a str, kind: &str) -> Vec<(String, &'a str)> {
    rendered
        .split("\n---\n")
        .filter(|doc| doc.lines().any(|l| l == format!("kind: {kind}")))
        .map(|doc| {
            let name = doc
                .lines()
                .skip_while(|l| *l != "metadata:")
                .find_map(|l| l.strip_prefix("  name: "))
                .unwrap_or_default();
            (name.to_owned(), doc)
        })
        .collect()
}

/// The one object of `kind` in `rendered`, or the one named `name` when given.
fn object<'a>(rendered: &'a str, kind: &str, name: Option<&str>) -> &'a str {
    let found: Vec<&str> = objects(rendered, kind)
        .into_iter()
        .filter(|(n, _)| name.is_none_or(|name| n == name))
        .map(|(_, doc)| doc)
        .collect();
    assert_eq!(found.len(), 1, "{kind} {name:?}:\n{rendered}");
    found[0]
}

/// The value of the first line of `doc` that starts with `key: ` once trimmed.
fn field<'a>(doc: &'a str, key: &str) -> &'a str {
    doc.lines()
        .find_map(|l| {
            l.trim_start()
                .trim_start_matches("- ")
                .strip_prefix(&format!("{key}: "))
        })
        .unwrap_or_else(|| panic!("no {key}:\n{doc}"))
}

/// The federation overlay (one cluster's side, docs/federation.md) holds together:
/// the Certificate's SPIFFE ID names the namespace and ServiceAccount the gateway
/// runs as, for client and server auth, from an Issuer it renders; the files
/// `[federation]` reads are in the Secret's mount; the federation Service reaches the
/// container's 43690, which the config listens on; from outside the cluster the
/// NetworkPolicy admits 43690 and nothing else; CoreDNS maps both gateways' FQDNs to
/// the local gateway's Service; the route to cluster B is the documented one. The
/// csi-driver-spiffe overlay swaps the Certificate for the driver's volume.
#[test]
fn the_federation_overlay_holds_together() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    // The gateway's configuration: distgate's loader takes it whole, and its keys
    // are read as TOML below.
    let text = std::fs::read_to_string(root.join("federation/distgate.toml")).unwrap();
    let loaded = distgate::config::parse(&text).expect("distgate takes the gateway's config");
    assert!(loaded.routes.iter().any(|r| r.federates()));
    assert!(!loaded.federation.listen.is_empty());
    let config: toml::Table = toml::from_str(&text).unwrap();
    let federation = config["federation"].as_table().unwrap();
    let mut keys: Vec<&str> = federation.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "ca",
            "cert",
            "handshake_timeout",
            "key",
            "listen",
            "max_connections",
            "peers",
            "watch_every"
        ]
    );
    assert_eq!(federation["listen"].as_array().unwrap().len(), 1);
    assert_eq!(federation["listen"][0].as_str(), Some("0.0.0.0:43690"));
    let routes = config["route"].as_array().unwrap();
    let to_b = routes
        .iter()
        .find(|r| r.get("federate").is_some())
        .expect("a federated route");
    assert_eq!(to_b["nodes"].as_str(), Some("b-*"));
    assert_eq!(to_b["federate"].as_str(), Some("gw-b.public.example:43690"));
    let b = "spiffe://b.example/ns/distgate/sa/gateway";
    assert_eq!(to_b["identity"].as_str(), Some(b));
    assert_eq!(federation["peers"].as_array().unwrap()[0].as_str(), Some(b));

    if !require(&["kubectl"]) {
        return;
    }
    let rendered = render(&root.join("federation"));
    let deployment = object(&rendered, "Deployment", Some("distgate-gateway"));
    let namespace = field(deployment, "namespace");
    let account = field(deployment, "serviceAccountName");
    assert_eq!((namespace, account), ("distgate", "gateway"));
    object(&rendered, "ServiceAccount", Some(account));
    object(&rendered, "Namespace", Some(namespace));

    // The certificate: this gateway's SPIFFE ID, both usages, an issuer rendered here.
    let certificate = object(&rendered, "Certificate", None);
    let own = format!("  - spiffe://a.example/ns/{namespace}/sa/{account}\n");
    assert!(
        certificate.contains(&format!("  uris:\n{own}")),
        "{certificate}"
    );
    for usage in ["  - server auth", "  - client auth"] {
        assert!(certificate.lines().any(|l| l == usage), "{certificate}");
    }
    let issuer = certificate
        .split("issuerRef:\n")
        .nth(1)
        .expect("an issuerRef");
    object(
        &rendered,
        field(issuer, "kind"),
        Some(field(issuer, "name")),
    );

    // Its Secret is mounted where the configuration reads its files.
    let secret = field(certificate, "secretName");
    let volume = deployment
        .split("  volumes:\n")
        .nth(1)
        .unwrap()
        .split("\n      - ")
        .find(|v| v.contains(&format!("secretName: {secret}")))
        .expect("a volume of the certificate's Secret");
    let volume_name = field(volume, "name");
    let mount = deployment
        .split("volumeMounts:\n")
        .nth(1)
        .unwrap()
        .split("\n        - ")
        .find(|m| m.contains(&format!("name: {volume_name}")))
        .expect("a mount of that volume");
    let dir = field(mount, "mountPath");
    for (key, file) in [("cert", "tls.crt"), ("key", "tls.key"), ("ca", "ca.crt")] {
        assert_eq!(
            federation[key].as_str(),
            Some(format!("{dir}/{file}").as_str()),
            "federation.{key}"
        );
    }

    // The federation Service reaches the container port the config listens on.
    let service = object(&rendered, "Service", Some("distgate-federation"));
    assert_eq!(field(service, "type"), "LoadBalancer");
    assert_eq!(field(service, "port"), "43690");
    let target = field(service, "targetPort");
    let lines: Vec<&str> = deployment.lines().map(str::trim).collect();
    assert!(
        lines
            .windows(2)
            .any(|w| w == ["- containerPort: 43690", &format!("name: {target}")]),
        "no container port {target} = 43690:\n{deployment}"
    );

    // From outside the cluster (an ipBlock), 43690 only.
    let policy = object(&rendered, "NetworkPolicy", None);
    let rules: Vec<&str> = policy
        .split("  ingress:\n")
        .nth(1)
        .unwrap()
        .split("\n  - from:")
        .collect();
    let outside: Vec<&&str> = rules.iter().filter(|r| r.contains("ipBlock")).collect();
    assert_eq!(outside.len(), 1, "{policy}");
    let ports: Vec<&str> = outside[0]
        .lines()
        .filter(|l| l.contains("port:") || l.contains("endPort:"))
        .map(str::trim)
        .collect();
    assert_eq!(ports, ["- port: 43690"], "{policy}");
    assert!(policy.contains("app.kubernetes.io/name: distgate-gateway"));

    // CoreDNS: both gateway FQDNs to this gateway's Service, answered back as asked.
    let coredns = object(&rendered, "ConfigMap", Some("coredns-custom"));
    assert_eq!(field(coredns, "namespace"), "kube-system");
    let local = format!("distgate-gateway.{namespace}.svc.cluster.local.");
    object(&rendered, "Service", Some("distgate-gateway"));
    for fqdn in ["gw.a.example", "gw.b.example"] {
        let pattern = format!("^{}\\.$", fqdn.replace('.', "\\."));
        assert!(
            coredns.contains(&format!("name regex {pattern} {local}\n")),
            "{fqdn}:\n{coredns}"
        );
        assert!(
            coredns.contains(&format!(
                "answer name ^{}$ {fqdn}.\n",
                local.replace('.', "\\.")
            )),
            "{fqdn}:\n{coredns}"
        );
    }

    // csi-driver-spiffe instead: no Certificate, the driver's volume at the same mount,
    // and the ServiceAccount may ask for it.
    let spiffe = render(&root.join("federation-spiffe"));
    assert!(objects(&spiffe, "Certificate").is_empty());
    let deployment = object(&spiffe, "Deployment", Some("distgate-gateway"));
    assert!(
        deployment.contains(&format!(
            "      - csi:\n          driver: spiffe.csi.cert-manager.io\n          readOnly: true\n        name: {volume_name}\n"
        )),
        "{deployment}"
    );
    assert!(!deployment.contains(&format!("secretName: {secret}")));
    let binding = object(&spiffe, "RoleBinding", None);
    assert!(
        binding.contains(&format!(
            "- kind: ServiceAccount\n  name: {account}\n  namespace: {namespace}"
        )),
        "{binding}"
    );
    assert!(object(&spiffe, "Role", None).contains("- certificaterequests"));
}
