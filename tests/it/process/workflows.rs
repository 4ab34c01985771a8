//! The CI and release workflows and the image's Dockerfile pass the linters a
//! reviewer would run: zizmor (no finding: every action pinned by digest, no token
//! kept in the checkout, no template expanded into a shell), the GitHub workflow
//! schema (check-jsonschema's vendored copy), and hadolint. All three come from PyPI
//! into target/tools/venv (scripts/test installs them); with `CI=true` a missing one
//! fails.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The tool from target/tools/venv, if installed; in CI it must be.
fn tool(name: &str) -> Option<PathBuf> {
    let path = root().join("target/tools/venv/bin").join(name);
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "CI=true but {name} is not installed (scripts/test installs it)"
    );
    eprintln!("skipped: {name} not installed (scripts/test installs it)");
    None
}

fn run(tool: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

const WORKFLOWS: [&str; 2] = [".github/workflows/ci.yml", ".github/workflows/release.yml"];

#[test]
fn the_workflows_have_no_zizmor_finding() {
    let Some(zizmor) = tool("zizmor") else {
        return;
    };
    let (ok, text) = run(&zizmor, &["--offline", ".github/workflows/"]);
    assert!(ok && text.contains("No findings"), "{text}");
}

#[test]
fn the_workflows_match_the_github_schema() {
    let Some(check) = tool("check-jsonschema") else {
        return;
    };
    let mut args = vec!["--builtin-schema", "vendor.github-workflows"];
    args.extend(WORKFLOWS);
    let (ok, text) = run(&check, &args);
    assert!(ok, "{text}");
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let Some(hadolint) = tool("hadolint") else {
        return;
    };
    let (ok, text) = run(&hadolint, &["deploy/Dockerfile"]);
    assert!(ok && text.trim().is_empty(), "{text}");
}

/// The image the release pushes is the one the manifests pull, and the build embeds
/// the dependency list.
#[test]
fn the_release_pushes_the_image_the_manifests_pull() {
    let release = std::fs::read_to_string(root().join(".github/workflows/release.yml")).unwrap();
    assert!(release.contains("images: ghcr.io/distgate/distgate"));
    assert!(release.contains("platforms: linux/amd64,linux/arm64"));
    assert!(release.contains("cosign sign --yes"));
    assert!(release.contains("sbom: true") && release.contains("provenance: mode=max"));
    let manifests =
        std::fs::read_to_string(root().join("deploy/kubernetes/base/kustomization.yaml")).unwrap();
    assert!(manifests.contains("newName: ghcr.io/distgate/distgate"));
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    assert!(dockerfile.contains("cargo auditable build"));
    assert!(release.contains("cargo auditable build"));
}
