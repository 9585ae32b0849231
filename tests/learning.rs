//! Learning over real gRPC, seeded: on contextual problems where the best arm depends on the
//! context, the service's cumulative regret is far below uniform random's, for both kinds of
//! model. The environments and the service's RNGs are seeded; what is not ours is the timing
//! of the learner thread (which snapshot serves which round), so the bounds leave wide margins.

mod common;

use banditd::{
    config::{Config, ModelConfig, ModelKind},
    proto::{Arm, ChooseArmRequest, ReportRewardRequest},
    sim::{Environment, PerArmLogistic, WheelBandit},
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

/// Wheel bandit (delta 0.5): a fixed-arm model, the default network, 3000 rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_arms_beat_uniform_on_the_wheel() {
    let server = TestServer::start(test_config()).await;
    let mut env = WheelBandit::new(0.5, 7).unwrap();
    let (regret, uniform) = play(&server, "wheel", &mut env, 3000).await;
    let normalized = 100.0 * regret / uniform;
    eprintln!("wheel(0.5), 3000 rounds: normalized regret {normalized:.1} (uniform = 100)");
    assert!(normalized < 40.0, "normalized regret {normalized:.1}");
    server.stop().await.unwrap();
}

/// Per-arm logistic items: a per-arm-feature model, 3000 rounds of 10 candidates out of 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_arm_features_beat_uniform() {
    let mut config: Config = test_config();
    let mut model = ModelConfig::new("items", ModelKind::PerArmFeatures, 8);
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
