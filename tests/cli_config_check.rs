//! `adclick config check` accepts exactly the configurations the processes
//! accept, and names the key of anything it rejects (the Helm chart tests run
//! it on every rendered ConfigMap).

use std::path::Path;
use std::process::{Command, Output};

fn check(file: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adclick"))
        .args(["config", "check", "--config"])
        .arg(file)
        .envs(env.iter().copied())
        .env_remove("ADCLICK_CONFIG")
        .output()
        .expect("running adclick config check")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn config_check_accepts_valid_files_and_names_the_bad_key() {
    let dir = adclick_testkit::temp_dir("config-check");
    let file = dir.join("adclick.toml");

    std::fs::write(
        &file,
        "[aggregate]\nreplicas = 5\n[job]\nwindow_secs = 60\n",
    )
    .unwrap();
    let out = check(&file, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("valid"), "{}", text(&out));

    // --print shows the effective config, environment overrides included.
    let out = Command::new(env!("CARGO_BIN_EXE_adclick"))
        .args(["config", "check", "--print", "--config"])
        .arg(&file)
        .env("ADCLICK_KAFKA__BOOTSTRAP", "broker-7:9092")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("replicas = 5"), "{printed}");
    assert!(printed.contains("broker-7:9092"), "{printed}");

    // An unknown key, a value out of range, a wrong type, a bad override.
    for (body, env, named) in [
        ("[aggregate]\nreplica = 5\n", None, "replica"),
        ("[aggregate]\nreplicas = 0\n", None, "aggregate.replicas"),
        ("[job]\nwindow_secs = \"sixty\"\n", None, "window_secs"),
        ("", Some(("ADCLICK_JOB__TOP_N", "0")), "job.top_n"),
        ("[nonsense]\nx = 1\n", None, "nonsense"),
    ] {
        std::fs::write(&file, body).unwrap();
        let env: Vec<(&str, &str)> = env.into_iter().collect();
        let out = check(&file, &env);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{body:?} must be rejected: {}",
            text(&out)
        );
        assert!(
            text(&out).contains(named),
            "{body:?}: the message names {named}: {}",
            text(&out)
        );
    }

    let out = check(&dir.join("missing.toml"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("does not exist"), "{}", text(&out));
}
