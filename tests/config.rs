//! Configuration: flag over environment over file over default, and every
//! invalid value refused with its key named. Runs the real binary with a
//! clean environment (`--check-config` prints the effective values and
//! where each came from).

use std::io::Write;
use std::process::{Command, Output};

/// Runs `presenced ARGS` with only `env` in its environment.
fn presenced(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn file(content: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(content.as_bytes()).unwrap();
    file
}

/// `key` → (value, source) from `--check-config` output.
fn effective(out: &Output) -> std::collections::HashMap<String, (String, String)> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (setting, source) = l.split_once(" # ").unwrap();
            let (key, value) = setting.split_once(" = ").unwrap();
            (
                key.trim().to_owned(),
                (
                    value.trim().trim_matches('"').to_owned(),
                    source.trim().to_owned(),
                ),
            )
        })
        .collect()
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let config = file(
        r#"
        retention = "1h"
        keepalive_interval = "7s"
        max_id_bytes = 100
        cors-allowed-origins = ["https://a.example", "https://b.example"]
        allow_unauthenticated_public = true
        token_key = "0123456789abcdef0123456789abcdef-secret"
        "#,
    );
    let path = config.path().to_str().unwrap();
    let out = presenced(
        &["--check-config", "--config", path, "--retention", "3h"],
        &[
            ("PRESENCE_RETENTION", "2h"),
            ("PRESENCE_KEEPALIVE_INTERVAL", "8s"),
        ],
    );
    let got = effective(&out);
    let expect = |key: &str, value: &str, source: &str| {
        assert_eq!(got[key], (value.to_owned(), source.to_owned()), "{key}");
    };
    expect("retention", "3h", "flag");
    expect(
        "keepalive_interval",
        "8s",
        "env PRESENCE_KEEPALIVE_INTERVAL",
    );
    expect("max_id_bytes", "100", "file");
    expect(
        "cors_allowed_origins",
        "https://a.example,https://b.example",
        "file",
    );
    expect("allow_unauthenticated_public", "true", "file");
    expect("min_interval", "1s", "default");
    expect("listen", "127.0.0.1:50051", "default");
    // Secrets are never printed.
    expect("token_key", "<redacted>", "file");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("0123456789abcdef0123456789abcdef"));

    // The file named by the environment works the same way.
    let got = effective(&presenced(
        &["--check-config"],
        &[("PRESENCE_CONFIG", path)],
    ));
    assert_eq!(got["retention"], ("1h".into(), "file".into()));
    // RUST_LOG is the log filter's environment variable.
    let got = effective(&presenced(&["--check-config"], &[("RUST_LOG", "debug")]));
    assert_eq!(got["log_filter"], ("debug".into(), "env RUST_LOG".into()));
}

#[test]
fn every_invalid_value_is_refused_naming_its_key() {
    struct Case {
        args: &'static [&'static str],
        env: &'static [(&'static str, &'static str)],
        file: Option<&'static str>,
        says: &'static [&'static str],
    }
    let cases = [
        Case {
            args: &[],
            env: &[],
            file: Some("retention = \"soon\""),
            says: &["retention", "soon"],
        },
        Case {
            args: &[],
            env: &[],
            file: Some("nope = 1"),
            says: &["unknown key `nope`"],
        },
        Case {
            args: &[],
            env: &[],
            file: Some("max_id_bytes = \"lots\""),
            says: &["max_id_bytes", "lots"],
        },
        Case {
            args: &[],
            env: &[],
            file: Some("allow_unauthenticated_public = 3"),
            says: &["allow_unauthenticated_public", "true or false"],
        },
        Case {
            args: &[],
            env: &[],
            file: Some("listen = [1, 2]"),
            says: &["listen"],
        },
        Case {
            args: &[],
            env: &[],
            file: Some("max_connection_age = { a = 1 }"),
            says: &["max_connection_age"],
        },
        Case {
            args: &[],
            env: &[],
            file: Some("retention = "),
            says: &["config file"],
        },
        Case {
            args: &[],
            env: &[],
            file: Some("config = \"other.toml\""),
            says: &["unknown key `config`"],
        },
        Case {
            args: &[],
            env: &[],
            file: Some("token_key = \"short\""),
            says: &["--token-key", "at least 32"],
        },
        Case {
            args: &[],
            env: &[("PRESENCE_KEEPALIVE_TIMEOUT", "abc")],
            file: None,
            says: &["--keepalive-timeout", "abc"],
        },
        Case {
            args: &[],
            env: &[("PRESENCE_LOG_FORMAT", "xml")],
            file: None,
            says: &["--log-format", "xml"],
        },
        Case {
            args: &["--listen", "nowhere"],
            env: &[],
            file: None,
            says: &["--listen", "nowhere"],
        },
        Case {
            args: &["--min-interval", "10m", "--max-interval", "1m"],
            env: &[],
            file: None,
            says: &["--min-interval", "--max-interval"],
        },
        Case {
            args: &["--log-filter", "presenced=loud"],
            env: &[],
            file: None,
            says: &["--log-filter"],
        },
        Case {
            args: &["--persist-interval", "0s"],
            env: &[],
            file: None,
            says: &["--persist-interval"],
        },
        Case {
            args: &["--max-connection-age", "0s"],
            env: &[],
            file: None,
            says: &["--max-connection-age"],
        },
        Case {
            args: &["--keepalive-interval", "0s"],
            env: &[],
            file: None,
            says: &["--keepalive-interval"],
        },
        Case {
            args: &["--config", "/nonexistent/presenced.toml"],
            env: &[],
            file: None,
            says: &["config file", "/nonexistent/presenced.toml"],
        },
        // What a start would refuse, --check-config refuses too.
        Case {
            args: &["--listen", "0.0.0.0:50051"],
            env: &[],
            file: None,
            says: &["non-loopback", "--allow-unauthenticated-public"],
        },
        Case {
            args: &["--data-dir", "/proc/presenced-cannot-be-here"],
            env: &[],
            file: None,
            says: &["--data-dir", "/proc/presenced-cannot-be-here"],
        },
        Case {
            args: &[
                "--tls-cert",
                "/nonexistent/cert.pem",
                "--tls-key",
                "/nonexistent/key.pem",
            ],
            env: &[],
            file: None,
            says: &["--tls-cert", "/nonexistent/cert.pem"],
        },
        Case {
            args: &["--store", "mongodb://db:27017"],
            env: &[],
            file: None,
            says: &["--store", "mongodb"],
        },
        Case {
            args: &[],
            env: &[("PRESENCE_STORE", "redis://h:1,h:2")],
            file: None,
            says: &["--store", "redis+cluster://"],
        },
        Case {
            args: &["--store", "redis://127.0.0.1:6379", "--data-dir", "/tmp"],
            env: &[],
            file: None,
            says: &["--data-dir", "Redis"],
        },
        Case {
            args: &[
                "--store",
                "redis://127.0.0.1:6379",
                "--store-key-prefix",
                "a{b}",
            ],
            env: &[],
            file: None,
            says: &["--store-key-prefix"],
        },
    ];
    for case in cases {
        let config = case.file.map(file);
        let mut args = vec!["--check-config"];
        if let Some(config) = &config {
            args.extend(["--config", config.path().to_str().unwrap()]);
        }
        args.extend(case.args);
        let out = presenced(&args, case.env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} {:?}: exit 2 for an invalid configuration; {stderr}",
            case.env
        );
        for needle in case.says {
            assert!(
                stderr.contains(needle),
                "{args:?} {:?}: {needle:?} not in {stderr}",
                case.file
            );
        }
    }
}

#[test]
fn a_start_with_an_invalid_configuration_exits_2_as_check_config_does() {
    // Not --check-config: the same validation stops a real start.
    for args in [
        &["--listen", "0.0.0.0:0"][..],
        &["--data-dir", "/proc/presenced-cannot-be-here"][..],
        &["--store", "redis://127.0.0.1:6379", "--data-dir", "/tmp"][..],
    ] {
        let out = presenced(args, &[]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A valid Redis configuration is checked without connecting to Redis
    // (nothing listens on port 1).
    let out = presenced(
        &[
            "--check-config",
            "--store",
            "redis://app:s3cret@127.0.0.1:1/3",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("store = \"redis://app:***@127.0.0.1:1/3\""),
        "{stdout}"
    );
    assert!(
        !stdout.contains("s3cret"),
        "the store's password is never shown"
    );
}

#[test]
fn help_lists_every_setting_with_its_environment_variable() {
    let out = presenced(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for (flag, env) in [
        ("--listen", "PRESENCE_LISTEN"),
        ("--metrics-listen", "PRESENCE_METRICS_LISTEN"),
        ("--log-format", "PRESENCE_LOG_FORMAT"),
        ("--log-filter", "RUST_LOG"),
        ("--keepalive-interval", "PRESENCE_KEEPALIVE_INTERVAL"),
        ("--max-connection-age", "PRESENCE_MAX_CONNECTION_AGE"),
        (
            "--max-connection-age-grace",
            "PRESENCE_MAX_CONNECTION_AGE_GRACE",
        ),
        (
            "--max-streams-per-connection",
            "PRESENCE_MAX_STREAMS_PER_CONNECTION",
        ),
        ("--data-dir", "PRESENCE_DATA_DIR"),
        ("--persist-interval", "PRESENCE_PERSIST_INTERVAL"),
        ("--config", "PRESENCE_CONFIG"),
    ] {
        assert!(help.contains(flag), "{flag}");
        assert!(help.contains(&format!("[env: {env}")), "{env}");
    }
    assert!(help.contains("Precedence: flag, then environment, then file, then default"));
}

#[test]
fn the_library_loader_applies_the_same_rules() {
    let config = file("retention = \"90m\"\nmax_connection_age = \"5m\"\n");
    let path = config.path().to_str().unwrap();
    let loaded =
        presenced::Config::load_from(["presenced", "--config", path, "--max-id-bytes", "42"])
            .unwrap();
    assert_eq!(
        *loaded.presence.retention,
        std::time::Duration::from_secs(90 * 60)
    );
    assert_eq!(
        loaded.connections.max_connection_age,
        Some(std::time::Duration::from_secs(300))
    );
    assert_eq!(loaded.limits.max_id_bytes, 42);
    let err = presenced::Config::load_from(["presenced", "--config", path, "--max-id-bytes", "0"])
        .unwrap_err();
    assert!(err.to_string().contains("--max-id-bytes"), "{err}");
}

#[test]
fn debug_output_of_the_configuration_never_shows_a_token_key() {
    let config = presenced::Config::load_from([
        "presenced",
        "--token-key",
        "a very secret token key of at least 32 bytes",
    ])
    .unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains("a very secret token key"), "{shown}");
    assert!(shown.contains("redacted"));
}
