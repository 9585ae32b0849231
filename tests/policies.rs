//! Every decision policy through a real server: what each returns (scores, propensity,
//! explanation), that each learns from rewards without error, the sample limits, and that
//! the propensity is logged with the decision.

mod common;

use std::collections::HashMap;

use banditd::{
    config::{ModelConfig, ModelKind, PolicyKind},
    proto::{ChooseArmRequest, GetModelRequest},
};
use common::{TestServer, arm, fixed, reward, test_config};
use tonic::Code;

const POLICIES: [PolicyKind; 5] = [
    PolicyKind::McDropout,
    PolicyKind::NeuralLinear,
    PolicyKind::Greedy,
    PolicyKind::EpsilonGreedy,
    PolicyKind::Uniform,
];

/// A small fixed-arm model (2-d context, 4 arms) with the given policy.
fn small(policy: PolicyKind) -> ModelConfig {
    let mut m = ModelConfig::new(policy.as_str(), ModelKind::FixedArms, 2);
    m.arms = ["a", "b", "c", "d"].map(String::from).to_vec();
    m.network.hidden_layers = vec![16, 16];
    m.policy.kind = policy;
    m.policy.epsilon = 0.2;
    m.policy.neural_linear.refresh_every = 20;
    m
}

/// Each policy answers, reports itself in GetModel, returns a propensity exactly when it
/// should (always for the baselines, on request for the Thompson policies), explains every
/// candidate when asked, and learns: after 150 rewards the paying arm's posterior mean leads
/// every other arm's (greedy excepted, which may never try it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_decides_explains_and_learns() {
    let mut config = test_config();
    config.models = POLICIES.iter().map(|&p| small(p)).collect();
    let mut per_arm = ModelConfig::new("per_arm_nl", ModelKind::PerArmFeatures, 2);
    per_arm.arm_feature_dim = 3;
    per_arm.network.hidden_layers = vec![16];
    per_arm.policy.kind = PolicyKind::NeuralLinear;
    per_arm.policy.neural_linear.refresh_every = 10;
    config.models.push(per_arm);
    let server = TestServer::start(config).await;
    let mut client = server.client().await;

    for policy in POLICIES {
        let name = policy.as_str();
        let info = client
            .get_model(GetModelRequest { model: name.into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.policy, name);
        let thompson = matches!(policy, PolicyKind::McDropout | PolicyKind::NeuralLinear);

        // Plain decisions, each rewarded: arm "c" pays 1, the others 0.
        for i in 0..150 {
            let x = (i % 10) as f32 / 10.0;
            let d = client
                .choose_arm(fixed(name, vec![x, 1.0 - x]))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(d.scores.len(), 4);
            assert!(
                d.scores.iter().all(|s| s.score.is_finite()),
                "{name}: {d:?}"
            );
            assert!(d.scores.iter().all(|s| s.posterior_mean.is_none()));
            match d.propensity {
                Some(p) => assert!(!thompson && p > 0.0 && p <= 1.0, "{name}: {p}"),
                None => assert!(thompson, "{name}: no propensity"),
            }
            let r = if d.arm_id == "c" { 1.0 } else { 0.0 };
            client
                .report_reward(reward(name, &d.decision_id, r))
                .await
                .unwrap();
        }

        // Learns: arm "c" (the only one that pays) leads every other arm's posterior mean by
        // a margin (rewards are 0 or 1, so an untrained model's noise cannot pass for it) once
        // the learner has read the rewards (it trains asynchronously: polled, at most 30 s).
        // Greedy is exempt: it never explores, so it may never have tried "c".
        if policy != PolicyKind::Greedy {
            let mut lead = f64::NEG_INFINITY;
            for _ in 0..300 {
                let d = client
                    .choose_arm(ChooseArmRequest {
                        explain_samples: 100,
                        ..fixed(name, vec![0.3, 0.7])
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let mean = |id: &str| {
                    d.scores
                        .iter()
                        .find(|s| s.arm_id == id)
                        .and_then(|s| s.posterior_mean)
                        .unwrap()
                };
                let others = ["a", "b", "d"].map(mean);
                lead = mean("c") - others.into_iter().fold(f64::MIN, f64::max);
                if lead > 0.25 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            assert!(
                lead > 0.25,
                "{name}: the rewarded arm does not lead after 150 rewards (by {lead})"
            );
        }

        // Asked for both: the propensity is a probability and every candidate is explained.
        let d = client
            .choose_arm(ChooseArmRequest {
                propensity_samples: 200,
                explain_samples: 100,
                ..fixed(name, vec![0.3, 0.7])
            })
            .await
            .unwrap()
            .into_inner();
        let p = d.propensity.expect("propensity");
        assert!(p > 0.0 && p <= 1.0, "{name}: {p}");
        if thompson {
            // (1 + wins) / 201: a multiple of 1/201.
            let k = p * 201.0;
            assert!((k - k.round()).abs() < 1e-6, "{name}: {p}");
        }
        if policy == PolicyKind::Uniform {
            assert_eq!(p, 0.25);
        }
        for s in &d.scores {
            let (mean, std) = (s.posterior_mean.unwrap(), s.posterior_std.unwrap());
            assert!(
                mean.is_finite() && std.is_finite() && std >= 0.0,
                "{name}: {s:?}"
            );
        }
    }

    // The per-arm NeuralLinear model: one weight draw shared by every candidate row.
    for i in 0..60 {
        let d = client
            .choose_arm(ChooseArmRequest {
                model: "per_arm_nl".into(),
                context: vec![0.5, -0.5],
                candidates: (0..5)
                    .map(|k| arm(&format!("item{k}"), vec![k as f32, 1.0, -(k as f32)]))
                    .collect(),
                propensity_samples: if i % 2 == 0 { 50 } else { 0 },
                explain_samples: if i % 3 == 0 { 20 } else { 0 },
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(d.scores.len(), 5);
        assert_eq!(d.propensity.is_some(), i % 2 == 0);
        assert_eq!(d.scores[0].posterior_std.is_some(), i % 3 == 0);
        let r = if d.arm_id == "item3" { 1.0 } else { 0.0 };
        client
            .report_reward(reward("per_arm_nl", &d.decision_id, r))
            .await
            .unwrap();
    }
    server.stop().await.unwrap();
}

/// Sample counts above `limits.max_posterior_samples` are INVALID_ARGUMENT naming the field;
/// the limit is configurable; a model's default propensity samples apply when the request
/// asks for none.
#[tokio::test]
async fn sample_limits_and_model_default() {
    let mut config = test_config();
    config.limits.max_posterior_samples = 64;
    let mut model = small(PolicyKind::McDropout);
    model.name = "defaulted".into();
    model.policy.propensity_samples = 32;
    config.models.push(model);
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    for (field, request) in [
        (
            "propensity_samples",
            ChooseArmRequest {
                propensity_samples: 65,
                ..fixed("wheel", vec![0.1, 0.2])
            },
        ),
        (
            "explain_samples",
            ChooseArmRequest {
                explain_samples: u32::MAX,
                ..fixed("wheel", vec![0.1, 0.2])
            },
        ),
    ] {
        let err = client.choose_arm(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(field), "{}", err.message());
        assert!(err.message().contains("64"), "{}", err.message());
    }
    let ok = client
        .choose_arm(ChooseArmRequest {
            propensity_samples: 64,
            explain_samples: 64,
            ..fixed("wheel", vec![0.1, 0.2])
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ok.propensity.is_some());
    let defaulted = client
        .choose_arm(fixed("defaulted", vec![0.1, 0.2]))
        .await
        .unwrap()
        .into_inner();
    let p = defaulted.propensity.expect("the model's default applies");
    let k = p * 33.0;
    assert!(
        (k - k.round()).abs() < 1e-6,
        "{p} is not a multiple of 1/33"
    );
    server.stop().await.unwrap();
}

/// The propensity goes into the decision log (and so into `banditd export`), and a retry of
/// the decision returns it again.
#[tokio::test]
async fn propensity_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.storage.data_dir = dir.path().to_owned();
    config.models.push(small(PolicyKind::EpsilonGreedy));
    let server = TestServer::start(config.clone()).await;
    let mut client = server.client().await;
    let mut sent = HashMap::new();
    for (i, (model, samples)) in [("wheel", 100), ("wheel", 0), ("epsilon_greedy", 0)]
        .into_iter()
        .enumerate()
    {
        let request = ChooseArmRequest {
            decision_id: format!("d{i}"),
            propensity_samples: samples,
            ..fixed(model, vec![0.4, -0.2])
        };
        let d = client
            .choose_arm(request.clone())
            .await
            .unwrap()
            .into_inner();
        let again = client.choose_arm(request).await.unwrap().into_inner();
        assert_eq!(again.propensity, d.propensity);
        sent.insert(d.decision_id.clone(), d.propensity);
    }
    assert!(sent["d0"].is_some() && sent["d1"].is_none() && sent["d2"].is_some());
    server.stop().await.unwrap();

    let rows = banditd::storage::rows(
        &config.storage.data_dir,
        &["wheel".into(), "epsilon_greedy".into()],
    )
    .unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        assert_eq!(
            row.propensity, sent[&row.decision_id],
            "{}",
            row.decision_id
        );
    }
}
