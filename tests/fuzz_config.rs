//! Property test of the config parser with a fixed budget (run in every CI pass): arbitrary
//! text, and TOML documents built from the real sections and keys with hostile values. Each
//! must give a config or an error naming the file, never a panic; a config that loads keeps
//! the promises its users rely on.

use mlckpt::image::compress::{self, Compression};
use mlckpt::tiers::config::{Config, ConfigError, MIN_INTERVAL};
use proptest::prelude::*;
use std::path::Path;

/// Cases per property: the three take about 2 s together in release on 2 busy cores.
const CASES: u32 = 20_000;

const KEYS: &[(&str, &[&str])] = &[
    ("job", &["name"]),
    ("storage", &["local", "global", "keep"]),
    ("interval", &["local", "partner", "global"]),
    (
        "image",
        &[
            "full_every",
            "write_tracking",
            "outside_peers",
            "compress",
            "compress_level",
        ],
    ),
    (
        "topology",
        &["test_mode", "nodes", "ranks_per_node", "partner_copy"],
    ),
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (-2i64..5).prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("1e-9".to_string()),
        Just("0.0005".to_string()),
        Just("nan".to_string()),
        Just("-inf".to_string()),
        Just("1e308".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        "[a-z./{}~$ \\-]{0,20}".prop_map(|s| format!("{s:?}")),
        Just("\"../../x\"".to_string()),
        Just("\"\\u0000\"".to_string()),
        Just("[1, 2]".to_string()),
        Just("{ a = 1 }".to_string()),
        Just("\"rsync -a {src}/ {host}:{dst}/\"".to_string()),
        Just("\"zstd\"".to_string()),
        Just("\"none\"".to_string()),
        (-2i64..25).prop_map(|n| n.to_string()),
    ]
}

/// A document of real sections and keys (sometimes repeated or misplaced) with `value`s.
fn document() -> impl Strategy<Value = String> {
    let line = (
        0..KEYS.len(),
        any::<prop::sample::Index>(),
        value(),
        0u8..10,
    )
        .prop_map(|(section, key, value, shape)| {
            let (name, keys) = KEYS[section];
            let key = keys[key.index(keys.len())];
            match shape {
                0 => format!("{key} = {value}\n"),
                1 => format!("{name}.{key} = {value}\n"),
                2 => format!("[{name}]\n{key} = {value}\n{key} = {value}\n"),
                3 => format!("[[{name}]]\n"),
                _ => format!("[{name}]\n{key} = {value}\n"),
            }
        });
    prop::collection::vec(line, 0..8).prop_map(|lines| lines.concat())
}

fn check(text: &str) {
    match Config::parse(text, Path::new("/nonexistent/dir/mlckpt.toml")) {
        Ok(c) => {
            assert!(c.storage.keep >= 1 && c.image.full_every >= 1);
            assert!(c.topology.nodes >= 1 && c.topology.ranks_per_node >= 1);
            for interval in [c.interval.local, c.interval.partner, c.interval.global] {
                assert!(
                    interval.is_zero() || interval >= MIN_INTERVAL,
                    "interval {interval:?} accepted from\n{text}"
                );
            }
            if let Some(name) = &c.job.name {
                assert!(
                    mlckpt::image::name::check_job_name(name).is_ok(),
                    "{name:?}"
                );
            }
            assert!(c.storage.local.is_absolute());
            if let Compression::Zstd { level } = c.image.compress {
                assert!(
                    (compress::MIN_LEVEL..=compress::MAX_LEVEL).contains(&level),
                    "zstd level {level} accepted from\n{text}"
                );
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains("mlckpt.toml"),
                "error without the file: {message}"
            );
            assert!(matches!(e, ConfigError::Invalid { .. }), "{e:?}");
        }
    }
}

/// `MLCKPT_FUZZ_CASES` overrides the budget for a longer hunt by hand.
fn cases() -> u32 {
    std::env::var("MLCKPT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_text_gives_a_config_or_an_error(text in "\\PC{0,300}") {
        check(&text);
    }

    #[test]
    fn arbitrary_bytes_as_text_give_a_config_or_an_error(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn real_keys_with_hostile_values_give_a_config_or_an_error(text in document()) {
        check(&text);
    }
}
