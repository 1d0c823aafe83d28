//! The binary itself: `check-config`, `explain`, and `serve` answering a real SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pullsecret-injector"))
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .display()
        .to_string()
}

#[test]
fn check_config_exits_0_for_valid_and_1_with_every_error() {
    let ok = bin()
        .args(["check-config", "--config", &repo("examples/config.yaml")])
        .output()
        .expect("runs");
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "mode: x\nrules:\n  - registry: ok.io\n    secrets: [a]\n  - registry: ghcr.io\n  - registry: '*.io:x'\n    secrets: [b]\n").expect("write");
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for line in [
        "mode: 'x' is not one of: enforce, audit",
        "rules[1].secrets: is required",
        "rules[2].registry: '*.io:x' is not a valid registry pattern",
    ] {
        assert!(stderr.contains(line), "missing {line:?} in {stderr}");
    }
    // The env var works like the flag.
    let out = bin()
        .arg("check-config")
        .env("PULLSECRET_INJECTOR_CONFIG", &bad)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));

    let out = bin()
        .args(["check-config", "--config", "/nonexistent.yaml"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.yaml"));
}

/// A docker config Secret as `kubectl create secret docker-registry NAME --docker-server=SERVER
/// --docker-username=u --docker-password=p --dry-run=client -o yaml` writes it.
fn docker_registry_secret(name: &str, server: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let config = format!(
        r#"{{"auths":{{"{server}":{{"username":"u","password":"p","auth":"{}"}}}}}}"#,
        b64("u:p")
    );
    format!(
        "apiVersion: v1\ndata:\n  .dockerconfigjson: {}\nkind: Secret\nmetadata:\n  creationTimestamp: null\n  name: {name}\ntype: kubernetes.io/dockerconfigjson\n",
        b64(&config)
    )
}

#[test]
fn check_config_checks_rules_against_secret_manifests_as_the_kubelet_would() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "rules:\n  - registry: registry.example.com:5000\n    secrets: [regcred]\n",
    )
    .expect("write");
    let run = |server: &str| {
        let secret = dir.path().join("secret.yaml");
        std::fs::write(&secret, docker_registry_secret("regcred", server)).expect("write");
        bin()
            .arg("check-config")
            .arg("--config")
            .arg(&config)
            .arg("-f")
            .arg(&secret)
            .output()
            .expect("runs")
    };
    // Every form users type for --docker-server that the kubelet matches.
    for server in [
        "registry.example.com:5000",
        "https://registry.example.com:5000",
        "https://registry.example.com:5000/v1/",
        "http://registry.example.com:5000/v2/",
    ] {
        let out = run(server);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{server}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 rule(s) checked"));
    }
    // A missing port, or another host: the kubelet would not use it; caught before a Pod fails.
    for server in ["registry.example.com", "https://other.example.com:5000"] {
        let out = run(server);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{server}: {stderr}");
        assert!(
            stderr.contains(
                "rules[0] (registry.example.com:5000): the kubelet would not use Secret regcred"
            ),
            "{stderr}"
        );
        assert!(
            !stderr.contains("\"p\""),
            "no credential values in the report: {stderr}"
        );
    }
}

/// Runs the binary; (exit code, stdout, stderr).
fn run_bin(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    let out = bin().args(args).output().expect("runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn check_config_calls_a_glob_rule_served_in_part_partial_coverage_and_reads_several_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let config = write(
        "config.yaml",
        "rules:\n  - registry: \"*.dkr.ecr.*.amazonaws.com\"\n    secrets: [ecr]\n  - registry: \"*.azurecr.io\"\n    secrets: [acr]\n  - registry: europe-west1-docker.pkg.dev/acme\n    secrets: [gar]\n",
    );
    let ecr = write(
        "ecr.yaml",
        &docker_registry_secret("ecr", "123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
    );
    let acr = write(
        "acr.yaml",
        &docker_registry_secret("acr", "https://acme.azurecr.io"),
    );
    let gar = write(
        "gar.yaml",
        &docker_registry_secret("gar", "https://europe-west1-docker.pkg.dev"),
    );
    let c = config.as_os_str();
    let check = std::ffi::OsStr::new("check-config");
    let flag = |f: &'static str| std::ffi::OsStr::new(f);
    // -f a -f b, -f a b and -f a,b all read every file.
    let joined = format!("{},{}", acr.display(), gar.display());
    for args in [
        vec![
            check,
            flag("--config"),
            c,
            flag("-f"),
            ecr.as_os_str(),
            flag("-f"),
            acr.as_os_str(),
            flag("-f"),
            gar.as_os_str(),
        ],
        vec![
            check,
            flag("--config"),
            c,
            flag("-f"),
            ecr.as_os_str(),
            acr.as_os_str(),
            gar.as_os_str(),
        ],
        vec![
            check,
            flag("--config"),
            c,
            flag("-f"),
            ecr.as_os_str(),
            flag("-f"),
            std::ffi::OsStr::new(&joined),
        ],
    ] {
        let (code, stdout, stderr) = run_bin(&args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        for line in [
            "rules[0] (*.dkr.ecr.*.amazonaws.com): partial coverage: the kubelet would use Secret ecr for the rule's images under 123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            "rules[1] (*.azurecr.io): partial coverage: the kubelet would use Secret acr for the rule's images under acme.azurecr.io",
            "rules[2] (europe-west1-docker.pkg.dev/acme): the kubelet would use Secret gar for all of its images",
            "3 rule(s) checked against 3 docker config Secret(s)",
        ] {
            assert!(stdout.contains(line), "missing {line:?} in {stdout}");
        }
        assert!(!stderr.contains("error"), "{stderr}");
    }
    // A Secret of another account's region shape serves none of the rule's images: exit 1.
    let wrong = write(
        "wrong.yaml",
        &docker_registry_secret("ecr", "123456789012.dkr.ecr.amazonaws.com"),
    );
    let (code, _, stderr) = run_bin(&[check, flag("--config"), c, flag("-f"), wrong.as_os_str()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("rules[0] (*.dkr.ecr.*.amazonaws.com): the kubelet would not use Secret ecr for any of this rule's images"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("error:").count(), 1, "{stderr}");
}

#[test]
fn check_config_reports_wrong_secret_types_unnamed_secrets_and_other_documents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let config = write(
        "config.yaml",
        "rules:\n  - registry: ghcr.io\n    secrets: [ghcr]\n  - registry: quay.io\n    secrets: [quay]\n",
    );
    let mixed = write(
        "mixed.yaml",
        &format!(
            "{}---\n{}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: quay}}\ntype: Opaque\ndata: {{a: eA==}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\n",
            docker_registry_secret("ghcr", "ghcr.io"),
            docker_registry_secret("stray", "docker.io"),
        ),
    );
    let (code, stdout, stderr) = run_bin(&[
        "check-config".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "-f".as_ref(),
        mixed.as_os_str(),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    let mixed = mixed.display();
    for line in [
        format!("warning: {mixed}: Deployment web is not a Secret; ignored"),
        format!("warning: Secret stray ({mixed}) is not named by any rule"),
        format!(
            "rules[1] (quay.io): Secret quay ({mixed}) is of type Opaque: the kubelet uses only kubernetes.io/dockerconfigjson"
        ),
    ] {
        assert!(stderr.contains(&line), "missing {line:?} in {stderr}");
    }
    assert!(
        stdout.contains(
            "rules[0] (ghcr.io): the kubelet would use Secret ghcr for all of its images"
        ),
        "{stdout}"
    );
    // Only a Deployment: nothing to check against is an error, not "the kubelet would use them".
    let deployment = write(
        "deployment.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n",
    );
    let (code, stdout, stderr) = run_bin(&[
        "check-config".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "-f".as_ref(),
        deployment.as_os_str(),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no Secret in"), "{stderr}");
    assert!(!stdout.contains("would use"), "{stdout}");
}

#[test]
fn empty_and_never_winning_rules_are_warned_about_and_yaml_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let pod = write(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: nginx}]}\n",
    );
    let empty = write("empty.yaml", "mode: enforce\n");
    let twice = write(
        "twice.yaml",
        "rules:\n  - registry: docker.io\n    secrets: [a]\n  - registry: DOCKER.IO\n    secrets: [b]\n",
    );
    let unnamed = write(
        "minted.yaml",
        "rules:\n  - registry: docker.io\n    secrets: [a]\ncredentialProviders:\n  providers:\n    - name: ecr-credential-provider\n      apiVersion: credentialprovider.kubelet.k8s.io/v1\n      matchImages: ['*.dkr.ecr.*.amazonaws.com']\n      defaultCacheDuration: 12h\n      secret: ecr\n      images: [1.dkr.ecr.us-east-1.amazonaws.com/app]\n",
    );
    for (config, warning) in [
        (
            &unnamed,
            "warning: credentialProviders.providers[0] (ecr-credential-provider) fills Secret ecr, which no rule names and discovery is off: no Pod will get it",
        ),
        (
            &empty,
            "warning: no rules: the injector adds nothing to any Pod",
        ),
        (
            &twice,
            "warning: config rules[1] (DOCKER.IO) can never win: config rules[0] (docker.io) names the same registry",
        ),
    ] {
        for args in [
            vec![
                "check-config".as_ref(),
                "--config".as_ref(),
                config.as_os_str(),
            ],
            vec![
                "explain".as_ref(),
                "--config".as_ref(),
                config.as_os_str(),
                "-f".as_ref(),
                pod.as_os_str(),
            ],
        ] {
            let (code, stdout, stderr) = run_bin(&args);
            assert_eq!(code, Some(0), "{args:?}: {stderr}");
            assert!(stderr.contains(warning), "{args:?}: {stderr}");
            assert!(!stdout.contains("warning: no rules"), "{stdout}");
        }
    }
    // A duplicate key: the file and the key, one `error:`, no parser internals.
    let duplicate = write("duplicate.yaml", "mode: enforce\nmode: audit\n");
    for args in [
        vec![
            "check-config".as_ref(),
            "--config".as_ref(),
            duplicate.as_os_str(),
        ],
        vec![
            "explain".as_ref(),
            "--config".as_ref(),
            duplicate.as_os_str(),
            "-f".as_ref(),
            pod.as_os_str(),
        ],
        vec![
            "explain".as_ref(),
            "--config".as_ref(),
            empty.as_os_str(),
            "-f".as_ref(),
            duplicate.as_os_str(),
        ],
    ] {
        let (code, _, stderr) = run_bin(&args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert_eq!(stderr.matches("error").count(), 1, "{stderr}");
        assert!(
            stderr.contains(&duplicate.display().to_string()),
            "{stderr}"
        );
        assert!(stderr.contains("duplicate mapping key: mode"), "{stderr}");
        for internal in ["<input>", "DuplicateKeyPolicy", "Options", "-->"] {
            assert!(!stderr.contains(internal), "{internal} in {stderr}");
        }
    }
}

#[test]
fn explain_reads_files_and_stdin_in_text_and_json() {
    let out = bin()
        .args([
            "explain",
            "--config",
            &repo("examples/config.yaml"),
            "-f",
            &repo("examples/workloads.yaml"),
        ])
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "Pod team-a/web",
        "rule ghcr.io/acme (config rules[2]) -> secrets ghcr-acme; imagePullPolicy -> Always",
        "imagePullSecrets: adds ghcr-acme, dockerhub",
        "Deployment team-b/api (pod template: the patch below is what each of its Pods gets at creation",
        "registry ghcr.io, repository acme-evil/report: no rule matches",
        "left alone: namespace excluded by configuration",
        "left alone: Pod labelled pullsecret-injector/inject=disabled",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }

    let mut child = bin()
        .args([
            "explain",
            "--config",
            &repo("examples/config.yaml"),
            "-f",
            "-",
            "-o",
            "json",
            "-n",
            "team-z",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"nginx"}]}}"#;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(pod.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("waits");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json output");
    assert_eq!(json[0]["namespace"], "team-z");
    assert_eq!(json[0]["add"], serde_json::json!(["dockerhub"]));
    assert_eq!(
        json[0]["patch"],
        serde_json::json!([{"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": "dockerhub"}]}])
    );

    let out = bin()
        .args([
            "explain",
            "--config",
            &repo("examples/config.yaml"),
            "-f",
            &repo("Cargo.toml"),
        ])
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(1),
        "a file that is not YAML is an error"
    );
}

/// A source Secret: labelled for discovery, with scope annotations.
fn source_secret(name: &str, server: &str, annotations: &[(&str, &str)]) -> String {
    let mut yaml = docker_registry_secret(name, server).replace(
        "  creationTimestamp: null\n",
        "  labels:\n    pullsecret-injector/source: \"true\"\n",
    );
    if !annotations.is_empty() {
        let lines: String = annotations
            .iter()
            .map(|(k, v)| format!("    {k}: {v:?}\n"))
            .collect();
        yaml = yaml.replace(
            "metadata:\n",
            &format!("metadata:\n  annotations:\n{lines}"),
        );
    }
    yaml
}

#[test]
fn check_config_reports_unparsable_source_scopes_and_what_require_scope_turns_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let scoped = write(
        "scoped.yaml",
        "requireScope: true\nrules:\n  - registry: ghcr.io\n    secrets: [ghcr]\n    namespaces: [team-a]\n  - registry: docker.io\n    secrets: [dockerhub]\n",
    );
    let plain = write(
        "plain.yaml",
        "rules:\n  - registry: ghcr.io\n    secrets: [ghcr]\n",
    );
    let run = |config: &Path, secrets: Option<&Path>| {
        let mut cmd = bin();
        cmd.arg("check-config").arg("--config").arg(config);
        if let Some(secrets) = secrets {
            cmd.arg("-f").arg(secrets);
        }
        let out = cmd.output().expect("runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // requireScope: a rule without a scope serves nowhere; a warning, exit 0.
    let (code, stdout, stderr) = run(&scoped, None);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: rules[1] (docker.io): no namespaces or namespaceSelector; with requireScope it serves no namespace"),
        "{stderr}"
    );
    assert!(!stderr.contains("rules[0]"), "{stderr}");
    assert!(
        !stdout.contains("warning"),
        "warnings go to stderr: {stdout}"
    );

    // A source whose selector annotation cannot be parsed: exit 1, naming Secret and annotation.
    let bad = write(
        "bad.yaml",
        &format!(
            "{}---\n{}",
            source_secret(
                "team-b",
                "ghcr.io",
                &[("pullsecret-injector/namespace-selector", "team in (b")]
            ),
            source_secret(
                "ghcr",
                "ghcr.io",
                &[("pullsecret-injector/namespaces", "team-a")]
            ),
        ),
    );
    let (code, _, stderr) = run(&plain, Some(&bad));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("source Secret team-b: pullsecret-injector/namespace-selector: "),
        "{stderr}"
    );
    assert!(stderr.contains("it would serve no namespace"), "{stderr}");
    assert!(!stderr.contains("Secret ghcr:"), "{stderr}");

    // requireScope and a source without annotations: a warning; with a scope: nothing.
    let unscoped = write("unscoped.yaml", &source_secret("ghcr", "ghcr.io", &[]));
    let (code, _, stderr) = run(&scoped, Some(&unscoped));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: source Secret ghcr: no pullsecret-injector/namespaces or pullsecret-injector/namespace-selector annotation"),
        "{stderr}"
    );
    let (code, _, stderr) = run(&plain, Some(&unscoped));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

const SCOPED_CONFIG: &str = r#"namespaces: {selection: all}
rules:
  - registry: ghcr.io/acme
    secrets: [acme-shared]
  - registry: ghcr.io/acme/team-a
    secrets: [team-a-pull]
    namespaces: [team-a, "team-a-*"]
  - registry: ghcr.io/acme/team-b
    secrets: [team-b-pull]
    namespaceSelector:
      matchLabels: {team: b}
"#;

const SCOPED_INPUT: &str = r#"apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Namespace
    metadata: {name: team-b, labels: {team: b}}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: team-b}
spec: {containers: [{name: a, image: ghcr.io/acme/team-a/app}, {name: b, image: ghcr.io/acme/team-b/app}]}
---
apiVersion: v1
kind: Pod
metadata: {name: q, namespace: team-c}
spec: {containers: [{name: b, image: ghcr.io/acme/team-b/app}]}
"#;

fn explain_scoped(extra: &[&str]) -> (String, serde_json::Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    let input = dir.path().join("input.yaml");
    std::fs::write(&config, SCOPED_CONFIG).expect("write");
    std::fs::write(&input, SCOPED_INPUT).expect("write");
    let run = |output: &str| {
        let out = bin()
            .arg("explain")
            .arg("--config")
            .arg(&config)
            .arg("-f")
            .arg(&input)
            .args(["-o", output])
            .args(extra)
            .output()
            .expect("runs");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let text = String::from_utf8_lossy(&run("text")).to_string();
    let json = serde_json::from_slice(&run("json")).expect("json");
    (text, json)
}

#[test]
fn explain_shows_scopes_and_rules_that_do_not_serve_the_namespace() {
    let (text, json) = explain_scoped(&[]);
    for line in [
        "      scope: labels team=b",
        "rule ghcr.io/acme/team-a (config rules[1]) matches the image but does not serve namespace team-b (scope: namespaces team-a,team-a-*)",
        // team-c has no Namespace object and no --namespace-labels: said once, as an assumption.
        "note: assumed: the labels of namespace(s) team-c are unknown (no Namespace object in the input, no --namespace-labels), so the rules with a namespaceSelector (ghcr.io/acme/team-b) do not serve them",
        "rule ghcr.io/acme/team-b (config rules[2]) matches the image but does not serve namespace team-c (scope: labels team=b)",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains("ignored Namespace"), "{text}");
    assert_eq!(json[0]["images"][1]["scope"], "labels team=b");
    assert_eq!(json[0]["images"][1]["outOfScope"], serde_json::Value::Null);
    assert_eq!(
        json[0]["images"][0]["outOfScope"]["scope"],
        "namespaces team-a,team-a-*"
    );

    // --namespace-labels applies to namespaces without a Namespace object (team-c), not to
    // team-b, whose object says team=b.
    let (text, json) = explain_scoped(&["--namespace-labels", "team=b"]);
    assert!(!text.contains("assumed:"), "{text}");
    assert_eq!(json[1]["namespace"], "team-c");
    assert_eq!(json[1]["images"][0]["outOfScope"], serde_json::Value::Null);
    assert_eq!(json[0]["images"][1]["outOfScope"], serde_json::Value::Null);
    let (_, json) = explain_scoped(&["--namespace-labels", "team=x"]);
    assert_eq!(json[0]["images"][1]["outOfScope"], serde_json::Value::Null);
    assert_eq!(
        json[1]["images"][0]["outOfScope"]["rule"],
        "ghcr.io/acme/team-b"
    );

    let out = bin()
        .args(["explain", "--config", &repo("examples/config.yaml")])
        .args(["-f", &repo("examples/workloads.yaml")])
        .args(["--namespace-labels", "not a label"])
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad --namespace-labels is a usage error"
    );
}

/// What the admission patch does once `RuleSet::best_match` honours scope: the out-of-scope
/// rule does not match, the less specific rule in scope does.
#[test]
fn explain_patches_only_what_the_namespace_is_served() {
    let (text, json) = explain_scoped(&[]);
    assert_eq!(
        json[0]["add"],
        serde_json::json!(["acme-shared", "team-b-pull"])
    );
    assert_eq!(json[0]["images"][0]["rule"], "ghcr.io/acme");
    assert_eq!(json[1]["add"], serde_json::json!(["acme-shared"]));
    assert!(
        text.contains(
            "rule ghcr.io/acme (config rules[0]) -> secrets acme-shared\n      scope: everywhere"
        ),
        "{text}"
    );
}

fn http_get(addr: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.get(9..12)?.parse().ok()
}

/// Polls `check` every 20 ms until it returns `Ok`, and returns that value; panics naming
/// `what` and the last thing `check` saw (its `Err`) if `timeout` passes first.
fn eventually<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if started.elapsed() >= timeout => {
                panic!("{what}: not within {timeout:?}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// `/readyz` answers `want`.
fn readyz_is(admin: &str, want: u16) -> Result<(), String> {
    match http_get(admin, "/readyz") {
        Some(status) if status == want => Ok(()),
        other => Err(format!("/readyz {other:?}")),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// Runs `serve` with `--log-format FORMAT`, its stderr a pipe (as under `kubectl logs`),
/// sends SIGTERM once ready; checks the shutdown sequence and returns the logs.
fn serve_until_sigterm(log_format: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    std::fs::write(dir.path().join("tls.crt"), cert.cert.pem()).expect("write");
    std::fs::write(dir.path().join("tls.key"), cert.key_pair.serialize_pem()).expect("write");
    let admin = format!("127.0.0.1:{}", free_port());
    let mut child = bin()
        .args([
            "serve",
            "--standalone",
            "--log-format",
            log_format,
            "--shutdown-delay",
            "1s",
            "--drain-timeout",
            "2s",
        ])
        .args(["--config", &repo("examples/config.yaml")])
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .args([
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--admin-listen",
            &admin,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    eventually(Duration::from_secs(10), "serve ready (/readyz 200)", || {
        readyz_is(&admin, 200)
    });
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    // An answer at all means the process still runs: not ready between SIGTERM and the exit.
    eventually(
        Duration::from_secs(5),
        "/readyz 503 after SIGTERM, before the exit",
        || readyz_is(&admin, 503),
    );
    let status = eventually(Duration::from_secs(10), "the process exited", || {
        child
            .try_wait()
            .expect("wait")
            .ok_or_else(|| "still running".to_string())
    });
    assert_eq!(status.code(), Some(0));
    let mut logs = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut logs)
        .expect("logs");
    assert!(logs.contains("drained; exiting"), "{logs}");
    logs
}

#[test]
fn serve_exits_0_after_sigterm_and_reports_not_ready_meanwhile() {
    let logs = serve_until_sigterm("json");
    assert!(
        logs.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "json logs: {logs}"
    );
}

#[test]
fn plain_logs_carry_no_colour_codes_off_a_terminal() {
    let logs = serve_until_sigterm("plain");
    let serving = logs
        .lines()
        .find(|l| l.contains("pullsecret-injector serving"))
        .unwrap_or_else(|| panic!("no startup line in {logs}"));
    // The startup line names the mode and the configuration file.
    for field in ["mode=\"enforce\"", "config=", "examples/config.yaml"] {
        assert!(serving.contains(field), "{field} missing in {serving}");
    }
    assert!(
        !logs.contains('\x1b'),
        "ANSI escape codes in piped logs: {logs:?}"
    );
}

#[test]
fn explain_says_why_for_listed_secrets_templates_overrides_volumes_and_digests() {
    let (code, stdout, stderr) = run_bin(&[
        "explain".as_ref(),
        "--config".as_ref(),
        repo("examples/config.yaml").as_ref(),
        "-f".as_ref(),
        repo("tests/fixtures/explain-why.yaml").as_ref(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    for line in [
        "Deployment team-a/web (pod template: the patch below is what each of its Pods gets at creation; the workload itself is not changed)",
        "-> secrets ghcr-acme; imagePullPolicy IfNotPresent -> Always (the rule's pullPolicy: Always overrides the Pod's)",
        // An image volume's field is pullPolicy.
        "-> secrets ghcr-acme; pullPolicy IfNotPresent -> Always (the rule's pullPolicy: Always overrides the Pod's)",
        "imagePullSecrets: adds ghcr-acme (dockerhub already listed by the Pod)",
        "imagePullSecrets: nothing to add (dockerhub already listed by the Pod)",
        "invalid digest: sha256 takes 64 lowercase hex characters",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in {stdout}");
    }
    // The offline assumption, once.
    assert_eq!(stdout.matches("assumed (offline)").count(), 1, "{stdout}");
    // JSON: the same facts in additive fields.
    let (code, stdout, stderr) = run_bin(&[
        "explain".as_ref(),
        "--config".as_ref(),
        repo("examples/config.yaml").as_ref(),
        "-f".as_ref(),
        repo("tests/fixtures/explain-why.yaml").as_ref(),
        "-o".as_ref(),
        "json".as_ref(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(json[0]["podTemplate"], true);
    assert_eq!(json[1]["podTemplate"], false);
    assert_eq!(json[0]["alreadyListed"], serde_json::json!(["dockerhub"]));
    assert_eq!(json[0]["images"][1]["overridesPullPolicy"], "IfNotPresent");
    assert_eq!(json[0]["add"], serde_json::json!(["ghcr-acme"]));
}

#[test]
fn explain_names_the_nearest_rule_and_what_differs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "rules:\n  - registry: ghcr.io/acme\n    secrets: [ghcr]\n  - registry: registry.internal.example.com:5000\n    secrets: [internal]\n",
    )
    .expect("write");
    let pod = dir.path().join("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: team-a}\nspec:\n  containers:\n    - {name: a, image: ghcr.io/acme-evil/report:1}\n    - {name: b, image: registry.internal.example.com/team/app}\n    - {name: c, image: quay.io/x/y}\n",
    )
    .expect("write");
    let (code, stdout, stderr) = run_bin(&[
        "explain".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "-f".as_ref(),
        pod.as_os_str(),
        "-o".as_ref(),
        "json".as_ref(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let images = json
        .pointer("/0/images")
        .or_else(|| json.pointer("/items/0/images"))
        .or_else(|| json.pointer("/pods/0/images"))
        .unwrap_or_else(|| panic!("no images in {json}"));
    assert_eq!(
        images[0]["nearest"],
        serde_json::json!({"rule": "ghcr.io/acme", "reason": "path segment 1: the rule needs 'acme', the image has 'acme-evil' (paths match whole segments, not prefixes)"})
    );
    assert_eq!(
        images[1]["nearest"]["rule"],
        "registry.internal.example.com:5000"
    );
    assert!(
        images[1]["nearest"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("the port differs")),
        "{}",
        images[1]
    );
    // Nothing near: no field at all.
    assert!(images[2].get("nearest").is_none(), "{}", images[2]);
}

/// A docker config Secret for `server` with `password`, and `annotations` (YAML flow map).
fn secret_with(name: &str, server: &str, password: &str, annotations: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let config =
        format!(r#"{{"auths":{{"{server}":{{"username":"u","password":"{password}"}}}}}}"#);
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  annotations: {annotations}\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {}\n",
        b64(&config)
    )
}

/// A JWT whose payload is `claims`, with a dummy signature.
fn jwt(claims: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!("{}.{}.c2ln", b64(r#"{"alg":"none"}"#), b64(claims))
}

#[test]
fn check_config_shows_each_secrets_expiry_and_warns_about_expired_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "rules:\n  - registry: ghcr.io\n    secrets: [ghcr]\n  - registry: quay.io\n    secrets: [quay]\n  - registry: docker.io\n    secrets: [hub]\n",
    )
    .expect("write");
    let token = jwt(r#"{"exp":1000000000,"sub":"robot-s3cret"}"#);
    let secrets = dir.path().join("secrets.yaml");
    std::fs::write(
        &secrets,
        format!(
            "{}---\n{}---\n{}",
            secret_with(
                "ghcr",
                "ghcr.io",
                "p",
                "{pullsecret-injector/expires-at: '2099-01-01T02:00:00+02:00'}"
            ),
            secret_with("quay", "quay.io", &token, "{}"),
            secret_with("hub", "docker.io", "p", "{expiresAt: 'next week'}"),
        ),
    )
    .expect("write");
    let (code, stdout, stderr) = run_bin(&[
        "check-config".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "-f".as_ref(),
        secrets.as_os_str(),
    ]);
    // Expiry is a warning: the exit code is the rules' answer.
    assert_eq!(code, Some(0), "{stderr}");
    for line in [
        "Secret ghcr: expires at 2099-01-01T00:00:00Z (annotation pullsecret-injector/expires-at)",
        "Secret quay: expired at 2001-09-09T01:46:40Z (JWT exp in password of quay.io)",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in {stdout}");
    }
    assert!(!stdout.contains("Secret hub:"), "{stdout}");
    for line in [
        "has expired: pulls with it fail until it is renewed",
        "Secret hub: annotation expiresAt: \"next week\" is neither RFC 3339 nor Unix seconds; ignored",
    ] {
        assert!(stderr.contains(line), "missing {line:?} in {stderr}");
    }
    let printed = format!("{stdout}{stderr}");
    assert!(
        !printed.contains(&token) && !printed.contains("s3cret"),
        "{printed}"
    );
}

#[test]
fn explain_shows_the_expiry_of_secrets_in_its_input_and_still_adds_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "rules:\n  - registry: ghcr.io\n    secrets: [ghcr]\n  - registry: quay.io\n    secrets: [quay]\n  - registry: docker.io\n    secrets: [hub]\n",
    )
    .expect("write");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    // ghcr: within the hour; quay: a JWT long expired; hub: a year away.
    let soon = now + 1800;
    let far = now + 365 * 86_400;
    let input = dir.path().join("input.yaml");
    std::fs::write(
        &input,
        format!(
            "{}---\n{}---\n{}---\n{}",
            secret_with(
                "ghcr",
                "ghcr.io",
                "p",
                &format!("{{pullsecret-injector/expires-at: '{soon}'}}")
            ),
            secret_with("quay", "quay.io", &jwt(r#"{"exp":1000000000}"#), "{}"),
            secret_with("hub", "docker.io", "p", &format!("{{expiresAt: '{far}'}}")),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: team-a}\nspec:\n  containers:\n    - {name: a, image: ghcr.io/acme/a}\n    - {name: b, image: quay.io/acme/b}\n    - {name: c, image: nginx}\n",
        ),
    )
    .expect("write");
    let out = bin()
        .arg("explain")
        .arg("--config")
        .arg(&config)
        .arg("-f")
        .arg(&input)
        .args(["-o", "json"])
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let pod = &json[0];
    // Never fewer secrets.
    assert_eq!(
        pod["add"],
        serde_json::json!(["ghcr", "quay", "hub"]),
        "{pod}"
    );
    let statuses: Vec<(&str, &str)> = pod["expiries"]
        .as_array()
        .expect("expiries")
        .iter()
        .map(|e| {
            (
                e["secret"].as_str().unwrap_or(""),
                e["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("ghcr", "expiresSoon"),
            ("quay", "expired"),
            ("hub", "valid")
        ]
    );
    assert_eq!(pod["expiries"][1]["expiresAt"], "2001-09-09T01:46:40Z");
    let warnings: Vec<&str> = pod["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .filter_map(|w| w.as_str())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("Secret ghcr (rule ghcr.io) expires at")
                && w.contains("within the hour")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("Secret quay (rule quay.io) expired at 2001-09-09T01:46:40Z")),
        "{warnings:?}"
    );
    assert!(
        !warnings.iter().any(|w| w.contains("Secret hub")),
        "{warnings:?}"
    );
    // Text: the expiry of each Secret in the input, as a note.
    let out = bin()
        .arg("explain")
        .arg("--config")
        .arg(&config)
        .arg("-f")
        .arg(&input)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "Secret quay: expired at 2001-09-09T01:46:40Z (JWT exp in password of quay.io)"
        ),
        "{text}"
    );
    assert!(text.contains("Secret hub: expires at "), "{text}");
}

#[test]
fn explain_shows_the_probes_rejection_written_on_a_secret_in_its_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "rules:\n  - registry: ghcr.io\n    secrets: [ghcr]\n  - registry: quay.io\n    secrets: [quay]\n",
    )
    .expect("write");
    let input = dir.path().join("input.yaml");
    std::fs::write(
        &input,
        format!(
            "{}---\n{}---\n{}",
            secret_with(
                "ghcr",
                "ghcr.io",
                "p",
                "{pullsecret-injector/probe: 'rejected ghcr.io 2026-12-07T03:00:00Z'}"
            ),
            secret_with("quay", "quay.io", "p", "{}"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: team-a}\nspec:\n  containers:\n    - {name: a, image: ghcr.io/acme/a}\n    - {name: b, image: quay.io/acme/b}\n",
        ),
    )
    .expect("write");
    let out = bin()
        .arg("explain")
        .arg("--config")
        .arg(&config)
        .arg("-f")
        .arg(&input)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("Secret ghcr: rejected by its registry at the credential probe (rejected ghcr.io 2026-12-07T03:00:00Z)"),
        "{text}"
    );
    // The warning admission gives, for the one container whose registry rejected it.
    assert!(
        text.contains("the registry of container a image \"ghcr.io/acme/a\" rejected the credential in Secret ghcr"),
        "{text}"
    );
    assert!(!text.contains("Secret quay: rejected"), "{text}");
    assert!(
        !text.contains("rejected the credential in Secret quay"),
        "{text}"
    );
}
