//! Property tests over the manifest parser and validator, with a fixed budget so they run in
//! every CI pass: arbitrary bytes, byte-level damage to a valid manifest, and field-level
//! mutations of it (numbers at their extremes, wrong types, removed and doubled elements).
//! Nothing may panic; a manifest that passes must keep the promises the restore relies on.

use super::tests::sample;
use super::*;
use crate::image::reader::{ReadError, parse_manifest};
use proptest::prelude::*;
use serde_json::Value;
use std::path::Path;

/// Cases per property: the three take about 10 s together in release on 2 busy cores.
const CASES: u32 = 10_000;

/// `MLCKPT_FUZZ_CASES` overrides the budget for a longer hunt by hand.
fn config() -> ProptestConfig {
    let cases = std::env::var("MLCKPT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES);
    ProptestConfig {
        cases,
        // A failure is shrunk to a small input, within the same budget.
        max_shrink_iters: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn sample_json() -> Value {
    serde_json::to_value(sample()).expect("the sample serialises")
}

/// Every path to a value in `v` (object keys and array indices), the root excluded.
fn paths(v: &Value, prefix: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    let children: Vec<(PathStep, &Value)> = match v {
        Value::Object(map) => map
            .iter()
            .map(|(k, c)| (PathStep::Key(k.clone()), c))
            .collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, c)| (PathStep::Index(i), c))
            .collect(),
        _ => Vec::new(),
    };
    for (step, child) in children {
        prefix.push(step);
        out.push(prefix.clone());
        paths(child, prefix, out);
        prefix.pop();
    }
}

#[derive(Debug, Clone, PartialEq)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn at<'a>(v: &'a mut Value, path: &[PathStep]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, step| match step {
        PathStep::Key(k) => v.get_mut(k.as_str()),
        PathStep::Index(i) => v.get_mut(*i),
    })
}

/// A change to one value of the manifest, chosen by the value's type so that most changes
/// still parse and reach the validator (a wrong type is the parser's job, tried rarely).
#[derive(Debug, Clone)]
struct Mutation {
    number: Value,
    text: String,
    words: Vec<u64>,
    wild: Value,
    /// Picks among the changes that fit the value: which one, and sometimes `wild` instead.
    selector: u8,
}

/// Numbers that break assumptions: extremes, negatives, page-size edges, small ids.
fn hostile_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-3i64..70).prop_map(Value::from),
        prop_oneof![
            Just(4095i64),
            Just(4096),
            Just(8192),
            Just(i64::from(i32::MAX)),
            Just(i64::from(i32::MIN)),
            Just(0x7fff_ffff_f000),
            Just(1003),
            Just(1000),
        ]
        .prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        any::<f64>().prop_map(Value::from),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let wild = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        hostile_number(),
        "[a-z]{0,4}".prop_map(Value::from),
        prop::collection::vec(hostile_number(), 0..4).prop_map(Value::Array),
    ];
    (
        hostile_number(),
        prop_oneof![
            "[a-zA-Z0-9./\\x00 -]{0,16}",
            Just("../../x".to_string()),
            Just("/".to_string()),
            Just(String::new()),
            Just("AAEC/w==".to_string()),
        ],
        prop::collection::vec(prop_oneof![Just(0u64), 0u64..64, any::<u64>()], 0..600),
        wild,
        any::<u8>(),
    )
        .prop_map(|(number, text, words, wild, selector)| Mutation {
            number,
            text,
            words,
            wild,
            selector,
        })
}

fn apply(v: &mut Value, path: &[PathStep], m: Mutation) {
    let Some(target) = at(v, path) else { return };
    if m.selector.is_multiple_of(16) {
        *target = m.wild;
        return;
    }
    match target {
        Value::Number(_) => *target = m.number,
        Value::String(s) => *s = m.text,
        Value::Bool(b) => *b = !*b,
        Value::Array(items) => {
            let i = usize::from(m.selector) % (items.len() + 1);
            match (m.selector / 16) % 4 {
                0 if i < items.len() => {
                    items.remove(i);
                }
                1 if i < items.len() => {
                    let copy = items[i].clone();
                    items.insert(i, copy);
                }
                2 => {
                    let mut words = m.words;
                    // Half the time shaped like an auxv: pairs ending with AT_NULL.
                    if m.selector & 1 == 1 {
                        words.truncate(words.len() & !1);
                        words.extend([0, 0]);
                    }
                    *items = words.into_iter().map(Value::from).collect();
                }
                _ => items.clear(),
            }
        }
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            if !keys.is_empty() {
                map.remove(&keys[usize::from(m.selector) % keys.len()]);
            }
        }
        Value::Null => *target = m.number,
    }
}

/// What the restore relies on once a manifest passed: the lookups it makes succeed.
fn promises_hold(m: &Manifest) {
    let parents: BTreeSet<u64> = m.parents.iter().map(|p| p.seq).collect();
    for p in m.processes() {
        assert!(!p.threads.is_empty());
        assert_eq!(p.threads[0].tid, p.process.pid);
        assert!(p.process.auxv.len() <= MAX_AUXV_WORDS);
        for r in p.regions {
            assert!(r.start < r.end && r.end <= TASK_TOP);
            for run in &r.runs {
                assert!(run.len > 0 && run.addr >= r.start && run.addr + run.len <= r.end);
                match run.image {
                    Some(seq) => assert!(parents.contains(&seq)),
                    None => assert!(run.offset + run.len <= m.pages_bytes),
                }
            }
        }
        for fd in p.fds {
            assert!(fd.fd >= 0);
            if let Some(id) = fd.object {
                assert!(m.objects.iter().any(|o| o.id == id));
            }
        }
    }
    assert!(crate::image::name::check_job_name(&m.job).is_ok());
}

fn parse(bytes: &[u8]) -> Result<Manifest, ReadError> {
    parse_manifest(Path::new("manifest.json"), bytes)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(m) = parse(&bytes) {
            promises_hold(&m);
        }
    }

    #[test]
    fn damaged_manifest_bytes_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = serde_json::to_vec(&sample_json()).unwrap();
        for (index, byte) in edits {
            let i = index.index(bytes.len());
            bytes[i] = byte;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        if let Ok(m) = parse(&bytes) {
            promises_hold(&m);
        }
    }

    #[test]
    fn mutated_manifests_are_refused_or_keep_their_promises(
        picks in prop::collection::vec((any::<prop::sample::Index>(), mutation()), 1..5),
    ) {
        let mut v = sample_json();
        for (pick, m) in picks {
            let mut all = Vec::new();
            paths(&v, &mut Vec::new(), &mut all);
            if all.is_empty() {
                break;
            }
            let path = all[pick.index(all.len())].clone();
            apply(&mut v, &path, m);
        }
        let bytes = serde_json::to_vec(&v).unwrap();
        match parse(&bytes) {
            Ok(m) => { eprintln!("PASSED"); promises_hold(&m) },
            // Messages are built for every refusal: they must not panic either.
            Err(e) => { eprintln!("REFUSED {}", crate::error_chain(&e).lines().next().unwrap_or_default().chars().take(150).collect::<String>()); prop_assert!(!crate::error_chain(&e).is_empty()) },
        }
    }
}
