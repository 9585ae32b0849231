//! Learning over real gRPC, seeded: on contextual problems where the best arm depends on the
//! context, the service's cumulative regret is far below uniform random's, for both kinds of
//! model. The environments and the service's RNGs are seeded; what is not ours is the timing
//! of the learner thread (which snapshot serves which round), so the bounds leave wide margins.

mod common;

use banditd::{
    config::{Config, ModelConfig, ModelKind},
    proto::{Arm, ChooseArmRequest, ReportRewardRequest},
    sim::{Classification, Environment, LabelColumn, PerArmLogistic},
};
use common::{TestServer, test_config};

/// Plays `rounds` rounds of `env` against `model`; returns (service regret, uniform regret).
async fn play(
    server: &TestServer,
    model: &str,
    env: &mut dyn Environment,
    rounds: usize,
) -> (f64, f64) {
    let mut client = server.client().await;
    let (mut regret, mut uniform) = (0.0, 0.0);
    for _ in 0..rounds {
        let round = env.next_round();
        let fixed = env.arm_feature_dim() == 0;
        let candidates = if fixed {
            Vec::new()
        } else {
            round
                .candidates
                .iter()
                .map(|c| Arm {
                    id: c.id.clone(),
                    features: c.features.clone(),
                })
                .collect()
        };
        let req = ChooseArmRequest {
            model: model.into(),
            context: round.context.clone(),
            candidates,
            ..Default::default()
        };
        let decision = client.choose_arm(req).await.unwrap().into_inner();
        let index = round
            .candidates
            .iter()
            .position(|c| c.id == decision.arm_id)
            .unwrap();
        let r = round.regret_of(index);
        regret += r;
        uniform += round.uniform_regret();
        let report = ReportRewardRequest {
            model: model.into(),
            decision_id: decision.decision_id,
            reward: round.rewards[index],
            regret: Some(r),
        };
        client.report_reward(report).await.unwrap();
    }
    (regret, uniform)
}

/// Three overlapping clusters in the plane, one arm per cluster, reward 1 for the right one:
/// the best arm depends on the context. A fixed-arm model with the default network, 3000
/// rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_arms_beat_uniform_on_clusters() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(5);
    let centers = [(1.0f64, 0.0f64), (-0.5, 0.87), (-0.5, -0.87)];
    let mut csv = String::from("x,y,label\n");
    for i in 0..900 {
        let (cx, cy) = centers[i % 3];
        // Uniform noise of half-width 0.8: the clusters overlap, so the boundary must be learned.
        let (x, y) = (
            cx + rng.random_range(-0.8..0.8),
            cy + rng.random_range(-0.8..0.8),
        );
        csv.push_str(&format!("{x},{y},{}\n", i % 3));
    }
    let mut env =
        Classification::from_reader(csv.as_bytes(), LabelColumn::Name("label".into()), 7).unwrap();
    let mut config = test_config();
    let mut model = ModelConfig::new("clusters", ModelKind::FixedArms, 2);
    model.arms = env.arm_ids();
    // A test of learning, not of scheduling: a build beside it must not starve the learner
    // (at the default `learner_nice` it passed with two busy loops on the cores; 12.0).
    model.learner.learner_nice = 0;
    config.models = vec![model];
    let server = TestServer::start(config).await;
    let (regret, uniform) = play(&server, "clusters", &mut env, 3000).await;
    let normalized = 100.0 * regret / uniform;
    eprintln!("clusters, 3000 rounds: normalized regret {normalized:.1} (uniform = 100)");
    assert!(normalized < 40.0, "normalized regret {normalized:.1}");
    server.stop().await.unwrap();
}

/// The wheel bandit with δ = 0.95, where the large rewards hide in 10% of the contexts and a
/// safe arm pays a little more than the rest elsewhere: a policy that stops exploring too
/// early settles on the safe arm for good (normalized regret about 120: worse than uniform).
/// The default policy (MC dropout with a Bayesian last layer) finds the large rewards on
/// every seed, in process (deterministic: seeds fix everything), T = 3000. (MC dropout at
/// fixed rates without the linear last layer got stuck on 4 of 13 seeds at T = 5000:
/// BENCHMARKS.md.)
#[test]
fn default_policy_escapes_the_wheel_safe_arm() {
    use banditd::{config::PolicyKind, harness, sim::WheelBandit};
    let base = Config::embedded_default().models[0].clone();
    assert_eq!(base.policy.kind, PolicyKind::McDropout);
    assert!(base.policy.bayesian_last_layer);
    for seed in [1, 2, 3] {
        let mut model = base.clone();
        model.seed = harness::mix_seed(model.seed, seed);
        let mut env = WheelBandit::new(0.95, seed).unwrap();
        let run = harness::run_inproc(&mut env, &model, 3000, |_| {}).unwrap();
        let normalized = run.tally.normalized_regret();
        eprintln!("wheel(0.95), seed {seed}, 3000 rounds: normalized regret {normalized:.1}");
        // Stuck on the safe arm is about 120; having found the large rewards, 31 to 48 here
        // (MC dropout with a Bayesian last layer, rates falling after 100 rewards; 33 to 51
        // with fixed rates; NeuralLinear measured 15 to 45).
        assert!(
            normalized < 80.0,
            "seed {seed}: normalized regret {normalized:.1}"
        );
    }
}

/// Per-arm logistic items: a per-arm-feature model, 3000 rounds of 10 candidates out of 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_arm_features_beat_uniform() {
    let mut config: Config = test_config();
    let mut model = ModelConfig::new("items", ModelKind::PerArmFeatures, 8);
    model.learner.learner_nice = 0; // learning, not scheduling (see above)
    model.arm_feature_dim = 8;
    config.models = vec![model];
    let server = TestServer::start(config).await;
    let mut env = PerArmLogistic::new(8, 8, 100, 10, 11).unwrap();
    let (regret, uniform) = play(&server, "items", &mut env, 3000).await;
    let normalized = 100.0 * regret / uniform;
    eprintln!(
        "per-arm(8,8,100,10), 3000 rounds: normalized regret {normalized:.1} (uniform = 100)"
    );
    assert!(normalized < 60.0, "normalized regret {normalized:.1}");
    server.stop().await.unwrap();
}

/// Issue 12: one extreme reward report must not ruin a model. The default model plays the
/// wheel (δ = 0.5) in process for 4000 rounds, and in round 1000 the learner is told an
/// extreme reward instead of the sampled one (−1e6, then +1e9; a client bug). With the
/// robust standardisation (`reward_std_growth_limit`, default 2) the regret of the 3000 rounds
/// after it stays close to that of the same run without the outlier; with it turned off
/// (`reward_std_growth_limit = 0`) the same outlier wrecks them, which is what the setting is for
/// (and shows the comparison can fail). Deterministic: seeds fix everything.
#[test]
fn one_outlier_reward_barely_changes_later_regret() {
    use banditd::{harness, sim::WheelBandit};
    const ROUNDS: u64 = 4000;
    const OUTLIER_AT: u64 = 1000;
    // Normalized regret of the rounds after the outlier, from the run's regret curve (a
    // point every 20 rounds, so one at round 1000).
    let after = |model: &banditd::config::ModelConfig, outlier: Option<f64>| {
        let mut env = WheelBandit::new(0.5, 1).unwrap();
        let run = harness::run_inproc_reporting(
            &mut env,
            model,
            ROUNDS,
            |t, reward| match outlier {
                Some(value) if t == OUTLIER_AT => value,
                _ => reward,
            },
            |_| {},
        )
        .unwrap();
        let at = |decisions: u64| *run.curve.iter().find(|p| p.decisions == decisions).unwrap();
        let (from, to) = (at(OUTLIER_AT), at(ROUNDS));
        100.0 * (to.regret - from.regret) / (to.uniform_regret - from.uniform_regret)
    };
    let robust = Config::embedded_default().models[0].clone();
    assert_eq!(robust.learner.reward_std_growth_limit, 2.0);
    let clean = after(&robust, None);
    for outlier in [-1e6, 1e9] {
        let hit = after(&robust, Some(outlier));
        eprintln!(
            "wheel(0.5): regret after round {OUTLIER_AT} {clean:.2} clean, {hit:.2} with {outlier:e}"
        );
        // Measured: 1.15 clean, 4.94 after −1e6, 5.16 after +1e9; without the limit the
        // same −1e6 gives 94.4 (below). The bound sits between, nearer the former. (With
        // fixed drop rates, before issue 14's falling rates: 1.43, 5.11, 5.61 and 100.9.)
        assert!(
            hit < clean + 10.0,
            "outlier {outlier:e}: later regret {hit:.2} vs {clean:.2} without it"
        );
    }
    let mut plain = robust.clone();
    plain.learner.reward_std_growth_limit = 0.0;
    let clean_plain = after(&plain, None);
    let hit_plain = after(&plain, Some(-1e6));
    eprintln!("without robust standardisation: {clean_plain:.2} clean, {hit_plain:.2} with -1e6");
    assert!(
        hit_plain > clean_plain + 50.0,
        "without the robust standardisation the outlier should hurt: {hit_plain:.2} vs {clean_plain:.2}"
    );
}
