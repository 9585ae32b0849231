//! Offline evaluation and warm start (issue 15): exact estimates on hand-made logs in every
//! format banditd reads, bad input named by line and field, unbiasedness and interval
//! coverage over many seeded simulated logs, and a warm-started model's lower regret.

use std::path::Path;

use banditd::{
    Config,
    config::{ModelConfig, StorageConfig},
    engine::Engine,
    harness::model_for_env,
    learner::Trainer,
    offline::{
        estimate::{self, Estimate},
        evaluate::{self, Candidate, CandidatePolicy, MissingPropensity, Options},
        logs::{self, Log, LoggedDecision, ObdOptions},
        replay::{self, Online, RewardModel},
        warm::{self, TrainOptions, Weighting},
    },
    policy::Inputs,
    sim::{Environment, WheelBandit},
    storage::{
        self, Candidate as LogCandidate, ClosedRecord, DecisionRecord, ExampleRecord, How,
        LoggedCandidate, RewardRecord, Storage, checkpoint,
    },
};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/obd_tiny.csv");

/// One hand-made decision of the embedded default's `wheel` model (arms "0".."4").
struct Made {
    chosen: usize,
    propensity: Option<f64>,
    reward: Option<f64>,
}

/// Writes `made` into a real log under `dir` through the log writer, as the server does:
/// each decision, its reward (with the training example) and its window's close.
fn write_log(dir: &Path, made: &[Made]) {
    let storage = Storage::open(&StorageConfig {
        data_dir: dir.to_owned(),
        ..StorageConfig::default()
    })
    .unwrap();
    let next = storage.recover().unwrap().summary.next_lsn;
    let (log, mut writer) = storage.start_writer(next).unwrap();
    for (i, m) in made.iter().enumerate() {
        let context = vec![i as f32 * 0.1, -0.2];
        let id = format!("d{i}");
        log.decision(DecisionRecord {
            model: "wheel".into(),
            decision_id: id.clone(),
            decided_ms: 1_000 + i as u64,
            context: context.clone(),
            candidates: (0..5)
                .map(|a| LogCandidate {
                    id: a.to_string(),
                    features: Vec::new(),
                })
                .collect(),
            chosen: m.chosen as u32,
            scores: vec![0.0; 5],
            model_version: 1,
            head: m.chosen as u32,
            propensity: m.propensity,
            request_hash: i as u64,
            holdout: false,
        })
        .unwrap();
        if let Some(reward) = m.reward {
            let ack = log
                .reward(RewardRecord {
                    model: "wheel".into(),
                    decision_id: id.clone(),
                    at_ms: 2_000 + i as u64,
                    regret: None,
                    example: Some(ExampleRecord {
                        input: context,
                        head: m.chosen as u32,
                        reward,
                    }),
                })
                .unwrap();
            ack.blocking_recv().unwrap().unwrap();
            log.closed(ClosedRecord {
                model: "wheel".into(),
                decision_id: id,
                at_ms: 3_000 + i as u64,
                how: How::Rewarded as i32,
                example: None,
            })
            .unwrap();
        }
    }
    log.flush().unwrap().blocking_recv().unwrap().unwrap();
    log.shutdown();
    writer.shutdown();
}

fn wheel_model() -> ModelConfig {
    Config::embedded_default()
        .models
        .into_iter()
        .find(|m| m.name == "wheel")
        .unwrap()
}

fn candidate(spec: &str) -> Candidate {
    evaluate::parse_candidate(spec, &wheel_model(), &[]).unwrap()
}

fn arm_mean() -> Options {
    Options {
        reward_model: RewardModel::ArmMean,
        ..Options::default()
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(1.0)
}

/// The hand-made log of the exact-value tests: three rewarded decisions and one open.
fn hand_made() -> Vec<Made> {
    vec![
        Made {
            chosen: 0,
            propensity: Some(0.5),
            reward: Some(1.0),
        },
        Made {
            chosen: 4,
            propensity: Some(0.25),
            reward: Some(2.0),
        },
        Made {
            chosen: 1,
            propensity: Some(0.2),
            reward: Some(0.0),
        },
        Made {
            chosen: 2,
            propensity: Some(0.5),
            reward: None,
        },
    ]
}

/// The uniform policy on the hand-made log, by hand: weights 0.2/μ = 0.4, 0.8, 1; IPS
/// (0.4 + 1.6 + 0)/3; SNIPS 2/2.2; arm-mean predictions before each decision 0 | arm 0: 1 |
/// arm 0: 1, arm 4: 2, so DM terms 0, 0.2, 0.6 and DR terms 0.4, 0.2 + 0.8·2, 0.6: 2.8/3.
fn check_hand_made(report: &evaluate::Report) {
    assert_eq!(report.decisions, 3);
    assert_eq!(report.unrewarded, 1);
    assert_eq!(report.missing_propensity.missing, 0);
    assert!(close(report.logged.value, 1.0));
    let e = &report.policies[0].estimates;
    assert!(close(e.ips.value, 2.0 / 3.0), "{}", e.ips.value);
    assert!(close(e.snips.value, 2.0 / 2.2), "{}", e.snips.value);
    assert!(close(e.dm.value, 0.8 / 3.0), "{}", e.dm.value);
    assert!(close(e.dr.value, 2.8 / 3.0), "{}", e.dr.value);
    assert!(close(
        e.effective_sample_size,
        2.2 * 2.2 / (0.16 + 0.64 + 1.0)
    ));
}

/// A server's data directory and its export give the same decisions and the same exact
/// estimates.
#[test]
fn data_dir_and_export_give_exact_estimates() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &hand_made());
    let log = logs::read_data_dir(dir.path(), None).unwrap();
    assert_eq!(log.model.as_deref(), Some("wheel"));
    let report = evaluate::evaluate(
        &log,
        "dir",
        &wheel_model(),
        &[candidate("uniform")],
        &arm_mean(),
    )
    .unwrap();
    check_hand_made(&report);

    let export = dir.path().join("decisions.jsonl");
    let mut out = std::fs::File::create(&export).unwrap();
    storage::export(dir.path(), &[], &mut out).unwrap();
    let exported = logs::read_export(&export, None).unwrap();
    let strip = |l: &Log| -> Vec<(usize, Option<f64>, f64)> {
        l.decisions
            .iter()
            .map(|d| (d.chosen, d.propensity, d.reward))
            .collect()
    };
    assert_eq!(strip(&exported), strip(&log));
    let report = evaluate::evaluate(
        &exported,
        "export",
        &wheel_model(),
        &[candidate("uniform")],
        &arm_mean(),
    )
    .unwrap();
    check_hand_made(&report);
}

/// The Open Bandit Dataset fixture: 12 rows, 4 items, context = one-hot of two categorical
/// user features (3 + 2 values) and 4 affinities. Uniform's weights 0.25/μ are 1 for
/// μ = 0.25, 0.5 for 0.5, 2 for 0.125; the clicks are on rows with μ = 0.25, 0.5, 0.125,
/// 0.25: IPS (1 + 0.5 + 2 + 1)/12, SNIPS 4.5/12.5.
#[test]
fn open_bandit_fixture_gives_exact_estimates() {
    let log = logs::read_obd(Path::new(FIXTURE), ObdOptions::default()).unwrap();
    assert_eq!(log.decisions.len(), 12);
    assert_eq!(log.arms, ["0", "1", "2", "3"]);
    assert_eq!(log.decisions[0].context.len(), 3 + 2 + 4);
    // Row 0: user_feature_0 is the second of its sorted values, user_feature_1 the first.
    assert_eq!(
        log.decisions[0].context,
        [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    );
    let mut model = ModelConfig::new("obd", banditd::config::ModelKind::FixedArms, 9);
    model.arms = log.arms.clone();
    let uniform = evaluate::parse_candidate("uniform", &model, &[]).unwrap();
    let report = evaluate::evaluate(&log, "obd", &model, &[uniform], &arm_mean()).unwrap();
    let e = &report.policies[0].estimates;
    assert!(close(e.ips.value, 4.5 / 12.0));
    assert!(close(e.snips.value, 4.5 / 12.5));
    assert!(close(report.logged.value, 4.0 / 12.0));

    let first = logs::read_obd(
        Path::new(FIXTURE),
        ObdOptions {
            position: Some(1),
            items: Some(4),
        },
    )
    .unwrap();
    assert_eq!(first.decisions.len(), 4);
    let at: Vec<&str> = first.decisions.iter().map(|d| d.at.as_str()).collect();
    assert_eq!(at, ["line 2", "line 5", "line 8", "line 11"]);
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Every kind of bad input is an error naming the line (or decision) and the field.
#[test]
fn bad_input_is_named_by_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("log");
    write_log(&source, &hand_made());
    let export = dir.path().join("good.jsonl");
    storage::export(&source, &[], &mut std::fs::File::create(&export).unwrap()).unwrap();
    let good = std::fs::read_to_string(&export).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    assert_eq!(lines.len(), 4);

    // A truncated file: the last line cut in the middle.
    let cut = format!(
        "{}\n{}\n{}",
        lines[0],
        lines[1],
        &lines[2][..lines[2].len() / 2]
    );
    let err = logs::read_export(&write(dir.path(), "cut.jsonl", &cut), None).unwrap_err();
    assert_eq!(
        (err.at.as_str(), err.field.as_str()),
        ("line 3", "json"),
        "{err}"
    );
    assert!(err.to_string().contains("truncated"), "{err}");

    // A zero propensity, and one above 1.
    for bad in ["0.0", "1.5"] {
        let text = good.replacen("\"propensity\":0.25", &format!("\"propensity\":{bad}"), 1);
        let err = logs::read_export(&write(dir.path(), "p.jsonl", &text), None).unwrap_err();
        assert_eq!(
            (err.at.as_str(), err.field.as_str()),
            ("line 2", "propensity"),
            "{err}"
        );
    }

    // A chosen arm that is not among the candidates.
    let text = good.replacen("\"arm_id\":\"4\"", "\"arm_id\":\"7\"", 1);
    let err = logs::read_export(&write(dir.path(), "arm.jsonl", &text), None).unwrap_err();
    assert_eq!(
        (err.at.as_str(), err.field.as_str()),
        ("line 2", "arm_id"),
        "{err}"
    );

    // A candidate the model does not have.
    let text = good.replacen("{\"id\":\"3\"}", "{\"id\":\"9\"}", 1);
    let log = logs::read_export(&write(dir.path(), "unknown.jsonl", &text), None).unwrap();
    let err = evaluate::evaluate(
        &log,
        "x",
        &wheel_model(),
        &[candidate("uniform")],
        &arm_mean(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("line 1: candidates[3].id"), "{err}");

    // A missing propensity: refused, naming it and the share; or imputed 1/n and counted.
    let text = good.replacen(",\"propensity\":0.25", "", 1);
    let log = logs::read_export(&write(dir.path(), "missing.jsonl", &text), None).unwrap();
    let err = evaluate::evaluate(
        &log,
        "x",
        &wheel_model(),
        &[candidate("uniform")],
        &arm_mean(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("line 2: propensity: missing (1 of 3"),
        "{err}"
    );
    let imputed = Options {
        missing: MissingPropensity::Uniform,
        ..arm_mean()
    };
    let report =
        evaluate::evaluate(&log, "x", &wheel_model(), &[candidate("uniform")], &imputed).unwrap();
    assert_eq!(report.missing_propensity.missing, 1);
    assert_eq!(report.missing_propensity.total, 3);
    // With 1/5 imputed for the 4th arm's decision its weight is 1: IPS (0.4 + 2 + 0)/3.
    assert!(close(report.policies[0].estimates.ips.value, 2.4 / 3.0));

    // Inverse-propensity weighting needs every propensity: the warm start names the first
    // decision without one and leaves the data directory untouched.
    let target = dir.path().join("warm");
    let err = warm::train(
        &wheel_model(),
        &log,
        &target,
        TrainOptions {
            epochs: 1,
            weighting: Weighting::Ips { max_repeat: 20 },
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("line 2: propensity: missing"), "{err}");
    assert!(!target.exists());

    // Candidates: an unknown policy, a setting that does not exist, a model of another shape.
    let defaults = Config::embedded_default().models;
    for (spec, want) in [
        ("bogus", "candidate \"bogus\": "),
        (
            "greedy no_such_setting=1",
            "candidate \"greedy no_such_setting=1\": ",
        ),
        ("model:items", "takes other inputs or arms"),
        ("model:nope", "no model \"nope\""),
    ] {
        let err = evaluate::parse_candidate(spec, &wheel_model(), &defaults)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{spec}: {err}");
    }
    assert!(
        evaluate::parse_candidate("model:wheel epsilon=0.3", &wheel_model(), &defaults).is_ok()
    );

    // CSVs: wrong columns, a short row, a bad item, a zero propensity.
    let fixture = std::fs::read_to_string(FIXTURE).unwrap();
    let short: String = fixture.lines().take(3).collect::<Vec<_>>().join("\n");
    let short = format!("{}\n{}", short, &fixture.lines().nth(3).unwrap()[..30]);
    let cases = [
        (
            "cols.csv",
            fixture.replacen("propensity_score", "pscore", 1),
            ("header", "propensity_score"),
        ),
        ("short.csv", short, ("line 4", "fields")),
        (
            "item.csv",
            fixture.replacen(",0,1,0,0.25,", ",x,1,0,0.25,", 1),
            ("line 2", "item_id"),
        ),
        (
            "zero.csv",
            fixture.replacen(",0,1,0,0.25,", ",0,1,0,0,", 1),
            ("line 2", "propensity_score"),
        ),
    ];
    for (name, text, want) in cases {
        let err =
            logs::read_obd(&write(dir.path(), name, &text), ObdOptions::default()).unwrap_err();
        assert_eq!((err.at.as_str(), err.field.as_str()), want, "{name}: {err}");
    }
    let err = logs::read_obd(
        Path::new(FIXTURE),
        ObdOptions {
            items: Some(3),
            position: None,
        },
    )
    .unwrap_err();
    assert_eq!(
        (err.at.as_str(), err.field.as_str()),
        ("line 4", "item_id"),
        "{err}"
    );
}

/// A skewed, context-dependent logging policy on the wheel: arm 4 or arm 0 (by the
/// context's first coordinate) with probability 0.6, the others 0.1 each.
fn logging_probs(context: &[f32]) -> [f64; 5] {
    let mut p = [0.1; 5];
    p[if context[0] > 0.0 { 4 } else { 0 }] = 0.6;
    p
}

/// A target policy unlike the logging one: half on the arm of the context's quadrant by the
/// second coordinate, the rest spread.
fn target_probs(context: &[f32]) -> Vec<f64> {
    let mut p = vec![0.125; 5];
    p[if context[1] > 0.0 { 1 } else { 3 }] = 0.5;
    p
}

fn draw(rng: &mut Xoshiro256PlusPlus, p: &[f64]) -> usize {
    let u: f64 = rng.random();
    let mut acc = 0.0;
    for (i, &q) in p.iter().enumerate() {
        acc += q;
        if u < acc {
            return i;
        }
    }
    p.len() - 1
}

/// A logged wheel run of `rounds` decisions by `logging`, with the target's true value on
/// those contexts (its expected reward averaged over the rounds).
fn simulated_log(
    seed: u64,
    rounds: usize,
    logging: impl Fn(&[f32]) -> [f64; 5],
) -> (Log, Vec<Vec<f64>>, f64) {
    let mut env = WheelBandit::new(0.5, seed).unwrap();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0xabcd);
    let mut log = Log::default();
    let mut targets = Vec::new();
    let mut truth = 0.0;
    for t in 0..rounds {
        let round = env.next_round();
        let mu = logging(&round.context);
        let a = draw(&mut rng, &mu);
        let target = target_probs(&round.context);
        truth += target
            .iter()
            .zip(&round.expected)
            .map(|(p, e)| p * e)
            .sum::<f64>();
        log.decisions.push(LoggedDecision {
            at: format!("round {t}"),
            context: round.context.clone(),
            candidates: round
                .candidates
                .iter()
                .map(|c| LoggedCandidate {
                    id: c.id.clone(),
                    features: Vec::new(),
                })
                .collect(),
            chosen: a,
            propensity: Some(mu[a]),
            reward: round.rewards[a],
        });
        targets.push(target);
    }
    (log, targets, truth / rounds as f64)
}

/// Over 400 seeded logs of a skewed logging policy, IPS and DR (arm-mean reward model) are
/// unbiased for a different target policy's true value on the logged contexts (their mean
/// error is within three standard errors of that mean), and their 95 % intervals cover the
/// truth at about their nominal rate.
#[test]
fn ips_and_dr_are_unbiased_and_cover() {
    let logs = 400;
    let mut errors = [Vec::new(), Vec::new(), Vec::new()];
    let mut covered = [0usize; 3];
    let model = wheel_model();
    for seed in 0..logs {
        let (log, targets, truth) = simulated_log(seed, 400, logging_probs);
        let prepared = replay::prepare(&model, &log).unwrap();
        let predicted =
            replay::predictions(&model, &log, &prepared, &RewardModel::ArmMean).unwrap();
        let rounds: Vec<estimate::Round> = log
            .decisions
            .iter()
            .zip(targets)
            .zip(predicted)
            .map(|((d, target), predicted)| estimate::Round {
                reward: d.reward,
                logging: d.propensity.unwrap(),
                target,
                predicted,
                chosen: d.chosen,
            })
            .collect();
        let e = estimate::estimate(&rounds);
        for (k, est) in [e.ips, e.dr, e.snips].iter().enumerate() {
            errors[k].push(est.value - truth);
            covered[k] += usize::from(est.covers(truth));
        }
    }
    for (k, name) in ["IPS", "DR", "SNIPS"].iter().enumerate() {
        let summary = Estimate::mean_of(&errors[k]);
        let coverage = covered[k] as f64 / logs as f64;
        eprintln!(
            "{name}: mean error {:.4} ± {:.4}, coverage {coverage:.3}",
            summary.value, summary.se
        );
        if k < 2 {
            assert!(
                summary.value.abs() < 3.0 * summary.se,
                "{name} is biased: mean error {} with standard error {}",
                summary.value,
                summary.se
            );
        }
        // Binomial(400, 0.95) has a standard deviation of 1.1 points.
        assert!(
            (0.90..=0.99).contains(&coverage),
            "{name} coverage {coverage}"
        );
    }
}

/// A replayed policy's probabilities are a distribution with no zero (importance weights
/// stay finite), exact for the baselines: epsilon-greedy puts 1 − ε + ε/n on one arm and
/// ε/n on every other.
#[test]
fn replayed_probabilities_are_distributions() {
    let (log, _, _) = simulated_log(7, 300, |_| [0.2; 5]);
    let model = wheel_model();
    let prepared = replay::prepare(&model, &log).unwrap();
    for spec in ["epsilon_greedy epsilon=0.2", "neural_linear", "uniform"] {
        let CandidatePolicy::Replayed(model) = candidate(spec).policy else {
            panic!("{spec} is replayed");
        };
        let probs = replay::replay(&model, &prepared, 50).unwrap();
        assert_eq!(probs.len(), 300);
        for p in &probs {
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{spec}: {p:?}");
            assert!(p.iter().all(|&q| q > 0.0), "{spec}: {p:?}");
        }
        if spec.starts_with("epsilon") {
            for p in &probs {
                let greedy = p.iter().filter(|&&q| close(q, 0.8 + 0.04)).count();
                let rest = p.iter().filter(|&&q| close(q, 0.04)).count();
                assert_eq!((greedy, rest), (1, 4), "{p:?}");
            }
        }
    }
}

/// `policy::wins` counts, for every candidate at once, what `policy::propensity` counts for
/// one: with the same seed, `propensity(i) = (1 + wins[i]) / (samples + 1)`.
#[test]
fn wins_agree_with_propensity() {
    for policy in ["neural_linear", "mc_dropout"] {
        let model = wheel_model()
            .with_settings(&[format!("policy={policy}")])
            .unwrap();
        let mut trainer = Trainer::new(&model).unwrap();
        let snapshot = trainer.snapshot(0).unwrap();
        let heads: Vec<usize> = (0..5).collect();
        let inputs = Inputs::Heads {
            context: &[0.3, -0.6],
            heads: &heads,
        };
        let seeded = || Xoshiro256PlusPlus::seed_from_u64(5);
        let wins = banditd::policy::wins(&snapshot, inputs, 64, &mut seeded()).unwrap();
        assert_eq!(wins.iter().sum::<usize>(), 64);
        for (i, w) in wins.iter().enumerate() {
            let p = banditd::policy::propensity(&snapshot, inputs, i, 64, &mut seeded()).unwrap();
            assert_eq!(p, (1 + w) as f64 / 65.0, "{policy}: candidate {i}");
        }
    }
}

/// Regret of `online` over `rounds` rounds of the wheel with `seed`.
fn regret(mut online: Online, seed: u64, rounds: usize) -> f64 {
    let mut env = WheelBandit::new(0.5, seed).unwrap();
    let heads: Vec<usize> = (0..5).collect();
    let mut total = 0.0;
    for t in 0..rounds {
        let round = env.next_round();
        let choice = online
            .decide(Inputs::Heads {
                context: &round.context,
                heads: &heads,
            })
            .unwrap();
        total += round.regret_of(choice.best);
        online
            .learn(banditd::domain::Example {
                input: round.context.clone(),
                head: choice.best as u32,
                reward: round.rewards[choice.best],
                seq: 1_000_000 + t as u64,
            })
            .unwrap();
    }
    total
}

/// What the server does at start with a warm-started data directory, without its thread:
/// the checkpoint restored, the examples it covers back into replay, the linear posterior
/// refitted.
fn warm_online(model: &ModelConfig, dir: &Path) -> Online {
    let (ck, _) = checkpoint::load_latest(dir, &model.name, &model.layer_widths()).unwrap();
    let ck = ck.expect("a checkpoint");
    let mut trainer = Trainer::new(model).unwrap();
    trainer.restore(&ck).unwrap();
    for e in storage::examples(dir, &model.name).unwrap() {
        assert!(
            e.seq <= ck.meta.last_seq,
            "the checkpoint covers every warm example"
        );
        trainer.push_replay(e);
    }
    trainer.refresh_linear().unwrap();
    Online::from_trainer(model, trainer).unwrap()
}

/// A model warm-started on 2000 logged decisions of a uniform or a skewed logging policy has
/// far less regret over its first 1000 rounds than the same model started cold, and the
/// server starts from that data directory (its checkpoint's steps, its examples).
#[test]
fn warm_start_lowers_regret_over_the_first_thousand_rounds() {
    let env = WheelBandit::new(0.5, 1).unwrap();
    let model = model_for_env(&env, Some(&wheel_model())).unwrap();
    let cold = regret(Online::new(&model).unwrap(), 99, 1000);
    let skewed = |c: &[f32]| logging_probs(c);
    for (name, weighting, log) in [
        (
            "uniform",
            Weighting::None,
            simulated_log(11, 2000, |_| [0.2; 5]).0,
        ),
        ("skewed", Weighting::None, simulated_log(12, 2000, skewed).0),
        (
            "skewed, IPS-weighted",
            Weighting::Ips { max_repeat: 20 },
            simulated_log(12, 2000, skewed).0,
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let trained = warm::train(
            &model,
            &log,
            dir.path(),
            TrainOptions {
                epochs: 1,
                weighting,
            },
        )
        .unwrap();
        assert_eq!(trained.examples, 2000);
        let warm = regret(warm_online(&model, dir.path()), 99, 1000);
        eprintln!("{name}: regret over 1000 rounds warm {warm:.1}, cold {cold:.1}");
        assert!(warm < 0.5 * cold, "{name}: warm {warm} vs cold {cold}");

        // The server starts from it: the checkpoint's steps and the logged examples.
        let mut config = Config::embedded_default();
        config.storage.data_dir = dir.path().to_owned();
        let (engine, background) = Engine::start(&config).unwrap();
        let status = engine.model_status("wheel").unwrap();
        assert_eq!(status.training_steps, trained.steps);
        assert_eq!(status.rewards, 2000);
        background.shutdown(&engine);
        // A second warm start into the same directory is refused.
        let err = warm::train(&model, &log, dir.path(), TrainOptions::default()).unwrap_err();
        assert!(err.to_string().contains("already holds"), "{err}");
    }
}

/// The binary: `banditd evaluate --json` on the fixture, with a plot, and `banditd train`
/// from an export, whose data directory `evaluate` then reads.
#[test]
fn cli_evaluate_and_train() {
    let bin = env!("CARGO_BIN_EXE_banditd");
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("estimates.svg");
    let out = std::process::Command::new(bin)
        .args([
            "evaluate",
            "--from",
            FIXTURE,
            "--reward-model",
            "arm-mean",
            "--json",
        ])
        .args(["--candidate", "uniform", "--plot"])
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let uniform = &json["policies"][0];
    assert_eq!(uniform["label"], "uniform");
    assert!(close(
        uniform["estimates"]["ips"]["value"].as_f64().unwrap(),
        0.375
    ));
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("uniform"),
        "{}",
        &svg[..100]
    );

    // A log with a missing propensity is refused by the binary with the line and field.
    let source = dir.path().join("source");
    let mut made = hand_made();
    made[1].propensity = None;
    write_log(&source, &made);
    let out = std::process::Command::new(bin)
        .args(["evaluate", "--data-dir"])
        .arg(&source)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("decision d1: propensity: missing (1 of 3"),
        "{stderr}"
    );

    let export = dir.path().join("export.jsonl");
    storage::export(&source, &[], &mut std::fs::File::create(&export).unwrap()).unwrap();
    let warm = dir.path().join("warm");
    let out = std::process::Command::new(bin)
        .args(["train", "--model", "wheel", "--from"])
        .arg(&export)
        .arg("--data-dir")
        .arg(&warm)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ck, _) = checkpoint::load_latest(&warm, "wheel", &wheel_model().layer_widths()).unwrap();
    assert_eq!(ck.unwrap().meta.reward_n, 3);
}
