//! The deployment artefacts in `deploy/`: the Helm chart and the Kubernetes manifests render
//! offline with a real helm and kustomize, validate strictly against the Kubernetes schemas,
//! and every kyma container they define (command, flags, environment, config file) is
//! accepted by this build's `kyma --check-config`. `scripts/test` installs the tools
//! (`install_deploy_tools`) and sets KYMA_DEPLOY_PYTHON.

use std::path::PathBuf;
use std::process::Command;

const KYMA: &str = env!("CARGO_BIN_EXE_kyma");

#[test]
fn the_chart_and_manifests_render_validate_and_are_accepted_by_this_kyma() {
    let python = std::env::var_os("KYMA_DEPLOY_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/kyma/deploy-tools/venv/bin/python"))
        })
        .expect("KYMA_DEPLOY_PYTHON or HOME");
    assert!(
        python.exists(),
        "{} is missing: run `source scripts/common.sh && install_deploy_tools` (scripts/test does)",
        python.display()
    );
    let check = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/check.py");
    let output = Command::new(&python)
        .args([check, "--kyma", KYMA])
        .output()
        .expect("run deploy/check.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "deploy/check.py failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("accepted by `kyma --check-config`"),
        "the containers were checked against this kyma:\n{stdout}"
    );
}

#[test]
fn check_config_accepts_valid_settings_and_refuses_a_bad_one_with_exit_2() {
    let run = |args: &[&str]| {
        Command::new(KYMA)
            .args(args)
            .env_remove("KYMA_CONFIG")
            .output()
            .expect("run kyma")
    };
    let cluster = [
        "--catalog",
        "etcd://127.0.0.1:1/kyma",
        "--store",
        "memory://",
    ];
    let valid = run(&[&["query-node"][..], &cluster, &["--check-config"]].concat());
    assert!(valid.status.success(), "{valid:?}");
    let shown = String::from_utf8_lossy(&valid.stdout);
    assert!(
        shown.contains("the settings are valid") && shown.contains("QueryNode"),
        "{shown}"
    );
    let secret = run(&["standalone", "--auth-token", "hunter2-x", "--check-config"]);
    assert!(secret.status.success(), "{secret:?}");
    assert!(
        !String::from_utf8_lossy(&secret.stdout).contains("hunter2"),
        "the token is hidden"
    );
    let bad = run(&[
        &["cdc-worker"][..],
        &cluster,
        &["--lease-ttl-secs", "1", "--check-config"],
    ]
    .concat());
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--lease-ttl-secs"),
        "{bad:?}"
    );
}
