//! `mlckpt list --job J`: generations × ranks × tiers of a job and its recovery line, from
//! real images of two ranks (test mode, 2 nodes, a global tier) and generation records
//! written beside them, as a coordinated job's supervisors write them. A damaged copy is
//! shown as such; a generation stays usable while each rank has a valid copy on some
//! tier, and the recovery line falls back to the one before once a rank has none.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use mlckpt::image::format::TierKind;
use mlckpt::tiers::generation::{self, GenerationRecord};

/// Images of ranks 0 and 1 (independent ranks: `[coordination] mode = "off"`), numbered
/// alike so that seq N is "generation N": 1 on local + global, 2 on local + partner, 3 on
/// local only. Full images, so no copy brings parents along.
fn two_ranks(h: &Harness) {
    h.set_config(&format!(
        "global = '{}'\nkeep = 5\n[image]\nfull_every = 1\n[topology]\ntest_mode = true\n\
         nodes = 2\n[coordination]\nmode = \"off\"\n",
        h.dir.path().join("global").display()
    ));
    let prog = Prog::c("memory", &["8", "3000"]);
    let mut runs: Vec<Proc> = ["0", "1"]
        .iter()
        .map(|rank| h.run_with(&["--rank", rank], &[], &prog))
        .collect();
    for run in &mut runs {
        run.wait_for_ticks(2);
        let pid = run.target_pid();
        assert_eq!(checkpoint_to(h, pid, "global", &[]).0, 1);
        assert_eq!(checkpoint_to(h, pid, "partner", &[]).0, 2);
        assert_eq!(checkpoint_to(h, pid, "local", &["--kill"]).0, 3);
    }
    for run in runs {
        run.finish(CMD_TIMEOUT).expect_code(KILLED);
    }
}

fn list(h: &Harness, json: bool) -> Finished {
    let config = h.config.to_str().unwrap();
    let mut args = vec!["list", "--config", config, "--job", &h.job];
    if json {
        args.extend(["--json", "--generations"]);
    }
    h.mlckpt(&args).expect_code(0)
}

fn list_json(h: &Harness) -> serde_json::Value {
    let res = list(h, true);
    serde_json::from_str(&res.stdout)
        .unwrap_or_else(|e| panic!("list --job --json: not JSON: {e}\n{}", res.describe()))
}

/// (tier, rank, seq) -> path of every image row of `list --job --json`.
fn images(report: &serde_json::Value) -> Vec<(TierKind, u64, u64, PathBuf)> {
    let rows = report["images"].as_array().expect("images");
    rows.iter()
        .map(|r| {
            let tier = r["tier"].as_str().unwrap().parse().unwrap();
            let path = PathBuf::from(r["path"].as_str().unwrap());
            (
                tier,
                r["rank"].as_u64().unwrap(),
                r["seq"].as_u64().unwrap(),
                path,
            )
        })
        .collect()
}

fn image(report: &serde_json::Value, tier: TierKind, rank: u64, seq: u64) -> PathBuf {
    let found = images(report)
        .into_iter()
        .find(|i| (i.0, i.1, i.2) == (tier, rank, seq));
    found
        .unwrap_or_else(|| panic!("no {tier} image of rank {rank} seq {seq}: {report:#}"))
        .3
}

/// Marks generation `g` complete on `tier` for both ranks, beside their images.
fn mark_complete(report: &serde_json::Value, tier: TierKind, g: u64) {
    for rank in 0..2 {
        let image = image(report, tier, rank, g);
        let record = GenerationRecord {
            generation: g,
            ranks: 2,
            tier,
            committed_unix_ms: 1,
            skew_ms: 0.25,
        };
        generation::write(image.parent().unwrap(), &record).unwrap();
    }
}

/// The table line of generation `g` (`   g  cells...  COMPLETE  USABLE`).
fn table_line(stdout: &str, g: u64) -> Vec<String> {
    let line = stdout
        .lines()
        .skip_while(|l| !l.starts_with("GEN  RANK0  RANK1  COMPLETE"))
        .skip(1)
        .find(|l| l.split_whitespace().next() == Some(&g.to_string()))
        .unwrap_or_else(|| panic!("no line for generation {g}\n{stdout}"));
    line.split_whitespace().map(str::to_string).collect()
}

/// (generation, complete_on, usable, recovery_line, rank 1's copies as (tier, valid)).
fn generations(report: &serde_json::Value) -> Vec<(u64, String, bool, bool, String)> {
    let gens = report["generations"].as_array().expect("generations");
    gens.iter()
        .map(|g| {
            let complete: Vec<&str> = g["complete_on"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap())
                .collect();
            let rank1 = &g["ranks"][1];
            assert_eq!(rank1["rank"], 1);
            let copies: Vec<String> = rank1["copies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| format!("{}:{}", c["tier"].as_str().unwrap(), c["valid"]))
                .collect();
            (
                g["generation"].as_u64().unwrap(),
                complete.join(","),
                g["usable"].as_bool().unwrap(),
                g["recovery_line"].as_bool().unwrap(),
                copies.join(" "),
            )
        })
        .collect()
}

fn pages(image: &Path) -> PathBuf {
    image.join("pages.bin")
}

#[test]
fn list_job_shows_generations_ranks_tiers_and_the_recovery_line() {
    let h = Harness::new("listgen");
    two_ranks(&h);
    let report = list_json(&h);
    assert_eq!(images(&report).len(), 2 * 5, "{report:#}");
    mark_complete(&report, TierKind::Local, 1);
    mark_complete(&report, TierKind::Global, 1);
    mark_complete(&report, TierKind::Local, 2);
    mark_complete(&report, TierKind::Partner, 2);

    // Without --job: the plain array of images, records not among them.
    let config = h.config.to_str().unwrap();
    let plain = h
        .mlckpt(&["list", "--config", config, "--json"])
        .expect_code(0);
    let plain: serde_json::Value = serde_json::from_str(&plain.stdout).unwrap();
    assert_eq!(plain.as_array().map(Vec::len), Some(10), "{plain:#}");

    // Everything whole: generation 3 is in flight (no record), 2 is the recovery line.
    let res = list(&h, false);
    let out = &res.stdout;
    assert!(
        out.contains("job listgen: 2 rank(s), 3 generation(s)"),
        "{out}"
    );
    assert_eq!(
        table_line(out, 3),
        [
            "3", "L", "L", "-", "no:", "not", "complete", "on", "any", "tier"
        ]
    );
    assert_eq!(
        table_line(out, 2),
        [
            "2",
            "LP",
            "LP",
            "local,partner",
            "yes",
            "<-",
            "recovery",
            "line"
        ]
    );
    assert_eq!(table_line(out, 1), ["1", "LG", "LG", "local,global", "yes"]);
    assert!(out.contains("recovery line: generation 2"), "{out}");

    // Rank 1's local copy of generation 2 is damaged: its partner copy still makes 2 usable.
    let report = list_json(&h);
    damage(
        &pages(&image(&report, TierKind::Local, 1, 2)),
        Damage::FlipBit,
    );
    let report = list_json(&h);
    assert_eq!(
        (report["job"].as_str(), report["ranks"].as_u64()),
        (Some("listgen"), Some(2))
    );
    assert_eq!(report["recovery_line"], 2, "{report:#}");
    let all = |s: &str| s.to_string();
    assert_eq!(
        generations(&report),
        [
            (3, all(""), false, false, all("local:true")),
            (
                2,
                all("local,partner"),
                true,
                true,
                all("local:false partner:true")
            ),
            (
                1,
                all("local,global"),
                true,
                false,
                all("local:true global:true")
            ),
        ]
    );
    let out = list(&h, false).stdout;
    assert_eq!(
        table_line(&out, 2)[..4],
        ["2", "LP", "l!P", "local,partner"]
    );
    assert!(out.contains("recovery line: generation 2"), "{out}");

    // Its partner copy too: no valid copy of rank 1 anywhere, so every rank falls back to 1.
    damage(
        &pages(&image(&report, TierKind::Partner, 1, 2)),
        Damage::FlipBit,
    );
    let out = list(&h, false).stdout;
    assert_eq!(
        table_line(&out, 2),
        [
            "2",
            "LP",
            "l!p!",
            "local,partner",
            "no:",
            "rank",
            "1",
            "has",
            "no",
            "valid",
            "copy"
        ]
    );
    assert_eq!(
        table_line(&out, 1),
        [
            "1",
            "LG",
            "LG",
            "local,global",
            "yes",
            "<-",
            "recovery",
            "line"
        ]
    );
    assert!(out.contains("recovery line: generation 1"), "{out}");
    let report = list_json(&h);
    assert_eq!(report["recovery_line"], 1, "{report:#}");
    let rows: Vec<_> = generations(&report)
        .into_iter()
        .map(|g| (g.0, g.2, g.3))
        .collect();
    assert_eq!(
        rows,
        [(3, false, false), (2, false, false), (1, true, true)]
    );

    // `forget` takes the records with the images: a new run's generation 1 is not this one.
    h.mlckpt(&["forget", "--config", config, "--job", &h.job])
        .expect_code(0);
    let report = list_json(&h);
    assert_eq!(report["generations"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["recovery_line"], serde_json::Value::Null);
}
